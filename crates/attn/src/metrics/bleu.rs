//! Corpus and sentence BLEU (Papineni et al. 2002) exactly as sacreBLEU 2.x computes it:
//! its tokenizers, clipped n-gram counts against the maximum over references, the
//! closest reference length (shorter on ties), its smoothing methods, and its signature.

use std::collections::HashMap;

use serde::Serialize;

use super::sacre_tokenize::{SacreTokenizer, SACREBLEU_VERSION};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Smooth {
    /// No smoothing: an order with no match makes the score 0.
    None,
    /// NIST geometric sequence (sacreBLEU's default): 1/(2^k · total) for the k-th
    /// order without a match.
    Exp,
    /// A zero count becomes `value` (default 0.1).
    Floor(Option<f64>),
    /// `k` (default 1) added to counts and totals of orders 2 and up.
    AddK(Option<f64>),
}

#[derive(Debug, Clone)]
pub struct BleuConfig {
    pub tokenize: SacreTokenizer,
    pub lowercase: bool,
    pub smooth: Smooth,
    pub effective_order: bool,
    pub max_order: usize,
}

impl Default for BleuConfig {
    fn default() -> Self {
        BleuConfig {
            tokenize: SacreTokenizer::T13a,
            lowercase: false,
            smooth: Smooth::Exp,
            effective_order: false,
            max_order: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BleuScore {
    pub score: f64,
    pub signature: String,
    /// Percentages, one per order.
    pub precisions: Vec<f64>,
    pub bp: f64,
    pub sys_len: usize,
    pub ref_len: usize,
    pub counts: Vec<f64>,
    pub totals: Vec<f64>,
}

/// Per-segment statistics: hypothesis length, reference length, matches and totals per order.
#[derive(Debug, Clone, Default)]
struct Stats {
    sys_len: usize,
    ref_len: usize,
    counts: Vec<f64>,
    totals: Vec<f64>,
}

fn ngrams(tokens: &[String], max: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    for n in 1..=max {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

impl BleuConfig {
    fn preprocess(&self, s: &str) -> Vec<String> {
        if self.lowercase {
            self.tokenize.tokens(&s.to_lowercase())
        } else {
            self.tokenize.tokens(s)
        }
    }

    fn segment(&self, hyp: &str, refs: &[&str]) -> Stats {
        let h = self.preprocess(hyp);
        let mut best_len: Option<usize> = None;
        let mut max_ref: HashMap<Vec<String>, usize> = HashMap::new();
        let ref_tokens: Vec<Vec<String>> = refs.iter().map(|r| self.preprocess(r)).collect();
        for r in &ref_tokens {
            let len = r.len();
            best_len = Some(match best_len {
                None => len,
                Some(b) => {
                    let (db, dl) = (b.abs_diff(h.len()), len.abs_diff(h.len()));
                    if dl < db || (dl == db && len < b) {
                        len
                    } else {
                        b
                    }
                }
            });
            for (g, c) in ngrams(r, self.max_order) {
                let e = max_ref.entry(g.to_vec()).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let mut counts = vec![0.0; self.max_order];
        let mut totals = vec![0.0; self.max_order];
        for (g, c) in ngrams(&h, self.max_order) {
            let n = g.len() - 1;
            totals[n] += c as f64;
            counts[n] += c.min(max_ref.get(g).copied().unwrap_or(0)) as f64;
        }
        Stats {
            sys_len: h.len(),
            ref_len: best_len.unwrap_or(0),
            counts,
            totals,
        }
    }

    /// The signature string, as sacreBLEU prints it.
    pub fn signature(&self, nrefs: usize) -> String {
        let smooth = match self.smooth {
            Smooth::None => "none".to_string(),
            Smooth::Exp => "exp".to_string(),
            Smooth::Floor(v) => format!("floor[{:.2}]", v.unwrap_or(0.1)),
            Smooth::AddK(v) => format!("add-k[{:.2}]", v.unwrap_or(1.0)),
        };
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|tok:{}|smooth:{smooth}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.effective_order { "yes" } else { "no" },
            self.tokenize.name()
        )
    }

    fn score(&self, mut st: Stats, nrefs: usize) -> BleuScore {
        let max = self.max_order;
        let bp = if st.sys_len < st.ref_len {
            if st.sys_len > 0 {
                (1.0 - st.ref_len as f64 / st.sys_len as f64).exp()
            } else {
                0.0
            }
        } else {
            1.0
        };
        let mut precisions = vec![0.0; max];
        let done = |score: f64, precisions: Vec<f64>, st: Stats| BleuScore {
            score,
            signature: self.signature(nrefs),
            precisions,
            bp,
            sys_len: st.sys_len,
            ref_len: st.ref_len,
            counts: st.counts,
            totals: st.totals,
        };
        if st.counts.iter().all(|&c| c == 0.0) {
            return done(0.0, precisions, st);
        }
        let mut smooth_mteval = 1.0;
        let mut eff_order = max;
        // n indexes the counts, the totals and the precisions alike.
        #[allow(clippy::needless_range_loop)]
        for n in 0..max {
            if let Smooth::AddK(k) = self.smooth {
                if n > 0 {
                    let k = k.unwrap_or(1.0);
                    st.counts[n] += k;
                    st.totals[n] += k;
                }
            }
            if st.totals[n] == 0.0 {
                break;
            }
            if self.effective_order {
                eff_order = n + 1;
            }
            if st.counts[n] == 0.0 {
                match self.smooth {
                    Smooth::Exp => {
                        smooth_mteval *= 2.0;
                        precisions[n] = 100.0 / (smooth_mteval * st.totals[n]);
                    }
                    Smooth::Floor(v) => precisions[n] = 100.0 * v.unwrap_or(0.1) / st.totals[n],
                    _ => {}
                }
            } else {
                precisions[n] = 100.0 * st.counts[n] / st.totals[n];
            }
        }
        let log = |p: f64| if p == 0.0 { -9_999_999_999.0 } else { p.ln() };
        let mean = precisions[..eff_order].iter().map(|&p| log(p)).sum::<f64>() / eff_order as f64;
        done(bp * mean.exp(), precisions, st)
    }
}

/// Check that every reference stream has one line per hypothesis.
pub fn check_streams(hyps: &[String], refs: &[Vec<String>]) -> Result<()> {
    if refs.is_empty() {
        return Err(Error::invalid(
            "ref",
            "at least one reference stream is needed",
        ));
    }
    for (i, r) in refs.iter().enumerate() {
        if r.len() != hyps.len() {
            return Err(Error::invalid(
                "ref",
                format!(
                    "reference stream {} has {} lines but there are {} hypotheses",
                    i + 1,
                    r.len(),
                    hyps.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Corpus BLEU of `hyps` against reference streams (each parallel to `hyps`).
pub fn corpus_bleu(hyps: &[String], refs: &[Vec<String>], cfg: &BleuConfig) -> Result<BleuScore> {
    check_streams(hyps, refs)?;
    let mut total = Stats {
        counts: vec![0.0; cfg.max_order],
        totals: vec![0.0; cfg.max_order],
        ..Default::default()
    };
    for (i, h) in hyps.iter().enumerate() {
        let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
        let st = cfg.segment(h, &r);
        total.sys_len += st.sys_len;
        total.ref_len += st.ref_len;
        for n in 0..cfg.max_order {
            total.counts[n] += st.counts[n];
            total.totals[n] += st.totals[n];
        }
    }
    Ok(cfg.score(total, refs.len()))
}

/// BLEU of one hypothesis against its references (use effective order, as sacreBLEU's
/// `sentence_bleu` does).
pub fn sentence_bleu(hyp: &str, refs: &[&str], cfg: &BleuConfig) -> BleuScore {
    cfg.score(cfg.segment(hyp, refs), refs.len())
}
