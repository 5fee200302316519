//! AdamW (Loshchilov & Hutter) with decoupled weight decay applied only to matrices
//! (parameters of rank ≥ 2: linear weights and embeddings), as GPT-2/nanoGPT train.
//! The update itself is the kernel `kernels::cpu::adamw`, over a model's flat buffers;
//! which parameters decay is the model's choice (`train::flat`).

#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The constants of update number `t` (from 1) for the AdamW kernel.
    pub fn kernel_step(
        &self,
        t: usize,
        lr: f64,
        grad_scale: f64,
    ) -> crate::kernels::cpu::AdamWStep {
        crate::kernels::cpu::AdamWStep {
            lr: lr as f32,
            decay: self.weight_decay as f32,
            beta1: self.beta1 as f32,
            beta2: self.beta2 as f32,
            bc1: (1.0 - self.beta1.powi(t as i32)) as f32,
            bc2: (1.0 - self.beta2.powi(t as i32)) as f32,
            eps: self.eps as f32,
            grad_scale: grad_scale as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two updates through `kernel_step` against the recurrence written out in f64:
    /// the bias corrections of step t, the decoupled decay of matrices, none for vectors.
    #[test]
    fn kernel_step_gives_the_adamw_recurrence() {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let lr = 0.01;
        let mut g = [0.5f32, -2.0, 0.5, -2.0];
        let (mut p, mut m, mut v) = (vec![1f32; 4], vec![0f32; 4], vec![0f32; 4]);
        for t in 1..=2 {
            let s = cfg.kernel_step(t, lr, 1.0);
            crate::kernels::cpu::adamw(
                &mut p,
                &mut g,
                &mut m,
                &mut v,
                &[(0, 2, true), (2, 4, false)],
                s,
                false,
            );
        }
        let reference = |g: f64, decay: bool| {
            let (mut p, mut m, mut v) = (1.0f64, 0.0, 0.0);
            for t in 1..=2 {
                if decay {
                    p *= 1.0 - lr * 0.1;
                }
                m = 0.9 * m + 0.1 * g;
                v = 0.99 * v + 0.01 * g * g;
                let mh = m / (1.0 - 0.9f64.powi(t));
                let vh = v / (1.0 - 0.99f64.powi(t));
                p -= lr * mh / (vh.sqrt() + 1e-8);
            }
            p
        };
        for i in 0..4 {
            let want = reference(g[i] as f64, i < 2);
            assert!((p[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", p[i]);
        }
    }
}
