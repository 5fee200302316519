//! AdamW (Loshchilov & Hutter) with decoupled weight decay applied only to matrices
//! (parameters of rank ≥ 2: linear weights and embeddings), as GPT-2/nanoGPT train.
//! Its moments can be saved and restored for resuming.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Tensor, Var};

use crate::nn::Params;
use crate::{Error, Result};

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

pub struct AdamW {
    pub config: AdamWConfig,
    /// Number of updates applied so far.
    pub t: usize,
    state: BTreeMap<String, (Var, Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(params: &Params, config: AdamWConfig) -> Result<Self> {
        let mut state = BTreeMap::new();
        for (name, var) in params.iter() {
            // Two buffers: the fused step updates them in place.
            let t = var.as_tensor();
            state.insert(
                name.clone(),
                (var.clone(), t.zeros_like()?, t.zeros_like()?),
            );
        }
        Ok(AdamW {
            config,
            t: 0,
            state,
        })
    }

    fn decays(var: &Var) -> bool {
        var.rank() >= 2
    }

    /// One update with learning rate `lr` from gradients by parameter name. A parameter
    /// without a gradient is left unchanged (its moments too).
    pub fn step(&mut self, grads: &HashMap<String, Tensor>, lr: f64) -> Result<()> {
        self.t += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (name, (var, m, v)) in self.state.iter_mut() {
            let Some(g) = grads.get(name) else { continue };
            // Never let a gradient's op graph into the moments, which live across steps.
            let g = &g.detach();
            let p = var.as_tensor();
            if crate::nn::fused::usable(p)
                && p.is_contiguous()
                && m.is_contiguous()
                && v.is_contiguous()
            {
                let decay = if Self::decays(var) {
                    c.weight_decay
                } else {
                    0.0
                };
                crate::nn::fused::adamw_step(
                    p,
                    m,
                    v,
                    g,
                    lr,
                    decay,
                    (c.beta1, c.beta2),
                    (bc1, bc2),
                    c.eps,
                )?;
                continue;
            }
            *m = ((&*m * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let mut p = var.as_tensor().detach();
            if c.weight_decay > 0.0 && Self::decays(var) {
                p = (p * (1.0 - lr * c.weight_decay))?;
            }
            let update = ((&*m / bc1)? / ((&*v / bc2)?.sqrt()? + c.eps)?)?;
            var.set(&(p - (update * lr)?)?)?;
        }
        Ok(())
    }

    /// The moments, as `exp_avg.<name>` and `exp_avg_sq.<name>` tensors.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (name, (_, m, v)) in &self.state {
            out.insert(format!("exp_avg.{name}"), m.clone());
            out.insert(format!("exp_avg_sq.{name}"), v.clone());
        }
        out
    }

    /// Restore moments saved by [`AdamW::state_tensors`] and the update count.
    pub fn load_state(&mut self, mut tensors: HashMap<String, Tensor>, t: usize) -> Result<()> {
        for (name, (var, m, v)) in self.state.iter_mut() {
            for (key, slot) in [
                (format!("exp_avg.{name}"), &mut *m),
                (format!("exp_avg_sq.{name}"), &mut *v),
            ] {
                let saved = tensors
                    .remove(&key)
                    .ok_or_else(|| Error::Model(format!("optimizer state lacks {key}")))?;
                if saved.dims() != var.dims() {
                    return Err(Error::Model(format!(
                        "optimizer state {key} has shape {:?}, the parameter {:?}",
                        saved.dims(),
                        var.dims()
                    )));
                }
                *slot = saved;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// The gradients of `params` in a backward pass, by name, detached: a gradient computed
/// from a parameter carries the op graph back through the whole forward pass, and kept
/// in the AdamW moments it would chain every step's graph to the next (memory grows
/// without end).
pub fn gradients(
    params: &Params,
    store: &candle_core::backprop::GradStore,
) -> HashMap<String, Tensor> {
    params
        .iter()
        .filter_map(|(name, var)| {
            store
                .get(var.as_tensor())
                .map(|g| (name.clone(), g.detach()))
        })
        .collect()
}

/// The global L2 norm of all gradients.
pub fn global_norm(grads: &HashMap<String, Tensor>) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.values() {
        sum += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok(sum.sqrt())
}

/// Scale gradients down so that their global norm is at most `max_norm`; returns the
/// norm before clipping.
pub fn clip_global_norm(grads: &mut HashMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.values_mut() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Init, ParamBuilder};
    use crate::rng::Rng;
    use candle_core::Device;

    /// One AdamW step computed by hand for a scalar-like matrix and a vector.
    #[test]
    fn matches_hand_computed_update_and_decays_matrices_only() {
        let dev = Device::Cpu;
        let mut pb = ParamBuilder::init(Rng::new(0), &dev);
        pb.get("w", &[1, 2], Init::Ones).unwrap();
        pb.get("b", &[2], Init::Ones).unwrap();
        let params = pb.finish().unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let mut grads = HashMap::new();
        grads.insert(
            "w".to_string(),
            Tensor::new(&[[0.5f32, -2.0]], &dev).unwrap(),
        );
        grads.insert("b".to_string(), Tensor::new(&[0.5f32, -2.0], &dev).unwrap());
        let lr = 0.01;
        for step in 1..=2 {
            opt.step(&grads, lr).unwrap();
            let _ = step;
        }
        // Reference: same recurrence in f64.
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
        let w = params
            .get("w")
            .unwrap()
            .as_tensor()
            .to_vec2::<f32>()
            .unwrap();
        let b = params
            .get("b")
            .unwrap()
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        for (i, g) in [0.5, -2.0].into_iter().enumerate() {
            assert!((w[0][i] as f64 - reference(g, true)).abs() < 1e-6);
            assert!((b[i] as f64 - reference(g, false)).abs() < 1e-6);
        }
    }

    /// Moments must not keep a gradient's op graph alive: that chained every step's
    /// forward graph to the next and exhausted memory within a few hundred steps.
    #[test]
    fn moments_hold_no_graph() {
        let dev = Device::Cpu;
        let mut pb = ParamBuilder::init(Rng::new(0), &dev);
        let w = pb.get("w", &[2, 2], Init::Ones).unwrap();
        let params = pb.finish().unwrap();
        let mut opt = AdamW::new(
            &params,
            AdamWConfig {
                beta1: 0.9,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )
        .unwrap();
        // A "gradient" that is itself the result of ops on a parameter.
        let g = (w.sqr().unwrap() * 2.0).unwrap();
        assert!(g.track_op());
        let mut grads = HashMap::new();
        grads.insert("w".to_string(), g);
        opt.step(&grads, 0.1).unwrap();
        for (name, t) in opt.state_tensors() {
            assert!(!t.track_op(), "{name} keeps an op graph");
        }
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Device::Cpu;
        let mut grads = HashMap::new();
        grads.insert("a".to_string(), Tensor::new(&[3f32, 0.0], &dev).unwrap());
        grads.insert("b".to_string(), Tensor::new(&[4f32], &dev).unwrap());
        let norm = clip_global_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((global_norm(&grads).unwrap() - 1.0).abs() < 1e-5);
    }
}
