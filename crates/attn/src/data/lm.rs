//! Language-model data: one long stream of token ids, split into training and validation
//! parts, from which random contiguous windows are drawn.

use crate::rng::Rng;
use crate::{Error, Result};

/// Token ids split deterministically: the first part for training, the rest for validation,
/// as nanoGPT does.
#[derive(Debug, Clone, Default)]
pub struct LmSplits {
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl LmSplits {
    /// Split `ids` so that the last `val_fraction` of them is the validation set.
    pub fn new(ids: Vec<u32>, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return Err(Error::invalid(
                "val-fraction",
                format!("{val_fraction} is not in [0, 1)"),
            ));
        }
        let n_train = ((ids.len() as f64) * (1.0 - val_fraction)).round() as usize;
        let mut train = ids;
        let val = train.split_off(n_train.min(train.len()));
        Ok(LmSplits { train, val })
    }

    /// Check that each non-empty split is long enough for windows of `block` tokens.
    pub fn check_block(&self, block: usize) -> Result<()> {
        for (name, ids) in [("training", &self.train), ("validation", &self.val)] {
            if (name == "training" || !ids.is_empty()) && ids.len() <= block {
                return Err(Error::invalid(
                    "data",
                    format!(
                        "the {name} split has {} tokens, fewer than one window of {} + 1; \
                         give more text or a smaller --block-size",
                        ids.len(),
                        block
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Draw `batch` random windows of `block + 1` tokens from `ids`.
pub fn random_windows(ids: &[u32], batch: usize, block: usize, rng: &mut Rng) -> Vec<usize> {
    let max_start = ids.len() - block - 1;
    (0..batch).map(|_| rng.below(max_start + 1)).collect()
}

/// The input and target ids (`[len(starts) · block]` each) of windows starting at
/// `starts`: the targets are the inputs shifted by one.
pub fn windows(ids: &[u32], starts: &[usize], block: usize) -> (Vec<u32>, Vec<u32>) {
    let mut x = Vec::with_capacity(starts.len() * block);
    let mut y = Vec::with_capacity(starts.len() * block);
    for &s in starts {
        x.extend_from_slice(&ids[s..s + block]);
        y.extend_from_slice(&ids[s + 1..s + block + 1]);
    }
    (x, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_first_part_then_last_part() {
        let s = LmSplits::new((0..100).collect(), 0.1).unwrap();
        assert_eq!(s.train, (0..90).collect::<Vec<_>>());
        assert_eq!(s.val, (90..100).collect::<Vec<_>>());
        assert!(LmSplits::new(vec![1, 2], 1.5).is_err());
        assert!(s.check_block(9).is_ok());
        assert!(s.check_block(10).is_err());
    }

    #[test]
    fn windows_are_contiguous_and_shifted() {
        let ids: Vec<u32> = (0..50).collect();
        let mut rng = Rng::new(1);
        let starts = random_windows(&ids, 4, 8, &mut rng);
        let (x, y) = windows(&ids, &starts, 8);
        assert_eq!((x.len(), y.len()), (32, 32));
        for (xr, yr) in x.chunks(8).zip(y.chunks(8)) {
            for t in 0..8 {
                assert_eq!(yr[t], xr[t] + 1);
            }
            assert!(*yr.last().unwrap() < 50);
        }
    }
}
