//! Language-model data: one long stream of token ids, split into training and validation
//! parts, from which random contiguous windows are drawn. The ids are in memory
//! (tokenized from text at the start of a run) or in memory-mapped shards
//! ([`super::shards`]); windows are drawn the same way from either.

use super::shards::Mapped;
use crate::rng::Rng;
use crate::{Error, Result};

/// A stream of token ids.
#[derive(Debug)]
pub enum Tokens {
    Memory(Vec<u32>),
    Mapped(Mapped),
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens::Memory(Vec::new())
    }
}

impl Tokens {
    pub fn len(&self) -> usize {
        match self {
            Tokens::Memory(v) => v.len(),
            Tokens::Mapped(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copy the `out.len()` ids from `start` into `out`.
    pub fn read(&self, start: usize, out: &mut [u32]) -> Result<()> {
        match self {
            Tokens::Memory(v) => {
                let src = v.get(start..start + out.len()).ok_or_else(|| {
                    Error::invalid(
                        "tokens",
                        format!("ids {start}..+{} of {}", out.len(), v.len()),
                    )
                })?;
                out.copy_from_slice(src);
                Ok(())
            }
            Tokens::Mapped(m) => m.read(start, out),
        }
    }

    /// Every id, copied out.
    pub fn to_vec(&self) -> Result<Vec<u32>> {
        let mut v = vec![0; self.len()];
        self.read(0, &mut v)?;
        Ok(v)
    }
}

/// How many of `n` tokens are for training when the last `val_fraction` of them is
/// held out (the one rule the text path and the shard writer share).
pub fn train_len(n: usize, val_fraction: f64) -> Result<usize> {
    if !(0.0..1.0).contains(&val_fraction) {
        return Err(Error::invalid(
            "val-fraction",
            format!("{val_fraction} is not in [0, 1)"),
        ));
    }
    Ok((((n as f64) * (1.0 - val_fraction)).round() as usize).min(n))
}

/// Token ids split deterministically: the first part for training, the rest for validation,
/// as nanoGPT does.
#[derive(Debug, Default)]
pub struct LmSplits {
    pub train: Tokens,
    pub val: Tokens,
}

impl LmSplits {
    /// Split `ids` so that the last `val_fraction` of them is the validation set.
    pub fn new(ids: Vec<u32>, val_fraction: f64) -> Result<Self> {
        let n_train = train_len(ids.len(), val_fraction)?;
        let mut train = ids;
        let val = train.split_off(n_train);
        Ok(LmSplits {
            train: Tokens::Memory(train),
            val: Tokens::Memory(val),
        })
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

/// Draw the starts of `batch` random windows of `block + 1` tokens from a stream of
/// `len` tokens.
pub fn random_windows(len: usize, batch: usize, block: usize, rng: &mut Rng) -> Vec<usize> {
    let max_start = len - block - 1;
    (0..batch).map(|_| rng.below(max_start + 1)).collect()
}

/// The input and target ids (`[len(starts) · block]` each) of windows starting at
/// `starts`: the targets are the inputs shifted by one.
pub fn windows(ids: &Tokens, starts: &[usize], block: usize) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut x = Vec::with_capacity(starts.len() * block);
    let mut y = Vec::with_capacity(starts.len() * block);
    let mut w = vec![0u32; block + 1];
    for &s in starts {
        ids.read(s, &mut w)?;
        x.extend_from_slice(&w[..block]);
        y.extend_from_slice(&w[1..]);
    }
    Ok((x, y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_first_part_then_last_part() {
        let s = LmSplits::new((0..100).collect(), 0.1).unwrap();
        assert_eq!(s.train.to_vec().unwrap(), (0..90).collect::<Vec<_>>());
        assert_eq!(s.val.to_vec().unwrap(), (90..100).collect::<Vec<_>>());
        assert!(LmSplits::new(vec![1, 2], 1.5).is_err());
        assert!(s.check_block(9).is_ok());
        assert!(s.check_block(10).is_err());
    }

    #[test]
    fn windows_are_contiguous_and_shifted() {
        let ids = Tokens::Memory((0..50).collect());
        let mut rng = Rng::new(1);
        let starts = random_windows(ids.len(), 4, 8, &mut rng);
        let (x, y) = windows(&ids, &starts, 8).unwrap();
        assert_eq!((x.len(), y.len()), (32, 32));
        for (xr, yr) in x.chunks(8).zip(y.chunks(8)) {
            for t in 0..8 {
                assert_eq!(yr[t], xr[t] + 1);
            }
            assert!(*yr.last().unwrap() < 50);
        }
    }
}
