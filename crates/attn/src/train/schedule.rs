//! Learning-rate schedule: linear warm-up, then cosine decay to a floor (nanoGPT's).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineSchedule {
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub decay_iters: usize,
}

impl CosineSchedule {
    /// The learning rate for (0-based) iteration `it`.
    pub fn at(&self, it: usize) -> f64 {
        if it < self.warmup_iters {
            return self.lr * (it + 1) as f64 / (self.warmup_iters + 1) as f64;
        }
        if it > self.decay_iters {
            return self.min_lr;
        }
        let span = (self.decay_iters - self.warmup_iters).max(1) as f64;
        let ratio = (it - self.warmup_iters) as f64 / span;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
        self.min_lr + coeff * (self.lr - self.min_lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_floor() {
        let s = CosineSchedule {
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            decay_iters: 2000,
        };
        assert!((s.at(0) - 1e-3 / 101.0).abs() < 1e-15);
        assert!((s.at(99) - 1e-3 * 100.0 / 101.0).abs() < 1e-15);
        assert!((s.at(100) - 1e-3).abs() < 1e-15);
        assert!((s.at(1050) - 5.5e-4).abs() < 1e-12); // half way: the mean of lr and floor
        assert!((s.at(2000) - 1e-4).abs() < 1e-15);
        assert_eq!(s.at(5000), 1e-4);
        for it in 100..2000 {
            assert!(s.at(it + 1) <= s.at(it));
        }
    }
}
