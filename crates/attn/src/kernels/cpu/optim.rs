//! AdamW (decoupled weight decay) over flat parameter buffers in one parallel pass, and
//! the sum of squares for gradient-norm clipping.

use rayon::prelude::*;

use super::panel::SyncPtr;
use super::vmath::dispatch;

// ---------------------------------------------------------------- optimiser

#[inline(always)]
fn squares_body(c: &[f32]) -> f64 {
    let mut s = [0f32; 16];
    let mut chunks = c.chunks_exact(16);
    for ch in &mut chunks {
        let ch: &[f32; 16] = ch.try_into().unwrap();
        for j in 0..16 {
            s[j] = ch[j].mul_add(ch[j], s[j]);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| (v * v) as f64).sum();
    s.iter().map(|&v| v as f64).sum::<f64>() + tail
}
dispatch!(
    /// Σ x² (f64) of one chunk, on the calling thread: sixteen f32 partial sums (a
    /// `s[i % 16]` index had kept the loop scalar), added in f64.
    chunk_squares = squares_body, squares512, squares256, (c: &[f32]) -> f64
);

/// Σ x² (f64), on both cores.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 15)
        .map(chunk_squares)
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in chunk order: the same total on every run
}

/// The AdamW constants of one update.
#[derive(Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// Multiplies the gradient (clipping).
    pub grad_scale: f32,
}

#[inline(always)]
fn adamw_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let keep = 1.0 - s.lr * s.decay;
    // The bias corrections folded into two constants, as PyTorch does: the step
    // `lr/bc1` and `1/√bc2` (√(v/bc2) = √v/√bc2). One square root and one division an
    // element, not three divisions: the dividers were the loop's bottleneck.
    let (step, rs) = (s.lr / s.bc1, 1.0 / s.bc2.sqrt());
    // Cut to one length first, or each element keeps its bounds checks (scalar loop).
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i] * s.grad_scale;
        m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
        v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
        p[i] = p[i] * keep - step * m[i] / v[i].sqrt().mul_add(rs, s.eps);
    }
}
dispatch!(
    adamw_chunk = adamw_body, adamw512, adamw256,
    (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) -> ()
);

/// One AdamW update of `p` in place, with moments `m`, `v`, on both cores, in one
/// parallel pass over `segments` (`start..end` ranges, each with or without weight
/// decay; `s.decay` applies to those with). With `clear`, each chunk of the gradients
/// `g` is set to zero once read, while it is in cache (for the next step's sums: a
/// separate pass of zeroes had read the whole buffer from memory again).
pub fn adamw(
    p: &mut [f32],
    g: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    segments: &[(usize, usize, bool)],
    s: AdamWStep,
    clear: bool,
) {
    const CH: usize = 1 << 14;
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let mut tasks = Vec::new();
    for &(a, b, decays) in segments {
        assert!(a <= b && b <= n);
        tasks.extend((a..b).step_by(CH).map(|c| (c, (c + CH).min(b), decays)));
    }
    let (pp, gp, mp, vp) = (
        SyncPtr(p.as_mut_ptr()),
        SyncPtr(g.as_mut_ptr()),
        SyncPtr(m.as_mut_ptr()),
        SyncPtr(v.as_mut_ptr()),
    );
    tasks.par_iter().for_each(|&(a, b, decays)| {
        // SAFETY: a..b lies inside every buffer (asserted) and the tasks' ranges do
        // not overlap (the segments are disjoint parameters).
        let (p, g, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(pp.get().add(a), b - a),
                std::slice::from_raw_parts_mut(gp.get().add(a), b - a),
                std::slice::from_raw_parts_mut(mp.get().add(a), b - a),
                std::slice::from_raw_parts_mut(vp.get().add(a), b - a),
            )
        };
        let step = AdamWStep {
            decay: if decays { s.decay } else { 0.0 },
            ..s
        };
        adamw_chunk(p, g, m, v, step);
        if clear {
            g.fill(0.0);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    #[test]
    fn adamw_matches_the_recurrence() {
        let n = 1000;
        let mut p = data(n, 3);
        let g = data(n, 4);
        let mut gc = g.clone();
        let (mut m, mut v) = (vec![0.1f32; n], vec![0.2f32; n]);
        let p0 = p.clone();
        let s = AdamWStep {
            lr: 0.01,
            decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            bc1: 0.5,
            bc2: 0.25,
            eps: 1e-8,
            grad_scale: 0.5,
        };
        // The last 100 gradients belong to no segment: they are neither used nor cleared.
        adamw(
            &mut p,
            &mut gc,
            &mut m,
            &mut v,
            &[(0, 400, true), (400, 900, false)],
            s,
            true,
        );
        assert!(gc[..900].iter().all(|&x| x == 0.0) && gc[900..] == g[900..]);
        for i in 0..900 {
            let gi = g[i] as f64 * 0.5;
            let mi = 0.9 * 0.1 + 0.1 * gi;
            let vi = 0.99 * 0.2 + 0.01 * gi * gi;
            let keep = if i < 400 { 1.0 - 0.001 } else { 1.0 };
            let want = p0[i] as f64 * keep - 0.01 * (mi / 0.5) / ((vi / 0.25).sqrt() + 1e-8);
            assert!((p[i] as f64 - want).abs() < 1e-6, "{} vs {want}", p[i]);
            assert!((m[i] as f64 - mi).abs() < 1e-6 && (v[i] as f64 - vi).abs() < 1e-6);
        }
    }
}
