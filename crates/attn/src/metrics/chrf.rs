//! chrF and chrF++ (Popović 2015, 2017) exactly as sacreBLEU 2.x computes them:
//! character n-grams (whitespace removed unless asked), optional word n-grams with its
//! punctuation splitting, the best reference per segment, and statistics summed over the
//! corpus before the F-score.

use std::collections::HashMap;
use std::hash::Hash;

use super::bleu::check_streams;
use super::sacre_tokenize::{is_py_space, split_py, SACREBLEU_VERSION};
use crate::Result;

#[derive(Debug, Clone)]
pub struct ChrfConfig {
    pub char_order: usize,
    pub word_order: usize,
    pub beta: f64,
    pub lowercase: bool,
    pub whitespace: bool,
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        ChrfConfig {
            char_order: 6,
            word_order: 0,
            beta: 2.0,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ChrfScore {
    pub score: f64,
    pub signature: String,
}

const PUNCT: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

fn counts<T: Hash + Eq + Clone>(items: &[T], n: usize) -> HashMap<Vec<T>, usize> {
    let mut m = HashMap::new();
    for w in items.windows(n) {
        *m.entry(w.to_vec()).or_insert(0) += 1;
    }
    m
}

/// [hyp total, ref total, matches] of one order.
fn order_stats<T: Hash + Eq + Clone>(h: &[T], r: &[T], n: usize) -> [f64; 3] {
    let (hc, rc) = (counts(h, n), counts(r, n));
    let hyp: usize = hc.values().sum();
    let reff: usize = rc.values().sum();
    let matches: usize = hc
        .iter()
        .map(|(g, c)| (*c).min(rc.get(g).copied().unwrap_or(0)))
        .sum();
    // sacreBLEU reports no hypothesis n-grams for an order the reference lacks.
    [
        if reff == 0 { 0.0 } else { hyp as f64 },
        reff as f64,
        matches as f64,
    ]
}

impl ChrfConfig {
    fn words(s: &str) -> Vec<String> {
        let mut out = vec![];
        for w in split_py(s) {
            let chars: Vec<char> = w.chars().collect();
            if chars.len() == 1 {
                out.push(w.to_string());
            } else if PUNCT.contains(*chars.last().unwrap()) {
                out.push(chars[..chars.len() - 1].iter().collect());
                out.push(chars[chars.len() - 1].to_string());
            } else if PUNCT.contains(chars[0]) {
                out.push(chars[0].to_string());
                out.push(chars[1..].iter().collect());
            } else {
                out.push(w.to_string());
            }
        }
        out
    }

    fn chars(&self, s: &str) -> Vec<char> {
        if self.whitespace {
            s.chars().collect()
        } else {
            s.chars().filter(|c| !is_py_space(*c)).collect()
        }
    }

    fn stats(&self, hyp: &str, reference: &str) -> Vec<f64> {
        let (h, r) = (self.chars(hyp), self.chars(reference));
        let mut out = vec![];
        for n in 1..=self.char_order {
            out.extend(order_stats(&h, &r, n));
        }
        if self.word_order > 0 {
            let (hw, rw) = (Self::words(hyp), Self::words(reference));
            for n in 1..=self.word_order {
                out.extend(order_stats(&hw, &rw, n));
            }
        }
        out
    }

    fn f_score(&self, st: &[f64]) -> f64 {
        let factor = self.beta * self.beta;
        let orders = self.char_order + self.word_order;
        if self.eps_smoothing {
            let eps = 1e-16;
            let mut score = 0.0;
            for i in 0..orders {
                let (h, r, m) = (st[3 * i], st[3 * i + 1], st[3 * i + 2]);
                let p = if h > 0.0 { m / h } else { eps };
                let rc = if r > 0.0 { m / r } else { eps };
                let d = factor * p + rc;
                score += if d > 0.0 {
                    (1.0 + factor) * p * rc / d
                } else {
                    eps
                };
            }
            return 100.0 * score / orders as f64;
        }
        let (mut p, mut r, mut k) = (0.0, 0.0, 0usize);
        for i in 0..orders {
            let (h, rr, m) = (st[3 * i], st[3 * i + 1], st[3 * i + 2]);
            if h > 0.0 && rr > 0.0 {
                p += m / h;
                r += m / rr;
                k += 1;
            }
        }
        if k == 0 {
            return 0.0;
        }
        let (p, r) = (p / k as f64, r / k as f64);
        if p + r == 0.0 {
            0.0
        } else {
            100.0 * (1.0 + factor) * p * r / (factor * p + r)
        }
    }

    fn segment(&self, hyp: &str, refs: &[&str]) -> Vec<f64> {
        let lower = |s: &str| {
            if self.lowercase {
                s.to_lowercase()
            } else {
                s.to_string()
            }
        };
        let hyp = lower(hyp);
        let mut best: Option<(f64, Vec<f64>)> = None;
        for r in refs {
            let st = self.stats(&hyp, &lower(r));
            let f = self.f_score(&st);
            if best.as_ref().is_none_or(|(bf, _)| f > *bf) {
                best = Some((f, st));
            }
        }
        best.map(|(_, s)| s).unwrap_or_default()
    }

    pub fn signature(&self, nrefs: usize) -> String {
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|nc:{}|nw:{}|space:{}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" }
        )
    }
}

/// Corpus chrF: statistics summed over segments, then one F-score.
pub fn corpus_chrf(hyps: &[String], refs: &[Vec<String>], cfg: &ChrfConfig) -> Result<ChrfScore> {
    check_streams(hyps, refs)?;
    let mut total = vec![0.0; 3 * (cfg.char_order + cfg.word_order)];
    for (i, h) in hyps.iter().enumerate() {
        let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
        for (t, s) in total.iter_mut().zip(cfg.segment(h, &r)) {
            *t += s;
        }
    }
    Ok(ChrfScore {
        score: cfg.f_score(&total),
        signature: cfg.signature(refs.len()),
    })
}

pub fn sentence_chrf(hyp: &str, refs: &[&str], cfg: &ChrfConfig) -> ChrfScore {
    ChrfScore {
        score: cfg.f_score(&cfg.segment(hyp, refs)),
        signature: cfg.signature(refs.len()),
    }
}
