//! Causal self-attention over whole sequences, forward and backward, with grouped
//! key/value heads: the decoder trainer's attention. Each (sequence, query head) is one
//! task running [`super::attend`]'s head, the one implementation every attention of the
//! CPU engine shares; this file places the heads in the fused query/key/value rows and
//! sums the key and value gradients of the query heads that share a key/value head.

use rayon::prelude::*;

use super::attend::{attend_head_backward, attend_head_to, HeadOut, Span};
use super::dropout::Dropout;
use super::panel::SyncPtr;

/// The attention heads: `n` query heads of width `dim`, sharing `kv` key/value heads
/// (`n / kv` query heads each; `kv == n` is plain multi-head attention). A row of the
/// fused projection holds every query head, then every key head, then every value head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    pub n: usize,
    pub kv: usize,
    pub dim: usize,
}

impl Heads {
    /// Width of the queries (and of the attention's output).
    pub fn q_width(&self) -> usize {
        self.n * self.dim
    }
    /// Width of one row of the fused query/key/value projection.
    pub fn width(&self) -> usize {
        (self.n + 2 * self.kv) * self.dim
    }
    fn group(&self) -> usize {
        self.n / self.kv
    }
    /// Where query head `h` of sequence `bi` (of `t` positions) starts in `[b·t, width]`
    /// rows: its queries, its key/value head's keys and values.
    fn at(&self, bi: usize, h: usize, t: usize) -> [usize; 3] {
        let (qw, kvw, g) = (self.q_width(), self.kv * self.dim, h / self.group());
        let row = bi * t * self.width();
        [
            row + h * self.dim,
            row + qw + g * self.dim,
            row + qw + kvw + g * self.dim,
        ]
    }
}

/// Which keys position `i` sees: those up to its own, or the last `window` of them.
fn span(window: Option<usize>) -> Span {
    match window {
        Some(window) => Span::Window { past: 0, window },
        None => Span::Causal { past: 0 },
    }
}

/// Causal attention for `b` sequences of `t` positions: queries, keys and values are
/// the parts of `qkv [b·t, heads.width()]`; writes the attention weights to
/// `probs [b, heads.n, t, t]` (zero above the diagonal) and the heads' outputs, side by
/// side, to `y [b·t, heads.q_width()]`. With a sliding `window`, position `i` sees
/// positions `i + 1 − window ..= i` alone. Dropout on the weights: weight (i, j) of
/// head `bh` (sequence · heads + head) is mask element `(bh·t + i)·t + j`; the weights
/// after it are not kept (the backward draws them again).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: Heads,
    window: Option<usize>,
    probs: &mut [f32],
    y: &mut [f32],
    dropout: Option<Dropout>,
) {
    let (nh, hd, c, w) = (heads.n, heads.dim, heads.q_width(), heads.width());
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(y.len() >= b * t * c && probs.len() >= b * nh * t * t);
    assert!(qkv.len() >= b * t * w);
    let yp = SyncPtr(y.as_mut_ptr());
    probs[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, p)| {
            let (bi, h) = (bh / nh, bh % nh);
            let [qo, ko, vo] = heads.at(bi, h, t);
            let drop = dropout.map(|d| d.shifted((bh * t * t) as u64));
            // This head's columns of its sequence's rows of y.
            let out = HeadOut::at(yp, bi * t * c + h * hd, c, false);
            // SAFETY: rows bi·t..(bi + 1)·t of y at columns h·hd..(h + 1)·hd belong to
            // this task alone, and lie inside y (asserted above).
            unsafe {
                attend_head_to(
                    &qkv[qo..],
                    w,
                    (&qkv[ko..], &qkv[vo..], w),
                    span(window),
                    (t, hd, scale),
                    None,
                    out,
                    Some(p),
                    drop,
                )
            };
        });
}

/// Backward of [`attention`]: from the output gradient `dy [b·t, heads.q_width()]`
/// writes the gradient of `qkv` to `dqkv [b·t, heads.width()]`. One task per sequence
/// and key/value head: the query heads that share it add their key and value
/// gradients one after the other.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dy: &[f32],
    qkv: &[f32],
    probs: &[f32],
    b: usize,
    t: usize,
    heads: Heads,
    window: Option<usize>,
    dqkv: &mut [f32],
    dropout: Option<Dropout>,
) {
    let (nh, hd, c, group, w) = (
        heads.n,
        heads.dim,
        heads.q_width(),
        heads.group(),
        heads.width(),
    );
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(dqkv.len() >= b * t * w && dy.len() >= b * t * c);
    assert!(probs.len() >= b * nh * t * t && qkv.len() >= b * t * w);
    let dp = SyncPtr(dqkv.as_mut_ptr());
    probs[..b * nh * t * t]
        .par_chunks(group * t * t)
        .enumerate()
        .for_each(|(bg, ps)| {
            // The group's query heads h0.. of sequence bi share one key/value head.
            let (bi, h0) = (bg * group / nh, bg * group % nh);
            for (j, p) in ps.chunks(t * t).enumerate() {
                let (bh, h) = (bg * group + j, h0 + j);
                let [qo, ko, vo] = heads.at(bi, h, t);
                // The head's columns of its sequence's rows of dqkv (qo, ko and vo are
                // offsets into qkv, laid out as dqkv): its query gradient, and the
                // key/value head's gradients, which the first query head of the group
                // writes and the others add to.
                // SAFETY: rows bi·t..(bi + 1)·t of dqkv at this query head's columns and
                // at its key/value head's belong to this task alone (one task per
                // sequence and key/value head), inside dqkv (asserted above); the three
                // column ranges are disjoint.
                unsafe {
                    attend_head_backward(
                        (&qkv[qo..], w),
                        (&qkv[ko..], &qkv[vo..], w),
                        (&dy[bi * t * c + h * hd..], c),
                        (t, hd, scale),
                        span(window),
                        p,
                        dropout.map(|d| d.shifted((bh * t * t) as u64)),
                        [
                            HeadOut::at(dp, qo, w, false),
                            HeadOut::at(dp, ko, w, j > 0),
                            HeadOut::at(dp, vo, w, j > 0),
                        ],
                        &mut [],
                    )
                };
            }
        });
}
