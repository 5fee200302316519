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
                let sum = vmath::exp_shifted(row, max);
                loss += (sum.ln() + max - logit_y) as f64;
                if let Some(s) = grad_scale {
                    let inv = s / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                    row[y] -= s;
                }
            }
            loss
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in chunk order: the same total on every run
}
