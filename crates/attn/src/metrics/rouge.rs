//! ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum exactly as Google's `rouge-score` 0.1.2
//! computes them:
//!
//! ```text
//! RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stem)
//!     .score(target=reference, prediction=hyp)
//! ```
//!
//! * Tokens (its `DefaultTokenizer`): the text is lowercased (Unicode, as Python's
//!   `str.lower()`: the Kelvin sign `K` becomes `k`, `İ` becomes `i` and a combining
//!   dot); every run of characters other than ASCII `a-z0-9` is a separator, so accented
//!   letters, Chinese and every other non-ASCII letter are dropped. With stemming, tokens
//!   longer than 3 characters go through NLTK's Porter stemmer ([`super::porter`]).
//! * ROUGE-N: clipped n-gram overlap; P = overlap / hypothesis n-grams, R = overlap /
//!   reference n-grams (each denominator at least 1, so a side without n-grams scores 0);
//!   F = 2PR / (P + R), or 0 when P + R = 0.
//! * ROUGE-L: the longest common subsequence of the two token lists; all zero when either
//!   list is empty.
//! * ROUGE-Lsum: both texts are split into sentences on `\n` (empty strings dropped;
//!   blank ones such as `" "` kept, with no tokens), and every reference sentence's union
//!   LCS with the hypothesis sentences is counted, each token at most as often as it
//!   occurs in both texts (rouge-score's `_summary_level_lcs`, including which of several
//!   longest subsequences its backtracking picks).
//!
//! [`score_corpus`] also averages: the arithmetic mean over lines of each per-line
//! precision, recall and F-measure (what users of rouge-score compute with `np.mean`; not
//! its bootstrap aggregator), summed pairwise as NumPy does.
//!
//! With [`RougeConfig::newline_token`] every occurrence of that string in both texts is
//! replaced by `\n` first, so that ROUGE-Lsum sees sentence breaks in one-line data.
//!
//! # The `zh-char` tokenizer
//!
//! rouge-score gives 0 for Chinese, since its tokenizer drops every non-ASCII letter.
//! [`RougeTokenize::ZhChar`] (attn's own) lowercases the same way, then makes every
//! character of the following ranges a token on its own:
//!
//! | range | block |
//! |---|---|
//! | U+3040–U+309F | Hiragana |
//! | U+30A0–U+30FF | Katakana |
//! | U+31F0–U+31FF | Katakana Phonetic Extensions |
//! | U+3400–U+4DBF | CJK Unified Ideographs Extension A |
//! | U+4E00–U+9FFF | CJK Unified Ideographs |
//! | U+AC00–U+D7A3 | Hangul Syllables |
//! | U+F900–U+FAFF | CJK Compatibility Ideographs |
//! | U+20000–U+2A6DF | Extension B |
//! | U+2A700–U+2B73F | Extension C |
//! | U+2B740–U+2B81F | Extension D |
//! | U+2B820–U+2CEAF | Extension E |
//! | U+2CEB0–U+2EBEF | Extension F |
//! | U+2EBF0–U+2EE5F | Extension I |
//! | U+2F800–U+2FA1F | CJK Compatibility Ideographs Supplement |
//! | U+30000–U+3134F | Extension G |
//! | U+31350–U+323AF | Extension H |
//!
//! Runs of ASCII `a-z0-9` are tokens as in the default tokenizer (stemmed with stemming
//! when longer than 3 characters); every other character (CJK punctuation, fullwidth
//! forms, radicals, other scripts) separates tokens. On text without characters of those
//! ranges it gives exactly the default tokenizer's tokens. Its reference values in the
//! fixtures are rouge-score's on a text where each such character is replaced by an
//! ASCII code word (`scripts/make_rouge_fixtures.py`).

use std::collections::HashMap;

use rayon::prelude::*;

use super::porter;
use crate::{Error, Result};

/// The rouge-score release these scores reproduce.
pub const ROUGE_SCORE_VERSION: &str = "0.1.2";

/// How texts become tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RougeTokenize {
    /// rouge-score's `DefaultTokenizer`: ASCII letters and digits only.
    #[default]
    Default,
    /// The default, plus every CJK ideograph, kana or Hangul syllable as a token of its
    /// own (see the module documentation for the exact ranges).
    ZhChar,
}

impl std::str::FromStr for RougeTokenize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(RougeTokenize::Default),
            "zh-char" => Ok(RougeTokenize::ZhChar),
            other => Err(Error::invalid(
                "tokenize",
                format!("{other:?} is not default or zh-char"),
            )),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RougeConfig {
    /// Porter-stem tokens longer than 3 characters (rouge-score's `use_stemmer`).
    pub stem: bool,
    pub tokenize: RougeTokenize,
    /// Replaced by `\n` in hypotheses and references before scoring (an empty string
    /// replaces nothing in [`score_pair`] and is an error in [`score_corpus`]).
    pub newline_token: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

/// The four scores, serialised with rouge-score's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct RougeScores {
    pub rouge1: Score,
    pub rouge2: Score,
    #[serde(rename = "rougeL")]
    pub rouge_l: Score,
    #[serde(rename = "rougeLsum")]
    pub rouge_lsum: Score,
}

impl RougeScores {
    /// (rouge-score's name, score) in the order rouge1, rouge2, rougeL, rougeLsum.
    pub fn named(&self) -> [(&'static str, Score); 4] {
        [
            ("rouge1", self.rouge1),
            ("rouge2", self.rouge2),
            ("rougeL", self.rouge_l),
            ("rougeLsum", self.rouge_lsum),
        ]
    }

    /// Precision, recall and F-measure of rouge1, rouge2, rougeL and rougeLsum.
    pub fn to_array(&self) -> [f64; 12] {
        let mut out = [0.0; 12];
        for (k, (_, s)) in self.named().iter().enumerate() {
            out[3 * k..3 * k + 3].copy_from_slice(&[s.precision, s.recall, s.fmeasure]);
        }
        out
    }

    /// The inverse of [`RougeScores::to_array`].
    pub fn from_array(a: [f64; 12]) -> Self {
        let s = |k: usize| Score {
            precision: a[3 * k],
            recall: a[3 * k + 1],
            fmeasure: a[3 * k + 2],
        };
        RougeScores {
            rouge1: s(0),
            rouge2: s(1),
            rouge_l: s(2),
            rouge_lsum: s(3),
        }
    }
}

/// Whether `zh-char` makes `c` a token of its own (the table in the module
/// documentation).
pub fn is_zh_char(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x309F
        | 0x30A0..=0x30FF
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0x2CEB0..=0x2EBEF
        | 0x2EBF0..=0x2EE5F
        | 0x2F800..=0x2FA1F
        | 0x30000..=0x3134F
        | 0x31350..=0x323AF)
}

fn push_word(word: &str, stem: bool, out: &mut Vec<String>) {
    if stem && word.len() > 3 {
        let s = porter::stem(word);
        // rouge-score drops whatever is not ^[a-z0-9]+$ after stemming.
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            out.push(s);
        }
    } else {
        out.push(word.to_string());
    }
}

/// The tokens of one text (no sentence splitting, no newline token).
pub fn tokenize(text: &str, cfg: &RougeConfig) -> Vec<String> {
    let lower = text.to_lowercase();
    let zh = cfg.tokenize == RougeTokenize::ZhChar;
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in lower.char_indices() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            start.get_or_insert(i);
            continue;
        }
        if let Some(s) = start.take() {
            push_word(&lower[s..i], cfg.stem, &mut out);
        }
        if zh && is_zh_char(c) {
            out.push(c.to_string());
        }
    }
    if let Some(s) = start {
        push_word(&lower[s..], cfg.stem, &mut out);
    }
    out
}

/// A text as token ids: its sentences (rouge-score's split on `\n`, empty strings
/// dropped) and all its tokens in order.
struct Text {
    sentences: Vec<Vec<u32>>,
    all: Vec<u32>,
}

fn prepare(text: &str, cfg: &RougeConfig, ids: &mut HashMap<String, u32>) -> Text {
    let replaced;
    let text = match cfg.newline_token.as_deref() {
        Some(t) if !t.is_empty() => {
            replaced = text.replace(t, "\n");
            replaced.as_str()
        }
        _ => text,
    };
    let mut sentences = Vec::new();
    let mut all = Vec::new();
    // Tokens never span a newline, so the whole text's tokens are its sentences' ones.
    for s in text.split('\n').filter(|s| !s.is_empty()) {
        let toks: Vec<u32> = tokenize(s, cfg)
            .into_iter()
            .map(|t| {
                let n = ids.len() as u32;
                *ids.entry(t).or_insert(n)
            })
            .collect();
        all.extend_from_slice(&toks);
        sentences.push(toks);
    }
    Text { sentences, all }
}

/// rouge-score's `scoring.fmeasure`, operation for operation.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn score(hits: usize, hyp_len: usize, ref_len: usize) -> Score {
    let precision = hits as f64 / hyp_len as f64;
    let recall = hits as f64 / ref_len as f64;
    Score {
        precision,
        recall,
        fmeasure: fmeasure(precision, recall),
    }
}

fn ngram_counts(t: &[u32], n: usize) -> HashMap<&[u32], usize> {
    let mut m = HashMap::new();
    for g in t.windows(n) {
        *m.entry(g).or_insert(0) += 1;
    }
    m
}

fn rouge_n(hyp: &[u32], reference: &[u32], n: usize) -> Score {
    let (h, r) = (ngram_counts(hyp, n), ngram_counts(reference, n));
    let overlap: usize = r
        .iter()
        .map(|(g, c)| (*c).min(h.get(g).copied().unwrap_or(0)))
        .sum();
    let total = |t: &[u32]| (t.len() + 1).saturating_sub(n);
    score(overlap, total(hyp).max(1), total(reference).max(1))
}

fn lcs_len(a: &[u32], b: &[u32]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &x in a {
        for (j, &y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn rouge_l(hyp: &[u32], reference: &[u32]) -> Score {
    if hyp.is_empty() || reference.is_empty() {
        return Score::default();
    }
    score(lcs_len(reference, hyp), hyp.len(), reference.len())
}

/// Mark in `used` the positions of `r` in the longest common subsequence with `c` that
/// rouge-score's `_backtrack_norec` reads out of its table.
fn mark_lcs(r: &[u32], c: &[u32], used: &mut [bool]) {
    let w = c.len() + 1;
    let mut t = vec![0u32; (r.len() + 1) * w];
    for i in 1..=r.len() {
        for j in 1..=c.len() {
            t[i * w + j] = if r[i - 1] == c[j - 1] {
                t[(i - 1) * w + j - 1] + 1
            } else {
                t[(i - 1) * w + j].max(t[i * w + j - 1])
            };
        }
    }
    let (mut i, mut j) = (r.len(), c.len());
    while i > 0 && j > 0 {
        if r[i - 1] == c[j - 1] {
            used[i - 1] = true;
            i -= 1;
            j -= 1;
        } else if t[i * w + j - 1] > t[(i - 1) * w + j] {
            j -= 1;
        } else {
            i -= 1;
        }
    }
}

/// rouge-score's `_summary_level_lcs`.
fn rouge_lsum(hyp: &Text, reference: &Text, vocab: usize) -> Score {
    let (n, m) = (hyp.all.len(), reference.all.len());
    if n == 0 || m == 0 {
        return Score::default();
    }
    let mut left_h = vec![0usize; vocab];
    let mut left_r = vec![0usize; vocab];
    for &t in &hyp.all {
        left_h[t as usize] += 1;
    }
    for &t in &reference.all {
        left_r[t as usize] += 1;
    }
    let mut hits = 0;
    for r in &reference.sentences {
        let mut used = vec![false; r.len()];
        for c in &hyp.sentences {
            mark_lcs(r, c, &mut used);
        }
        for (&t, _) in r.iter().zip(&used).filter(|(_, &u)| u) {
            let t = t as usize;
            if left_h[t] > 0 && left_r[t] > 0 {
                hits += 1;
                left_h[t] -= 1;
                left_r[t] -= 1;
            }
        }
    }
    score(hits, n, m)
}

/// The four ROUGE scores of one hypothesis against its reference. ROUGE-L's time and
/// ROUGE-Lsum's table grow with the product of the two lengths: [`score_corpus`] checks
/// it against [`MAX_LCS_CELLS`] first.
pub fn score_pair(hyp: &str, reference: &str, cfg: &RougeConfig) -> RougeScores {
    let (h, r, vocab) = prepare_pair(hyp, reference, cfg);
    score_texts(&h, &r, vocab)
}

/// Both sides tokenized over one vocabulary, and its size.
fn prepare_pair(hyp: &str, reference: &str, cfg: &RougeConfig) -> (Text, Text, usize) {
    let mut ids = HashMap::new();
    let h = prepare(hyp, cfg, &mut ids);
    let r = prepare(reference, cfg, &mut ids);
    (h, r, ids.len())
}

/// The most cells of the longest-common-subsequence table of one line (hypothesis
/// tokens × reference tokens): about a second of ROUGE-L, and a 1 GiB table for a
/// ROUGE-Lsum sentence pair that long. Two lines of 16,000 tokens each stay below it.
pub const MAX_LCS_CELLS: u64 = 1 << 28;

/// The number of tokens ROUGE scores in `text` (what [`MAX_LCS_CELLS`] is counted in).
pub fn token_count(text: &str, cfg: &RougeConfig) -> usize {
    prepare(text, cfg, &mut HashMap::new()).all.len()
}

/// [`score_pair`] for line `i` (counted from 1 in the error), refused when its LCS
/// table would pass [`MAX_LCS_CELLS`].
fn score_line(i: usize, hyp: &str, reference: &str, cfg: &RougeConfig) -> Result<RougeScores> {
    let (h, r, vocab) = prepare_pair(hyp, reference, cfg);
    let cells = h.all.len() as u64 * r.all.len() as u64;
    if cells > MAX_LCS_CELLS {
        return Err(Error::invalid(
            "hyp",
            format!(
                "line {i}: {} hypothesis × {} reference tokens is {cells} cells of ROUGE-L's \
                 table, more than the {MAX_LCS_CELLS} scored per line; shorten the line",
                h.all.len(),
                r.all.len()
            ),
        ));
    }
    Ok(score_texts(&h, &r, vocab))
}

fn score_texts(h: &Text, r: &Text, vocab: usize) -> RougeScores {
    RougeScores {
        rouge1: rouge_n(&h.all, &r.all, 1),
        rouge2: rouge_n(&h.all, &r.all, 2),
        rouge_l: rouge_l(&h.all, &r.all),
        rouge_lsum: rouge_lsum(h, r, vocab),
    }
}

/// NumPy's pairwise summation of float64 (`np.sum`, hence `np.mean`), so that means are
/// bit for bit those of `np.mean`.
fn np_sum(x: &[f64]) -> f64 {
    let n = x.len();
    if n < 8 {
        x.iter().fold(-0.0, |s, v| s + v)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&x[..8]);
        let full = n - n % 8;
        for block in x[8..full].chunks_exact(8) {
            for (a, b) in r.iter_mut().zip(block) {
                *a += b;
            }
        }
        let mut s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &x[full..] {
            s += v;
        }
        s
    } else {
        let half = n / 2;
        let half = half - half % 8;
        np_sum(&x[..half]) + np_sum(&x[half..])
    }
}

/// Mean over lines of each precision, recall and F-measure (zeros for no lines).
pub fn mean(lines: &[RougeScores]) -> RougeScores {
    if lines.is_empty() {
        return RougeScores::default();
    }
    let rows: Vec<[f64; 12]> = lines.iter().map(RougeScores::to_array).collect();
    let mut out = [0.0; 12];
    for (k, o) in out.iter_mut().enumerate() {
        let column: Vec<f64> = rows.iter().map(|r| r[k]).collect();
        *o = np_sum(&column) / lines.len() as f64;
    }
    RougeScores::from_array(out)
}

/// Score parallel hypothesis and reference lines: (the mean over lines, each line's
/// scores). Errors when the counts differ, when there are no lines, or when the newline
/// token is empty.
pub fn score_corpus<H, R>(
    hyps: &[H],
    refs: &[R],
    cfg: &RougeConfig,
) -> Result<(RougeScores, Vec<RougeScores>)>
where
    H: AsRef<str> + Sync,
    R: AsRef<str> + Sync,
{
    if refs.len() != hyps.len() {
        return Err(Error::invalid(
            "ref",
            format!(
                "{} reference lines but {} hypotheses: they must be parallel",
                refs.len(),
                hyps.len()
            ),
        ));
    }
    if hyps.is_empty() {
        return Err(Error::invalid("hyp", "no lines to score"));
    }
    if cfg.newline_token.as_deref() == Some("") {
        return Err(Error::invalid("newline-token", "must not be empty"));
    }
    let lines = hyps
        .par_iter()
        .zip(refs.par_iter())
        .enumerate()
        .map(|(i, (h, r))| score_line(i + 1, h.as_ref(), r.as_ref(), cfg))
        .collect::<Result<Vec<RougeScores>>>()?;
    Ok((mean(&lines), lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed() {
        let cfg = RougeConfig::default();
        let s = score_pair("the cat was found", "the cat sat", &cfg);
        assert_eq!(s.rouge1.precision, 0.5);
        assert_eq!(s.rouge1.recall, 2.0 / 3.0);
        assert_eq!(s.rouge2.precision, 1.0 / 3.0);
        assert_eq!(s.rouge2.recall, 0.5);
        assert_eq!(s.rouge_l.fmeasure, s.rouge1.fmeasure);
        let z = score_pair("", "the cat", &cfg);
        assert_eq!(z, RougeScores::default());
    }

    /// A line whose LCS table would pass the limit is refused before any of it is
    /// computed, naming the line.
    #[test]
    fn overlong_lines_are_refused_by_number() {
        let cfg = RougeConfig::default();
        let side = 1usize << 14; // side² = MAX_LCS_CELLS
        let at = "w ".repeat(side);
        let over = "w ".repeat(side + 1);
        let e = score_corpus(&["a", over.as_str()], &["a", at.as_str()], &cfg)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2:") && e.contains("16385"), "{e}");
    }

    #[test]
    fn np_sum_matches_sequential_for_exact_values() {
        // Integers are summed exactly whatever the order.
        for n in [0usize, 1, 7, 8, 9, 127, 128, 129, 1000] {
            let x: Vec<f64> = (0..n).map(|i| i as f64).collect();
            assert_eq!(np_sum(&x), (n * n.saturating_sub(1) / 2) as f64);
        }
    }
}
