//! Applications built on the models: the glue between data, model and metrics.

pub mod classify;
pub mod translate;

use crate::rng::Rng;

/// Batches of example indices: shuffled, grouped by similar length (sorted within
/// windows of 50 batches), then the batch order shuffled.
pub(crate) fn length_batches(lengths: &[usize], batch: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..lengths.len()).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i + 1));
    }
    let mut batches = vec![];
    for window in idx.chunks(batch * 50) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| lengths[i]);
        batches.extend(w.chunks(batch).map(|c| c.to_vec()));
    }
    for i in (1..batches.len()).rev() {
        batches.swap(i, rng.below(i + 1));
    }
    batches
}
