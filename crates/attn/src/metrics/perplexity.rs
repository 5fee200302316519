//! Perplexity of a causal language model on a token stream, with the sliding-window
//! recipe of the transformers perplexity guide: windows of at most `max_length` tokens
//! advanced by `stride`; each token is scored once, by the window that first reaches it,
//! with as much left context as that window gives. `stride == max_length` gives disjoint
//! windows; a smaller stride gives every scored token more context.

use serde::Serialize;

use crate::models::CausalLm;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Perplexity {
    /// Mean negative log-likelihood per scored token, in nats.
    pub nll: f64,
    pub perplexity: f64,
    /// Number of tokens scored: all but the first, and, as in the transformers recipe,
    /// but the first of each window that starts past every scored token (with a stride
    /// equal to `max_length`, the first token of every window has no left context).
    pub tokens: usize,
}

/// Sum of −log p(target) over the positions `from..` of each row.
fn window_nll(model: &dyn CausalLm, windows: &[&[u32]], from: &[usize]) -> Result<f64> {
    let v = model.vocab_size();
    let logits = model.logits_all(windows)?;
    let mut sum = 0f64;
    for ((w, rows), &from) in windows.iter().zip(&logits).zip(from) {
        // Position p predicts token p+1: −log softmax(row p)[w[p+1]], in f64.
        for p in from..w.len() - 1 {
            let row = &rows[p * v..(p + 1) * v];
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            sum += lse - row[w[p + 1] as usize] as f64;
        }
    }
    Ok(sum)
}

pub fn perplexity(
    model: &dyn CausalLm,
    ids: &[u32],
    max_length: usize,
    stride: usize,
    batch: usize,
) -> Result<Perplexity> {
    let ctx = model.context();
    if max_length < 2 || max_length > ctx {
        return Err(Error::invalid(
            "max-length",
            format!("{max_length} must be between 2 and the model's context ({ctx})"),
        ));
    }
    if stride == 0 || stride > max_length {
        return Err(Error::invalid(
            "stride",
            format!("{stride} must be between 1 and max-length ({max_length})"),
        ));
    }
    if ids.len() < 2 {
        return Err(Error::invalid(
            "data",
            "fewer than 2 tokens: nothing to score",
        ));
    }
    // (window start, window end, first target index scored)
    let mut jobs: Vec<(usize, usize, usize)> = vec![];
    let mut prev_end = 0;
    let mut begin = 0;
    while prev_end < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let first_target = prev_end.max(begin + 1);
        // first_target > begin, so a window with a target has at least two tokens.
        if first_target < end {
            jobs.push((begin, end, first_target));
        }
        prev_end = end;
        begin += stride;
    }
    let mut total = 0f64;
    let mut count = 0usize;
    // Batch windows of equal length together.
    let mut i = 0;
    while i < jobs.len() {
        let len = jobs[i].1 - jobs[i].0;
        let mut j = i;
        while j < jobs.len() && j - i < batch.max(1) && jobs[j].1 - jobs[j].0 == len {
            j += 1;
        }
        let windows: Vec<&[u32]> = jobs[i..j].iter().map(|&(b, e, _)| &ids[b..e]).collect();
        // Target index k is predicted at window position k - begin - 1.
        let from: Vec<usize> = jobs[i..j].iter().map(|&(b, _, f)| f - b - 1).collect();
        total += window_nll(model, &windows, &from)?;
        count += jobs[i..j].iter().map(|&(_, e, f)| e - f).sum::<usize>();
        i = j;
    }
    let nll = total / count as f64;
    Ok(Perplexity {
        nll,
        perplexity: nll.exp(),
        tokens: count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V: usize = 5;

    /// A toy model whose logits for the next token depend on the current token and,
    /// when `by_position`, on the position inside the window (so a token scored with
    /// the wrong left context, or twice, changes the sum).
    struct Toy {
        ctx: usize,
        by_position: bool,
    }

    impl Toy {
        fn row(&self, cur: u32, pos: usize) -> [f32; V] {
            let mut r = [0f32; V];
            for (v, x) in r.iter_mut().enumerate() {
                *x = ((cur as usize * 7 + v * 3) % 5) as f32 * 0.4;
                if self.by_position {
                    *x += (pos * (v + 1)) as f32 * 0.05;
                }
            }
            r
        }

        /// −log p(next | cur, pos), computed in f64 without the model's code path.
        fn nll(&self, cur: u32, next: u32, pos: usize) -> f64 {
            let r = self.row(cur, pos);
            let lse = r.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
            lse - r[next as usize] as f64
        }
    }

    /// The toy decoding one token at a time (its logits need only the last token and
    /// the position).
    struct ToySession<'a>(&'a Toy, usize);

    impl crate::generate::Session for ToySession<'_> {
        fn len(&self) -> usize {
            self.1
        }
        fn clear(&mut self) {
            self.1 = 0;
        }
        fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
            self.1 += ids.len();
            Ok(self.0.row(*ids.last().unwrap(), self.1 - 1).to_vec())
        }
    }

    impl CausalLm for Toy {
        fn logits_all(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
            Ok(seqs
                .iter()
                .map(|s| {
                    s.iter()
                        .enumerate()
                        .flat_map(|(p, &id)| self.row(id, p))
                        .collect()
                })
                .collect())
        }
        fn session(&self) -> Box<dyn crate::generate::Session + '_> {
            Box::new(ToySession(self, 0))
        }
        fn context(&self) -> usize {
            self.ctx
        }
        fn vocab_size(&self) -> usize {
            V
        }
        fn n_layer(&self) -> usize {
            1
        }
        fn bos(&self) -> Option<u32> {
            None
        }
        fn eos(&self) -> Option<u32> {
            None
        }
    }

    fn stream(n: usize) -> Vec<u32> {
        (0..n).map(|i| ((i * 13 + i / 3) % V) as u32).collect()
    }

    /// The window recipe stated per target: token k belongs to the first window
    /// (starts 0, stride, 2·stride, …) that contains it, and is scored there at its
    /// position in that window unless it is that window's first token.
    fn expected(m: &Toy, ids: &[u32], max_length: usize, stride: usize) -> (f64, usize) {
        let (mut sum, mut count) = (0.0, 0);
        for k in 1..ids.len() {
            let begin = (0..)
                .map(|j| j * stride)
                .find(|b| b + max_length > k)
                .unwrap();
            if begin < k {
                sum += m.nll(ids[k - 1], ids[k], k - begin - 1);
                count += 1;
            }
        }
        (sum / count as f64, count)
    }

    #[test]
    fn every_token_is_scored_once_with_its_windows_context() {
        for by_position in [false, true] {
            let m = Toy {
                ctx: 8,
                by_position,
            };
            for n in [2, 3, 7, 8, 9, 17, 24] {
                let ids = stream(n);
                for (max_length, stride) in [(8, 8), (8, 3), (8, 1), (5, 5), (5, 2), (2, 2), (2, 1)]
                {
                    for batch in [1, 3] {
                        let got = perplexity(&m, &ids, max_length, stride, batch).unwrap();
                        let (nll, count) = expected(&m, &ids, max_length, stride);
                        assert_eq!(got.tokens, count, "n {n} max {max_length} stride {stride}");
                        assert!(
                            (got.nll - nll).abs() < 1e-6,
                            "n {n} max {max_length} stride {stride} batch {batch}: {} vs {nll}",
                            got.nll
                        );
                        assert!((got.perplexity - nll.exp()).abs() < 1e-5 * nll.exp());
                    }
                }
            }
        }
    }

    #[test]
    fn bounds_are_inclusive_and_named() {
        let m = Toy {
            ctx: 8,
            by_position: true,
        };
        let ids = stream(12);
        // The model's context and a stride equal to the window are allowed.
        assert!(perplexity(&m, &ids, 8, 8, 1).is_ok());
        assert!(perplexity(&m, &ids, 2, 2, 1).is_ok());
        assert!(perplexity(&m, &ids[..2], 8, 8, 1).is_ok());
        let err = |r: Result<Perplexity>| r.unwrap_err().to_string();
        assert!(err(perplexity(&m, &ids, 9, 8, 1)).contains("max-length"));
        // A window of one token predicts nothing.
        assert!(err(perplexity(&m, &ids, 1, 1, 1)).contains("max-length"));
        assert!(err(perplexity(&m, &ids, 8, 9, 1)).contains("stride"));
        assert!(err(perplexity(&m, &ids, 8, 0, 1)).contains("stride"));
        assert!(err(perplexity(&m, &ids[..1], 8, 8, 1)).contains("data"));
        assert!(err(perplexity(&m, &[], 8, 8, 1)).contains("data"));
    }
}
