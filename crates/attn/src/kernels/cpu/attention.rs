//! Causal self-attention over whole sequences, forward and backward, with grouped
//! key/value heads: per (sequence, head) the products run on the panel kernel over
//! padded per-head copies (and transposes) of q, k, v; the softmax's backward is written
//! with AVX-512 intrinsics where available.

use rayon::prelude::*;

use super::dropout::{drop_row, Dropout};
use super::panel::{self, SyncPtr, NR};
use super::vmath::{self, dispatch};

// ---------------------------------------------------------------- attention

/// One head's operands, laid out for the panel kernel to read in place: rows padded to
/// whole panels (`hdp` = the head width rounded up to [`NR`]), transposes padded to `tp`
/// (the sequence length rounded up to [`NR`]); padding is zero.
#[derive(Default)]
struct HeadScratch {
    /// Queries times the softmax scale, `[t][hdp]`.
    q: Vec<f32>,
    /// Keys `[hd][tp]` (forward) or `[t][hdp]` (backward).
    k: Vec<f32>,
    /// Values `[t][hdp]` (forward) or `[hd][tp]` (backward).
    v: Vec<f32>,
    /// The output gradient `[t][hdp]`.
    g: Vec<f32>,
    /// The weights' gradient `[t][t]`.
    ds: Vec<f32>,
    /// Dropped-out attention weights `[t][t]`.
    pd: Vec<f32>,
}

thread_local! {
    /// Per-thread scratch of the attention tasks (kept: fresh buffers would be new pages
    /// to fault in at every step).
    static HEAD_SCRATCH: std::cell::RefCell<HeadScratch> = std::cell::RefCell::new(HeadScratch::default());
}

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
    /// Plain multi-head attention over a model width `c`.
    #[cfg(test)]
    fn mha(c: usize, n: usize) -> Self {
        Heads {
            n,
            kv: n,
            dim: c / n,
        }
    }
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
}

/// Where one query head and its key/value head sit in `qkv [b·t, width]`.
#[derive(Clone, Copy)]
struct Head {
    bi: usize,
    /// Query head.
    h: usize,
    /// Its key/value head.
    g: usize,
    t: usize,
    heads: Heads,
    hd: usize,
}

impl Head {
    fn new(bi: usize, h: usize, t: usize, heads: Heads) -> Self {
        Head {
            bi,
            h,
            g: h / heads.group(),
            t,
            heads,
            hd: heads.dim,
        }
    }
    /// Row `i` of part `part` (0 queries, 1 keys, 2 values) in a `[b·t, width]` array.
    fn at(&self, i: usize, part: usize) -> usize {
        let (qw, kvw) = (self.heads.q_width(), self.heads.kv * self.hd);
        let col = match part {
            0 => self.h * self.hd,
            1 => qw + self.g * self.hd,
            _ => qw + kvw + self.g * self.hd,
        };
        (self.bi * self.t + i) * self.heads.width() + col
    }
    fn hdp(&self) -> usize {
        self.hd.next_multiple_of(NR)
    }
    fn tp(&self) -> usize {
        self.t.next_multiple_of(NR)
    }
    /// Part `part` of the head as rows `[t][hdp]`, times `mul`.
    fn rows(&self, qkv: &[f32], part: usize, mul: f32, out: &mut Vec<f32>) {
        let (hd, hdp) = (self.hd, self.hdp());
        out.resize(self.t * hdp, 0.0);
        for i in 0..self.t {
            let src = &qkv[self.at(i, part)..][..hd];
            let dst = &mut out[i * hdp..(i + 1) * hdp];
            if mul == 1.0 {
                copy_row(&mut dst[..hd], src);
            } else {
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = x * mul;
                }
            }
            dst[hd..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    /// Part `part` of the head transposed, `[hd][tp]`: written row by row (each output
    /// row in one pass, reading a column of the head's rows, which stay in L1).
    fn transposed(&self, qkv: &[f32], part: usize, out: &mut Vec<f32>) {
        let (hd, t, tp) = (self.hd, self.t, self.tp());
        out.resize(hd * tp, 0.0);
        let first = self.at(0, part);
        let stride = self.heads.width();
        assert!(qkv.len() >= first + (t - 1) * stride + hd);
        // Whole square blocks in registers where the ISA has them; the rest one by one.
        let isa = crate::kernels::cpu::isa();
        let side = panel::transpose_side(isa);
        let (d16, t16) = if side > 0 {
            (hd / side * side, t / side * side)
        } else {
            (0, 0)
        };
        #[cfg(target_arch = "x86_64")]
        for d0 in (0..d16).step_by(side.max(1)) {
            for i0 in (0..t16).step_by(side.max(1)) {
                // SAFETY: rows i0..i0 + side ≤ t of the source hold columns
                // d0..d0 + side ≤ hd (bound asserted above); rows d0..d0 + side ≤ hd of
                // out hold columns i0..i0 + side ≤ t ≤ tp. The ISA was detected.
                unsafe {
                    panel::transpose_block(
                        isa,
                        qkv.as_ptr().add(first + i0 * stride + d0),
                        stride,
                        out.as_mut_ptr().add(d0 * tp + i0),
                        tp,
                    )
                }
            }
        }
        for (d, o) in out.chunks_exact_mut(tp).enumerate() {
            let from = if d < d16 { t16 } else { 0 };
            for (i, o) in o[..t].iter_mut().enumerate().skip(from) {
                *o = qkv[first + i * stride + d];
            }
            o[t..].iter_mut().for_each(|v| *v = 0.0);
        }
    }
}

/// `out[i][j] = Σ_d a[i][d] · bt[d][j]` for the `t × t` lower triangle (by whole
/// panels: entries right of the diagonal in its panel are written too), `a` rows `lda`
/// apart and `hd` long, `bt` `[hd][tp]`.
fn lower_products(a: &[f32], lda: usize, hd: usize, bt: &[f32], t: usize, out: &mut [f32]) {
    let isa = crate::kernels::cpu::isa();
    let (mb, tp) = (panel::block_rows(isa), t.next_multiple_of(NR));
    let mut acc = [[0f32; NR]; 8];
    for i0 in (0..t).step_by(mb) {
        let m = mb.min(t - i0);
        let rows: [&[f32]; 8] = std::array::from_fn(|r| &a[(i0 + r.min(m - 1)) * lda..][..hd]);
        for j0 in (0..i0 + m).step_by(NR) {
            let valid = NR.min(t - j0);
            panel::panel_rows_strided(isa, &rows[..m], &bt[j0..], hd, tp, &mut acc[..m]);
            for (r, a) in acc[..m].iter().enumerate() {
                copy_row(&mut out[(i0 + r) * t + j0..][..valid], &a[..valid]);
            }
        }
    }
}

/// `Σ_{j ≤ i} w[i][j] · b[j][..hd]` for each row `i` of the `t × t` lower-triangular
/// `w`, `b` rows `ldb` apart (a multiple of [`NR`]); handed to `put(i, c0, values)` a
/// panel of columns `c0..` at a time.
fn prefix_sums(
    w: &[f32],
    t: usize,
    b: &[f32],
    ldb: usize,
    hd: usize,
    mut put: impl FnMut(usize, usize, &[f32]),
) {
    let isa = crate::kernels::cpu::isa();
    let mb = panel::block_rows(isa);
    let mut acc = [[0f32; NR]; 8];
    for i0 in (0..t).step_by(mb) {
        let m = mb.min(t - i0);
        // Rows i0.. need columns up to their last row's diagonal (zero beyond).
        let k = i0 + m;
        let rows: [&[f32]; 8] = std::array::from_fn(|r| &w[(i0 + r.min(m - 1)) * t..][..k]);
        for c0 in (0..hd).step_by(NR) {
            panel::panel_rows_strided(isa, &rows[..m], &b[c0..], k, ldb, &mut acc[..m]);
            for (r, a) in acc[..m].iter().enumerate() {
                put(i0 + r, c0, &a[..NR.min(hd - c0)]);
            }
        }
    }
}

/// `Σ_{i ≥ j} w[i][j] · b[i][..hd]` for each column `j` of the `t × t` lower-triangular
/// `w` (that is, `wᵀ·b`), `b` rows `ldb` apart; handed to `put(j, c0, values)`.
fn suffix_sums(
    w: &[f32],
    t: usize,
    b: &[f32],
    ldb: usize,
    hd: usize,
    mut put: impl FnMut(usize, usize, &[f32]),
) {
    let isa = crate::kernels::cpu::isa();
    let mb = panel::block_rows(isa).min(6);
    let mut acc = [[0f32; NR]; 6];
    for j0 in (0..t).step_by(mb) {
        let m = mb.min(t - j0);
        for c0 in (0..hd).step_by(NR) {
            // Steps i = j0..t: w[i][j0..j0 + m] are adjacent (zero where i < j).
            panel::panel_rows_t(
                isa,
                &w[j0 * t + j0..],
                t,
                m,
                &b[j0 * ldb + c0..],
                t - j0,
                ldb,
                &mut acc[..m],
            );
            for (r, a) in acc[..m].iter().enumerate() {
                put(j0 + r, c0, &a[..NR.min(hd - c0)]);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` as fixed-size moves for the usual head widths (a call to
/// memcpy per 128 bytes costs more than the copy).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    match dst.len() {
        32 => {
            let d: &mut [f32; 32] = dst.try_into().unwrap();
            *d = src.try_into().unwrap();
        }
        64 => {
            let d: &mut [f32; 64] = dst.try_into().unwrap();
            *d = src.try_into().unwrap();
        }
        _ => dst.copy_from_slice(src),
    }
}

/// The softmax's backward for one row of weights `p` and their gradient `d` (in place):
/// `d ← p ⊙ (d − Σ p·d)` over `..live`, zero after. Whole chunks of sixteen with the
/// entries past `live` masked out, rather than a scalar tail.
#[inline(always)]
fn softmax_grad_body(p: &[f32], d: &mut [f32], live: usize) {
    let end = live.next_multiple_of(16).min(d.len());
    let (p, d_live) = (&p[..end], &mut d[..end]);
    let mut acc = [0f32; 16];
    let whole = end / 16 * 16;
    for c in (0..whole).step_by(16) {
        let pc: &[f32; 16] = p[c..c + 16].try_into().unwrap();
        let dc: &[f32; 16] = d_live[c..c + 16].try_into().unwrap();
        for j in 0..16 {
            acc[j] += if c + j < live { pc[j] * dc[j] } else { 0.0 };
        }
    }
    let mut dot = vmath::hsum16(acc);
    for j in whole..live.min(end) {
        dot += p[j] * d_live[j];
    }
    for j in 0..end {
        d_live[j] = if j < live {
            p[j] * (d_live[j] - dot)
        } else {
            0.0
        };
    }
    for x in d[end..].iter_mut() {
        *x = 0.0;
    }
}

/// [`softmax_grad_body`] in AVX-512 registers: masked loads and stores for the row's
/// last values, and the dot product reduced in registers.
///
/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller); `live ≤ d.len()`
/// and `p.len() ≥ live` (asserted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_grad512(p: &[f32], d: &mut [f32], live: usize) {
    use crate::kernels::cpu::vmath::avx512::lanes;
    use std::arch::x86_64::*;
    let n = d.len();
    assert!(live <= n && p.len() >= live);
    let (pp, dp) = (p.as_ptr(), d.as_mut_ptr());
    let chunks = live.div_ceil(16);
    let mut acc = _mm512_setzero_ps();
    for c in 0..chunks {
        // SAFETY (all accesses): lanes masked to ..live of both rows, or ..n of d.
        let m = lanes(live - 16 * c);
        let pv = _mm512_maskz_loadu_ps(m, pp.add(16 * c));
        let dv = _mm512_maskz_loadu_ps(m, dp.add(16 * c));
        acc = _mm512_fmadd_ps(pv, dv, acc);
    }
    let dot = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
    for c in 0..chunks {
        let m = lanes(live - 16 * c);
        let pv = _mm512_maskz_loadu_ps(m, pp.add(16 * c));
        let dv = _mm512_maskz_loadu_ps(m, dp.add(16 * c));
        let out = _mm512_maskz_mul_ps(m, pv, _mm512_sub_ps(dv, dot));
        _mm512_mask_storeu_ps(dp.add(16 * c), lanes(n - 16 * c), out);
    }
    let mut c = chunks * 16;
    while c < n {
        _mm512_mask_storeu_ps(dp.add(c), lanes(n - c), _mm512_setzero_ps());
        c += 16;
    }
}

dispatch!(
    /// The softmax's backward for one row (see [`softmax_grad_body`]).
    softmax_grad_row = softmax_grad_body, own softmax_grad512, softmax_grad256,
    (p: &[f32], d: &mut [f32], live: usize) -> ()
);

/// Causal attention for `b` sequences of `t` positions: queries, keys and values are
/// the parts of `qkv [b·t, heads.width()]`; writes the attention weights to
/// `probs [b, heads.n, t, t]` (zero above the diagonal) and the heads' outputs, side by
/// side, to `y [b·t, heads.q_width()]`. With a sliding `window`, position `i` sees
/// positions `i + 1 − window ..= i` alone (the weights of the others are zero, so the
/// backward pass needs no window of its own).
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
    let (nh, hd, c) = (heads.n, heads.dim, heads.q_width());
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(y.len() >= b * t * c && probs.len() >= b * nh * t * t);
    assert!(qkv.len() >= b * t * heads.width());
    let yp = SyncPtr(y.as_mut_ptr());
    probs[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, p)| {
            HEAD_SCRATCH.with_borrow_mut(|s| {
                let head = Head::new(bh / nh, bh % nh, t, heads);
                head.rows(qkv, 0, scale, &mut s.q);
                head.transposed(qkv, 1, &mut s.k);
                head.rows(qkv, 2, 1.0, &mut s.v);
                let hdp = head.hdp();
                lower_products(&s.q, hdp, hd, &s.k, t, p);
                if let Some(w) = window {
                    for i in w..t {
                        p[i * t..i * t + i + 1 - w].fill(f32::NEG_INFINITY);
                    }
                }
                vmath::causal_softmax_rows(p, t);
                // The weights the values are summed with: dropped out, or as they are.
                let w: &[f32] = match dropout {
                    None => p,
                    Some(d) => {
                        s.pd.resize(t * t, 0.0);
                        s.pd.copy_from_slice(p);
                        for i in 0..t {
                            drop_row(
                                &mut s.pd[i * t..i * t + i + 1],
                                d,
                                ((bh * t + i) * t) as u64,
                            );
                        }
                        &s.pd
                    }
                };
                prefix_sums(w, t, &s.v, hdp, hd, |i, c0, vals| {
                    // SAFETY: row bi·t + i, columns h·hd.. of y belong to this task alone
                    // (c0 + vals.len() ≤ hd; the bound on y asserted above).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            yp.get().add((head.bi * t + i) * c + head.h * hd + c0),
                            vals.len(),
                        )
                    };
                    copy_row(dst, vals);
                });
            })
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
    dqkv: &mut [f32],
    dropout: Option<Dropout>,
) {
    let (nh, hd, c, group) = (heads.n, heads.dim, heads.q_width(), heads.group());
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(dqkv.len() >= b * t * heads.width() && dy.len() >= b * t * c);
    assert!(probs.len() >= b * nh * t * t);
    let dp = SyncPtr(dqkv.as_mut_ptr());
    probs[..b * nh * t * t]
        .par_chunks(group * t * t)
        .enumerate()
        .for_each(|(bg, ps)| {
            HEAD_SCRATCH.with_borrow_mut(|s| {
                for (j, p) in ps.chunks(t * t).enumerate() {
                    let bh = bg * group + j;
                    let head = Head::new(bh / nh, bh % nh, t, heads);
                    let hdp = head.hdp();
                    head.rows(qkv, 0, scale, &mut s.q);
                    head.rows(qkv, 1, 1.0, &mut s.k);
                    head.transposed(qkv, 2, &mut s.v);
                    // The output gradient of this head, [t][hdp].
                    s.g.resize(t * hdp, 0.0);
                    for i in 0..t {
                        let row = &mut s.g[i * hdp..(i + 1) * hdp];
                        copy_row(
                            &mut row[..hd],
                            &dy[(head.bi * t + i) * c + head.h * hd..][..hd],
                        );
                        row[hd..].iter_mut().for_each(|v| *v = 0.0);
                    }
                    // The first query head of a group writes the key and value gradients,
                    // the others add to them.
                    let first = j == 0;
                    let put = |part: usize, mul: f32| {
                        move |i: usize, c0: usize, vals: &[f32]| {
                            // SAFETY: row bi·t + i of dqkv, the columns of this task's
                            // query head (part 0) or key/value head (parts 1, 2): no other
                            // task writes them (bound asserted above).
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    dp.get().add(head.at(i, part) + c0),
                                    vals.len(),
                                )
                            };
                            if part == 0 || first {
                                for (d, v) in dst.iter_mut().zip(vals) {
                                    *d = v * mul;
                                }
                            } else {
                                for (d, v) in dst.iter_mut().zip(vals) {
                                    *d += v * mul;
                                }
                            }
                        }
                    };
                    // dV = P'ᵀ·dY, P' the weights after dropout.
                    if let Some(d) = dropout {
                        s.pd.resize(t * t, 0.0);
                        s.pd.copy_from_slice(p);
                        for i in 0..t {
                            drop_row(
                                &mut s.pd[i * t..i * t + i + 1],
                                d,
                                ((bh * t + i) * t) as u64,
                            );
                        }
                    }
                    let w: &[f32] = if dropout.is_some() { &s.pd } else { p };
                    suffix_sums(w, t, &s.g, hdp, hd, put(2, 1.0));
                    // dP = dY·Vᵀ, then dS = P ⊙ (dP − Σ_j dP·P) (row-wise), zero above
                    // the diagonal.
                    s.ds.resize(t * t, 0.0);
                    lower_products(&s.g, hdp, hd, &s.v, t, &mut s.ds);
                    for i in 0..t {
                        let row = &mut s.ds[i * t..(i + 1) * t];
                        if let Some(d) = dropout {
                            // Through the dropout: dP = dP' ⊙ mask.
                            drop_row(&mut row[..i + 1], d, ((bh * t + i) * t) as u64);
                        }
                        softmax_grad_row(&p[i * t..(i + 1) * t], row, i + 1);
                    }
                    // dQ = scale · dS·K, dK = dSᵀ·(scale·Q).
                    prefix_sums(&s.ds, t, &s.k, hdp, hd, put(0, scale));
                    suffix_sums(&s.ds, t, &s.q, hdp, hd, put(1, 1.0));
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    /// The attention heads' three products (scores, weighted sums of rows, and the
    /// transposed weighted sums) against plain loops, for head widths below, at and above
    /// one panel and sequence lengths that are not whole panels.
    #[test]
    fn head_products_match_plain_loops() {
        for (t, hd) in [(7usize, 12usize), (33, 32), (64, 48), (40, 64)] {
            let (hdp, tp) = (hd.next_multiple_of(NR), t.next_multiple_of(NR));
            let mut a = data(t * hdp, 1);
            let mut b = data(t * hdp, 2);
            for i in 0..t {
                a[i * hdp + hd..(i + 1) * hdp].fill(0.0);
                b[i * hdp + hd..(i + 1) * hdp].fill(0.0);
            }
            let mut bt = vec![0f32; hd * tp];
            for i in 0..t {
                for d in 0..hd {
                    bt[d * tp + i] = b[i * hdp + d];
                }
            }
            // Scores: the lower triangle of a·bᵀ.
            let mut s = vec![f32::NAN; t * t];
            lower_products(&a, hdp, hd, &bt, t, &mut s);
            for i in 0..t {
                for j in 0..=i {
                    let w: f32 = (0..hd).map(|d| a[i * hdp + d] * b[j * hdp + d]).sum();
                    assert!((s[i * t + j] - w).abs() < 1e-4, "t {t} hd {hd}: s[{i},{j}]");
                }
            }
            // A lower-triangular w (zero above the diagonal), against b's rows.
            let mut w = data(t * t, 3);
            for i in 0..t {
                w[i * t + i + 1..(i + 1) * t].fill(0.0);
            }
            let mut got = vec![f32::NAN; t * hd];
            prefix_sums(&w, t, &b, hdp, hd, |i, c0, v| {
                got[i * hd + c0..i * hd + c0 + v.len()].copy_from_slice(v)
            });
            let mut got_t = vec![f32::NAN; t * hd];
            suffix_sums(&w, t, &b, hdp, hd, |j, c0, v| {
                got_t[j * hd + c0..j * hd + c0 + v.len()].copy_from_slice(v)
            });
            for i in 0..t {
                for d in 0..hd {
                    let want: f32 = (0..=i).map(|j| w[i * t + j] * b[j * hdp + d]).sum();
                    let want_t: f32 = (i..t).map(|r| w[r * t + i] * b[r * hdp + d]).sum();
                    assert!(
                        (got[i * hd + d] - want).abs() < 1e-4,
                        "t {t} hd {hd}: [{i},{d}]"
                    );
                    assert!(
                        (got_t[i * hd + d] - want_t).abs() < 1e-4,
                        "t {t} hd {hd}: ᵀ[{i},{d}]"
                    );
                }
            }
        }
    }

    /// A head's transposed part (16 × 16 blocks in registers, the rest one by one)
    /// against the plain gather, at widths and lengths with and without whole blocks.
    #[test]
    fn head_transposes_match_the_plain_gather() {
        for (t, hd, c) in [
            (64usize, 32usize, 128usize),
            (40, 48, 96),
            (7, 12, 24),
            (33, 64, 64),
        ] {
            let qkv = data(t * 3 * c, 4);
            for part in 0..3 {
                let head = Head::new(0, 1 % (c / hd), t, Heads::mha(c, c / hd));
                let mut out = vec![f32::NAN; 5];
                head.transposed(&qkv, part, &mut out);
                let tp = t.next_multiple_of(NR);
                assert_eq!(out.len(), hd * tp);
                for d in 0..hd {
                    for i in 0..tp {
                        let want = if i < t {
                            qkv[head.at(i, part) + d]
                        } else {
                            0.0
                        };
                        assert_eq!(
                            out[d * tp + i],
                            want,
                            "t {t} hd {hd} part {part}: [{d},{i}]"
                        );
                    }
                }
            }
        }
    }

    /// The softmax's row backward (whole registers with masked ends) against the plain
    /// formula, for live lengths at, inside and past register boundaries.
    #[test]
    fn softmax_grad_rows_match_the_formula() {
        for n in [5usize, 16, 40, 64, 70] {
            for live in [1, n / 2, n.saturating_sub(1).max(1), n] {
                let p = data(n, 5);
                let d0 = data(n, 6);
                let mut d = d0.clone();
                softmax_grad_row(&p, &mut d, live);
                let dot: f64 = (0..live).map(|j| p[j] as f64 * d0[j] as f64).sum();
                for j in 0..n {
                    let want = if j < live {
                        p[j] as f64 * (d0[j] as f64 - dot)
                    } else {
                        0.0
                    };
                    assert!(
                        (d[j] as f64 - want).abs() < 1e-5,
                        "n {n} live {live} [{j}]: {} vs {want}",
                        d[j]
                    );
                }
            }
        }
    }
}
