//! Softmax cross-entropy over rows of logits, with the gradient written in place.

use rayon::prelude::*;

use super::rows_per_task;
use super::vmath;

// ---------------------------------------------------------------- cross-entropy

/// Softmax cross-entropy of each row of `logits [m, v]` against `targets`: returns the
/// summed loss (f64) and, with `grad_scale`, replaces the logits by
/// `grad_scale · (softmax − onehot)`.
pub fn cross_entropy(
    logits: &mut [f32],
    v: usize,
    targets: &[u32],
    grad_scale: Option<f32>,
) -> f64 {
    smoothed_cross_entropy(logits, v, targets, 0.0, grad_scale)
}

/// [`cross_entropy`] with label smoothing `eps`: the target distribution puts `1 − eps`
/// on the target and spreads `eps` evenly over the vocabulary, so each row's loss is
/// `(1 − eps)·(lse − x_y) + eps·(lse − mean(x))` and its gradient
/// `grad_scale · (softmax − (1 − eps)·onehot − eps/v)`.
pub fn smoothed_cross_entropy(
    logits: &mut [f32],
    v: usize,
    targets: &[u32],
    eps: f32,
    grad_scale: Option<f32>,
) -> f64 {
    let m = targets.len();
    let per = rows_per_task(m, v).max(8);
    logits[..m * v]
        .par_chunks_mut(per * v)
        .enumerate()
        .map(|(c, chunk)| {
            let mut loss = 0f64;
            for (i, row) in chunk.chunks_mut(v).enumerate() {
                let y = targets[c * per + i] as usize;
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let logit_y = row[y];
                let mean = if eps > 0.0 {
                    (row.iter().map(|&x| x as f64).sum::<f64>() / v as f64) as f32
                } else {
                    0.0
                };
                let sum = vmath::exp_shifted(row, max);
                let lse = sum.ln() + max;
                loss += if eps > 0.0 {
                    (1.0 - eps) * (lse - logit_y) + eps * (lse - mean)
                } else {
                    lse - logit_y
                } as f64;
                if let Some(s) = grad_scale {
                    let inv = s / sum;
                    let spread = s * eps / v as f32;
                    row.iter_mut().for_each(|x| *x = *x * inv - spread);
                    row[y] -= s * (1.0 - eps);
                }
            }
            loss
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in chunk order: the same total on every run
}
