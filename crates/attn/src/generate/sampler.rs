//! Choosing the next token from logits.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use crate::{Error, Result};

/// Temperatures below this are greedy: dividing logits by a smaller one overflows f32
/// (1e-39 gave infinities and garbage), and the distribution is one-hot long before.
pub const MIN_TEMPERATURE: f64 = 1e-4;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SamplingConfig {
    /// 0 means greedy (always the most likely token); so does anything below
    /// [`MIN_TEMPERATURE`].
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    /// HF's CTRL-style penalty: logits of tokens already present are divided by it when
    /// positive and multiplied by it when negative. 1 disables it.
    pub repetition_penalty: f64,
    pub seed: u64,
    /// Keep generating past the end-of-text token (for benchmarks).
    #[serde(default)]
    pub ignore_eos: bool,
    /// Only ids below this are ever chosen: a model's vocabulary can be larger than
    /// its tokenizer's (padded embeddings), and those extra ids decode to nothing.
    #[serde(default)]
    pub vocab_limit: Option<usize>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            ignore_eos: false,
            vocab_limit: None,
        }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::invalid(
                "temperature",
                format!("{} must be ≥ 0", self.temperature),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::invalid("top-k", "must be at least 1"));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::invalid("top-p", format!("{p} is not in (0, 1]")));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::invalid(
                "repetition-penalty",
                format!("{} must be a positive number", self.repetition_penalty),
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    config: SamplingConfig,
    rng: Rng,
    vocab: usize,
    seen: Vec<bool>,
}

impl Sampler {
    pub fn new(config: SamplingConfig, vocab: usize) -> Self {
        let rng = Rng::new(config.seed);
        Sampler {
            config,
            rng,
            vocab,
            seen: vec![false; vocab],
        }
    }

    /// Pick the next id. `logits` is modified (penalties, temperature).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = &self.config;
        let logits = match c.vocab_limit {
            Some(n) if n > 0 && n < logits.len() => &mut logits[..n],
            _ => logits,
        };
        if c.repetition_penalty != 1.0 {
            self.seen.iter_mut().for_each(|s| *s = false);
            for &id in history {
                if (id as usize) < self.vocab {
                    self.seen[id as usize] = true;
                }
            }
            let r = c.repetition_penalty as f32;
            for (l, &s) in logits.iter_mut().zip(&self.seen) {
                if s {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        if c.temperature < MIN_TEMPERATURE {
            return argmax(logits);
        }
        let inv_t = 1.0 / c.temperature as f32;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l * inv_t))
            .collect();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = c.top_k {
            cand.truncate(k.min(cand.len()));
        }
        let max = cand[0].1;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|&(_, l)| ((l - max) as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if let Some(top_p) = c.top_p {
            // Keep the smallest prefix whose mass reaches top_p (at least one token).
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let u = self.rng.next_f64();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(cfg: SamplingConfig, logits: &[f32], n: usize) -> Vec<usize> {
        let mut s = Sampler::new(cfg, logits.len());
        let mut c = vec![0; logits.len()];
        for _ in 0..n {
            c[s.sample(&mut logits.to_vec(), &[]) as usize] += 1;
        }
        c
    }

    #[test]
    fn greedy_top_k_top_p_and_frequencies() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        let greedy = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(counts(greedy, &logits, 5), vec![0, 5, 0, 0]);
        let top2 = SamplingConfig {
            top_k: Some(2),
            ..Default::default()
        };
        let c = counts(top2, &logits, 2000);
        assert_eq!(c[0] + c[3], 0);
        // p(1)/p(2) = e: about 0.731 of the draws.
        let frac = c[1] as f64 / 2000.0;
        assert!((frac - 0.731).abs() < 0.04, "{frac}");
        // Softmax of [1,3,2,0] is [.087,.644,.237,.032]: top-p 0.7 keeps tokens 1 and 2.
        let nucleus = SamplingConfig {
            top_p: Some(0.7),
            ..Default::default()
        };
        let c = counts(nucleus, &logits, 4000);
        assert_eq!(c[0] + c[3], 0);
        // Renormalised over the kept two: .644 / (.644 + .237) = 0.731 for token 1.
        let frac = c[1] as f64 / 4000.0;
        assert!((frac - 0.731).abs() < 0.03, "{frac}");
    }

    /// Greedy ties go to the lowest id, as torch.argmax's do.
    #[test]
    fn greedy_ties_pick_the_lowest_id() {
        let greedy = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(
            counts(greedy.clone(), &[1.0, 3.0, 3.0, 3.0], 2),
            vec![0, 2, 0, 0]
        );
        assert_eq!(counts(greedy, &[2.0, 2.0], 2), vec![2, 0]);
    }

    /// Logits in the thousands (an unnormalised head, a low temperature) sample as
    /// their differences say instead of overflowing the exponentials.
    #[test]
    fn large_logits_do_not_overflow() {
        for shift in [800.0f32, -800.0, 3000.0] {
            let logits = [1.0 + shift, 3.0 + shift, 2.0 + shift, shift];
            let cfg = SamplingConfig {
                top_k: Some(2),
                seed: 9,
                ..Default::default()
            };
            let c = counts(cfg, &logits, 2000);
            let frac = c[1] as f64 / 2000.0;
            assert!((frac - 0.731).abs() < 0.04, "shift {shift}: {frac} {c:?}");
        }
    }

    #[test]
    fn repetition_penalty_follows_hf_rule() {
        let cfg = SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, 3);
        let mut logits = [4.0f32, 3.0, -1.0];
        // Token 0 seen: 4 / 2 = 2 < 3, so greedy now picks token 1.
        assert_eq!(s.sample(&mut logits, &[0, 2]), 1);
        assert_eq!(logits, [2.0, 3.0, -2.0]);
        assert!(SamplingConfig {
            top_p: Some(1.5),
            ..Default::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn temperatures_below_the_floor_are_greedy() {
        // 1e-39 once divided the logits into infinities and sampled garbage.
        let logits = [0.5f32, 3.0, -1.0, 2.9];
        for t in [1e-39, 1e-20, MIN_TEMPERATURE / 2.0] {
            let c = SamplingConfig {
                temperature: t,
                seed: 3,
                ..Default::default()
            };
            c.validate().unwrap();
            let mut s = Sampler::new(c, logits.len());
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits.to_vec(), &[]), 1, "temperature {t}");
            }
        }
    }

    /// At the floor itself the sampler still samples: logits 1e-5 apart become 0.1
    /// apart, and both are drawn.
    #[test]
    fn the_temperature_floor_itself_samples() {
        let cfg = SamplingConfig {
            temperature: MIN_TEMPERATURE,
            seed: 4,
            ..Default::default()
        };
        let c = counts(cfg, &[0.0, 1e-5], 400);
        assert!(c[0] > 100 && c[1] > 100, "{c:?}");
    }

    #[test]
    fn validate_names_each_value_out_of_range() {
        let ok = SamplingConfig::default();
        ok.validate().unwrap();
        let with = |f: &dyn Fn(&mut SamplingConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().map(|_| ()).map_err(|e| e.to_string())
        };
        // Edges that are valid: greedy, the whole distribution, no penalty.
        assert!(with(&|c| c.temperature = 0.0).is_ok());
        assert!(with(&|c| c.top_p = Some(1.0)).is_ok());
        assert!(with(&|c| c.top_k = Some(1)).is_ok());
        for (bad, name) in [
            (with(&|c| c.temperature = -0.5), "temperature"),
            (with(&|c| c.temperature = f64::NAN), "temperature"),
            (with(&|c| c.temperature = f64::INFINITY), "temperature"),
            (with(&|c| c.top_k = Some(0)), "top-k"),
            (with(&|c| c.top_p = Some(0.0)), "top-p"),
            (with(&|c| c.top_p = Some(-0.1)), "top-p"),
            (with(&|c| c.top_p = Some(1.5)), "top-p"),
            (with(&|c| c.top_p = Some(f64::NAN)), "top-p"),
            (with(&|c| c.repetition_penalty = 0.0), "repetition-penalty"),
            (
                with(&|c| c.repetition_penalty = f64::INFINITY),
                "repetition-penalty",
            ),
        ] {
            let e = bad.expect_err(name);
            assert!(e.contains(name), "{e}");
        }
    }

    /// Ids at or past `vocab_limit` are never chosen, greedy or sampled; a limit of 0,
    /// or one that is not below the logits' length, limits nothing.
    #[test]
    fn ids_past_the_vocabulary_limit_are_never_chosen() {
        // The largest logits sit past the limit of 3.
        let logits = [0.5f32, 2.0, 1.0, 9.0, 8.0];
        let limited = |temperature, vocab_limit| SamplingConfig {
            temperature,
            vocab_limit,
            seed: 11,
            ..Default::default()
        };
        assert_eq!(
            counts(limited(0.0, Some(3)), &logits, 3),
            vec![0, 3, 0, 0, 0]
        );
        let c = counts(limited(1.0, Some(3)), &logits, 2000);
        assert_eq!(c[3] + c[4], 0, "{c:?}");
        assert!(c[0] > 0 && c[2] > 0, "{c:?}");
        for whole in [Some(0), Some(5), Some(9), None] {
            assert_eq!(
                counts(limited(0.0, whole), &logits, 2),
                vec![0, 0, 0, 2, 0],
                "limit {whole:?}"
            );
        }
    }

    /// A history id outside the vocabulary (a prompt encoded for a larger one) is
    /// skipped by the penalty, not an out-of-bounds index.
    #[test]
    fn history_ids_outside_the_vocabulary_are_ignored() {
        let cfg = SamplingConfig {
            temperature: 0.0,
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg, 3);
        let mut logits = [4.0f32, 3.0, -1.0];
        assert_eq!(s.sample(&mut logits, &[3, 7, 1]), 0);
        assert_eq!(logits, [4.0, 1.5, -1.0]);
    }

    /// The temperature divides the logits: at 0.5, tokens 1 and 2 of [1, 3, 2, 0]
    /// (top-k 2) are drawn in the ratio e² : 1 (0.881 of the draws for token 1); at 2,
    /// e^0.5 : 1 (0.622).
    #[test]
    fn temperature_divides_the_logits() {
        let logits = [1.0f32, 3.0, 2.0, 0.0];
        for (t, want) in [(0.5, 0.881), (2.0, 0.622)] {
            let cfg = SamplingConfig {
                temperature: t,
                top_k: Some(2),
                seed: 5,
                ..Default::default()
            };
            let c = counts(cfg, &logits, 4000);
            let frac = c[1] as f64 / 4000.0;
            assert!((frac - want).abs() < 0.03, "temperature {t}: {frac}");
        }
    }
}
