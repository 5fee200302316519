//! One attention head, forward and backward: the one implementation every attention in
//! the CPU engine runs — decoders' causal self-attention (training, prompts and decoding
//! against a cache, with a sliding window or grouped key/value heads), encoders'
//! bidirectional attention and encoder-decoders' cross-attention, with T5's additive
//! score bias and dropout on the weights.
//!
//! A few queries (decoding): scores, softmax and the weighted sum of values row by row,
//! with the dot products and sums in AVX2 registers. Many queries: every product is a
//! panel product (see [`super::panel`]) over per-thread copies of the head's operands,
//! with the panel read in place from a row-major copy; causal heads compute only the
//! panels a block of queries sees (the lower triangle, by whole panels), in the forward
//! and in the backward.
//!
//! Why one file of this length: the forward and backward of one head share its operand
//! copies, block shapes and the causal triangle's panel bounds; they are kept together so
//! that the backward visits exactly the panels the forward computed.

use std::cell::RefCell;

use super::panel::{self, SyncPtr, NR};
use super::{isa, Isa};

/// Queries at or above which the products go through the panel kernel.
const GEMM_MIN_QUERIES: usize = 8;

/// Which keys a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Span {
    /// Query `j` is at position `past + j` and sees the positions up to its own (the
    /// cache already holds the new positions).
    Causal { past: usize },
    /// As `Causal`, but query `j` sees only the last `window` positions up to its own
    /// (a sliding window, as Mistral's: the earlier keys get weight zero).
    Window { past: usize, window: usize },
    /// Every query sees all `keys` keys: an encoder's bidirectional attention over one
    /// sequence (padding left out by giving each sequence its own keys), or a
    /// decoder's cross-attention to one source sentence.
    All { keys: usize },
}

impl Span {
    /// Keys in all.
    pub(crate) fn keys(self, t: usize) -> usize {
        match self {
            Span::Causal { past } | Span::Window { past, .. } => past + t,
            Span::All { keys } => keys,
        }
    }
    /// Keys `..seen(j)` are those query `j` may see (a window zeroes the first of them).
    fn seen(self, j: usize) -> usize {
        match self {
            Span::Causal { past } | Span::Window { past, .. } => past + j + 1,
            Span::All { keys } => keys,
        }
    }
    /// The first query that sees key `p`.
    fn first_query(self, p: usize) -> usize {
        match self {
            Span::Causal { past } | Span::Window { past, .. } => p.saturating_sub(past),
            Span::All { .. } => 0,
        }
    }
}

/// Per-thread copies of a head's operands (kept: fresh buffers of a few hundred
/// kilobytes would be new pages to fault in at every call).
#[derive(Default)]
struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    c: Vec<f32>,
    g: Vec<f32>,
    s: Vec<f32>,
    pd: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Where a head's rows go: row `j`, `hd` values, at `ptr + j·ld`, overwritten or (with
/// `add`) added to. The heads of a pass write theirs straight into the rows they share
/// (their columns of `[positions, heads·hd]`): a per-thread copy then copied into those
/// rows had cost about 1% of GPT-2 4×128's training step.
#[derive(Clone, Copy)]
pub(crate) struct HeadOut {
    pub(crate) ptr: *mut f32,
    pub(crate) ld: usize,
    pub(crate) add: bool,
}

impl HeadOut {
    /// `rows` contiguous rows of `hd` values in `out` (checked), overwritten.
    fn of(out: &mut [f32], rows: usize, hd: usize) -> HeadOut {
        assert!(
            out.len() >= rows * hd,
            "a head's output: {rows} rows of {hd} expected"
        );
        HeadOut {
            ptr: out.as_mut_ptr(),
            ld: hd,
            add: false,
        }
    }

    /// Rows `ld` apart from element `offset` of the buffer at `base` (the rows a pass's
    /// heads share; computed with wrapping arithmetic, dereferenced only by the products).
    pub(crate) fn at(base: SyncPtr, offset: usize, ld: usize, add: bool) -> HeadOut {
        HeadOut {
            ptr: base.get().wrapping_add(offset),
            ld,
            add,
        }
    }

    /// Row `j`'s `hd` values.
    ///
    /// # Safety
    /// As for the functions that take a `HeadOut`: row `j` must be valid for `hd` values
    /// that no other thread touches meanwhile.
    unsafe fn row<'a>(self, j: usize, hd: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(j * self.ld), hd)
    }
}

/// Attention of `t` queries of one head. Query `j` is `q[j·q_stride..][..hd]`; key and
/// value `p` are `k[p·kv_stride..][..hd]` and `v[p·kv_stride..][..hd]`; `span` says
/// which keys each query sees, `n` of them in all (`past + t`, or `keys`). Writes `out`
/// `[t, hd]`; with `keep` (`[t, n]`), also each query's weights over the `n` keys (zero
/// for keys it does not see). With `drop` (training), the values are summed with the
/// weights after dropout (weight (j, p) is mask element `j·n + p`), and a `keep` of
/// `[2, t, n]` gets those too, after the weights before it. With `bias` (`[t, n]`, T5's
/// relative positions), `bias[j·n + p]` is added to score (j, p) after the scaling.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head(
    q: &[f32],
    q_stride: usize,
    k: &[f32],
    v: &[f32],
    kv_stride: usize,
    span: Span,
    t: usize,
    hd: usize,
    scale: f32,
    bias: Option<&[f32]>,
    out: &mut [f32],
    keep: Option<&mut [f32]>,
    drop: Option<super::Dropout>,
) {
    let out = HeadOut::of(out, t, hd);
    // SAFETY: `out` holds the t rows (checked by HeadOut::of) and is borrowed whole.
    unsafe {
        attend_head_to(
            q,
            q_stride,
            (k, v, kv_stride),
            span,
            (t, hd, scale),
            bias,
            out,
            keep,
            drop,
        )
    }
}

/// [`attend_head`] into rows `out` (overwritten: `out.add` must be false).
///
/// # Safety
/// `out` must be valid for `t` rows of `hd` values that no other thread touches
/// meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_head_to(
    q: &[f32],
    q_stride: usize,
    (k, v, kv_stride): (&[f32], &[f32], usize),
    span: Span,
    (t, hd, scale): (usize, usize, f32),
    bias: Option<&[f32]>,
    out: HeadOut,
    keep: Option<&mut [f32]>,
    drop: Option<super::Dropout>,
) {
    let n = span.keys(t);
    assert!(!out.add, "attend_head_to overwrites its output");
    SCRATCH.with_borrow_mut(|s| {
        let gemm = t >= GEMM_MIN_QUERIES;
        let (hdp, np) = (hd.next_multiple_of(NR), n.next_multiple_of(NR));
        // The weights are computed where they are kept, when they are (training): a
        // copy of them from scratch had cost as much again in memory traffic (a 256 ×
        // 256 head's are 256 KiB, half of an L2).
        let (w, after): (&mut [f32], &mut [f32]) = match keep {
            Some(keep) if keep.len() >= t * n => keep.split_at_mut(t * n),
            _ => {
                s.s.resize(t * n, 0.0);
                (&mut s.s[..t * n], &mut [])
            }
        };
        if gemm {
            // S = (scale·Q)·Kᵀ, Kᵀ `[hd][np]` read as panels in place.
            rows_into(q, q_stride, t, hd, scale, &mut s.a);
            let kt = transposed_into(k, kv_stride, n, hd, &mut s.b);
            lower_products(&s.a, hdp, hd, kt, np, (t, n, span), w);
        } else {
            for j in 0..t {
                let qj = &q[j * q_stride..][..hd];
                scores(qj, k, kv_stride, span.seen(j), hd, scale, &mut w[j * n..]);
            }
        }
        if let Some(b) = bias {
            for j in 0..t {
                let row = &mut w[j * n..j * n + span.seen(j)];
                row.iter_mut().zip(&b[j * n..]).for_each(|(s, b)| *s += b);
            }
        }
        if let Span::Window { window, .. } = span {
            for j in 0..t {
                let hidden = span.seen(j).saturating_sub(window);
                w[j * n..j * n + hidden].fill(f32::NEG_INFINITY);
            }
        }
        if span == (Span::Causal { past: 0 }) {
            // The t × t causal block, four rows in step.
            super::vmath::causal_softmax_rows(w, t);
        } else {
            for j in 0..t {
                super::vmath::causal_softmax(&mut w[j * n..(j + 1) * n], span.seen(j));
            }
        }
        // With dropout, the values are summed with the weights after it: kept after the
        // weights before it when there is room, else in scratch.
        let w: &[f32] = match drop {
            Some(d) => {
                let wd: &mut [f32] = if after.len() >= t * n {
                    &mut after[..t * n]
                } else {
                    s.pd.resize(t * n, 0.0);
                    &mut s.pd[..t * n]
                };
                wd.copy_from_slice(w);
                for j in 0..t {
                    let row = &mut wd[j * n..j * n + span.seen(j)];
                    super::dropout::drop_row(row, d, (j * n) as u64);
                }
                wd
            }
            None => w,
        };
        if gemm {
            // O = P·V, V's rows read as panels.
            let (vr, ldv) = rows_view(v, kv_stride, n, hd, &mut s.c);
            // SAFETY: the caller's contract on out.
            unsafe { prefix_sums(w, (t, n, span), vr, ldv, hd, out) };
        } else {
            for j in 0..t {
                let wj = &w[j * n..j * n + span.seen(j)];
                // SAFETY: row j < t of out (the caller's contract).
                weighted_sum(wj, v, kv_stride, hd, unsafe { out.row(j, hd) });
            }
        }
    })
}

/// `dst.copy_from_slice(src)` as fixed-size moves for the usual head widths (a call to
/// memcpy per row of 128 bytes costs more than the copy).
#[inline(always)]
pub(crate) fn copy_row(dst: &mut [f32], src: &[f32]) {
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

/// `out = [count][hdp]` (`hdp` = `hd` rounded up to [`NR`], zero padding): row `i` is
/// `mul · src[i·stride..][..hd]`.
fn rows_into(src: &[f32], stride: usize, count: usize, hd: usize, mul: f32, out: &mut Vec<f32>) {
    let hdp = hd.next_multiple_of(NR);
    out.resize(count * hdp, 0.0);
    for (i, dst) in out.chunks_exact_mut(hdp).enumerate() {
        let row = &src[i * stride..][..hd];
        if mul == 1.0 {
            copy_row(&mut dst[..hd], row);
        } else {
            dst.iter_mut().zip(row).for_each(|(d, &x)| *d = x * mul);
        }
        dst[hd..].fill(0.0);
    }
}

/// The rows `src[i·stride..][..hd]` as the panel products read them, with the distance
/// between rows: in place when `hd` is whole panels (the products read `NR` columns at a
/// time, none past `hd`), else copied into `out` by [`rows_into`]. The copies of a
/// 64-position head's queries, keys and values had taken about 1% of a CPU-recipe
/// training step.
fn rows_view<'a>(
    src: &'a [f32],
    stride: usize,
    count: usize,
    hd: usize,
    out: &'a mut Vec<f32>,
) -> (&'a [f32], usize) {
    if hd.is_multiple_of(NR) {
        assert!(count == 0 || src.len() >= (count - 1) * stride + hd);
        return (src, stride);
    }
    rows_into(src, stride, count, hd, 1.0, out);
    (&out[..], hd.next_multiple_of(NR))
}

/// `[hd][np]` (`np` = `count` rounded up to [`NR`], zero padding), the transpose of the
/// rows `src[i·stride..][..hd]`, in `out` from a cache line's start (the products load
/// it as panels; see [`panel::aligned_front`]) and returned: square blocks in registers
/// where the ISA has them, the rest one by one.
fn transposed_into<'o>(
    src: &[f32],
    stride: usize,
    count: usize,
    hd: usize,
    out: &'o mut Vec<f32>,
) -> &'o [f32] {
    let np = count.next_multiple_of(NR);
    let out = panel::aligned_front(out, hd * np);
    if count == 0 {
        return out;
    }
    assert!(src.len() >= (count - 1) * stride + hd);
    let isa = isa();
    let side = panel::transpose_side(isa);
    let (d_whole, i_whole) = match side {
        0 => (0, 0),
        s => (hd / s * s, count / s * s),
    };
    #[cfg(target_arch = "x86_64")]
    for d0 in (0..d_whole).step_by(side.max(1)) {
        for i0 in (0..i_whole).step_by(side.max(1)) {
            // SAFETY: rows i0..i0 + side ≤ count of the source hold columns
            // d0..d0 + side ≤ hd (bound asserted above); rows d0..d0 + side ≤ hd of out
            // hold columns i0..i0 + side ≤ count ≤ np. The ISA was detected.
            unsafe {
                panel::transpose_block(
                    isa,
                    src.as_ptr().add(i0 * stride + d0),
                    stride,
                    out.as_mut_ptr().add(d0 * np + i0),
                    np,
                )
            }
        }
    }
    for (d, o) in out.chunks_exact_mut(np).enumerate() {
        let from = if d < d_whole { i_whole } else { 0 };
        for (i, o) in o[..count].iter_mut().enumerate().skip(from) {
            *o = src[i * stride + d];
        }
        o[count..].fill(0.0);
    }
    out
}

/// `out[i][j] = Σ_d a[i][d] · bt[d][j]` (rows of `out` `n` apart) for the `t` rows of
/// `a` (`lda` apart, `hd` long) and, for each block of rows, the panels of `bt`
/// (`[hd][ldb]`, `ldb` ≥ `n` a multiple of [`NR`]) that the span lets the block's last
/// row see. Entries a row does not see may be written (the rest of a panel) or not.
fn lower_products(
    a: &[f32],
    lda: usize,
    hd: usize,
    bt: &[f32],
    ldb: usize,
    (t, n, span): (usize, usize, Span),
    out: &mut [f32],
) {
    let isa = isa();
    let mb = panel::block_rows(isa);
    // AVX2's kernel takes a panel as two halves: a block's last panel is cut to the
    // first when the block sees no further (the causal triangle's edge).
    let half = if isa == Isa::Avx2 { NR / 2 } else { 0 };
    for i0 in (0..t).step_by(mb) {
        let m = mb.min(t - i0);
        let rows: [&[f32]; 8] = std::array::from_fn(|r| &a[(i0 + r.min(m - 1)) * lda..][..hd]);
        let seen = span.seen(i0 + m - 1).min(n);
        for j0 in (0..seen).step_by(NR) {
            let valid = if seen - j0 <= half {
                seen - j0
            } else {
                NR.min(n - j0)
            };
            let at = i0 * n + j0;
            assert!(at + (m - 1) * n + valid <= out.len());
            // SAFETY: rows i0..i0 + m of out, columns j0..j0 + valid, lie inside it
            // (asserted), which this call holds exclusively.
            unsafe {
                let dst = panel::Dst::rows(out.as_mut_ptr().add(at), n, valid, false);
                panel::panel_rows_strided_into(isa, &rows[..m], &bt[j0..], hd, ldb, dst);
            }
        }
    }
}

/// `out[i][..hd] = Σ_p w[i][p] · b[p][..hd]` for each of the `t` rows of `w` (`n`
/// long, zero past what the row sees), `b` rows `ldb` apart, read [`NR`] columns at a
/// time (zero padded past `hd` unless `hd` is whole panels; see [`rows_view`]), into
/// the `t` rows `out` (see [`HeadOut`]), written by the kernel in place. A block of rows
/// sums only over the keys its last row sees.
///
/// # Safety
/// `out` must be valid for `t` rows of `hd` values that no other thread touches
/// meanwhile.
unsafe fn prefix_sums(
    w: &[f32],
    (t, n, span): (usize, usize, Span),
    b: &[f32],
    ldb: usize,
    hd: usize,
    out: HeadOut,
) {
    let isa = isa();
    let mb = panel::block_rows(isa);
    for i0 in (0..t).step_by(mb) {
        let m = mb.min(t - i0);
        let k = span.seen(i0 + m - 1).min(n);
        let rows: [&[f32]; 8] = std::array::from_fn(|r| &w[(i0 + r.min(m - 1)) * n..][..k]);
        for c0 in (0..hd).step_by(NR) {
            // SAFETY: rows i0..i0 + m < t of out, columns c0..c0 + cols ≤ hd (the
            // caller's contract).
            unsafe {
                let dst = panel::Dst::rows(
                    out.ptr.add(i0 * out.ld + c0),
                    out.ld,
                    NR.min(hd - c0),
                    out.add,
                );
                panel::panel_rows_strided_into(isa, &rows[..m], &b[c0..], k, ldb, dst);
            }
        }
    }
}

/// `out[p][..hd] = Σ_i w[i][p] · b[i][..hd]` for each column `p < n` of `w` `[t][n]`
/// (that is, `wᵀ·b`), `b` rows `ldb` apart (as in [`prefix_sums`]), into the `n` rows
/// `out` (with `out.add`, added to them). A block of columns sums only over the rows
/// from the first that sees its first key.
///
/// # Safety
/// `out` must be valid for `n` rows of `hd` values that no other thread touches
/// meanwhile.
unsafe fn suffix_sums(
    w: &[f32],
    (t, n, span): (usize, usize, Span),
    b: &[f32],
    ldb: usize,
    hd: usize,
    out: HeadOut,
) {
    let isa = isa();
    let mb = panel::block_rows(isa).min(6);
    for p0 in (0..n).step_by(mb) {
        let m = mb.min(n - p0);
        let i0 = span.first_query(p0).min(t);
        for c0 in (0..hd).step_by(NR) {
            let cols = NR.min(hd - c0);
            if i0 == t {
                // No query sees these keys: their sums are zero (nothing to add).
                if !out.add {
                    for r in p0..p0 + m {
                        // SAFETY: row r < n of out (the caller's contract).
                        unsafe { out.row(r, hd)[c0..c0 + cols].fill(0.0) };
                    }
                }
                continue;
            }
            // SAFETY: rows p0..p0 + m < n of out, columns c0..c0 + cols ≤ hd (the
            // caller's contract). Steps i = i0..t: w[i][p0..p0 + m] are adjacent.
            unsafe {
                let dst = panel::Dst::rows(out.ptr.add(p0 * out.ld + c0), out.ld, cols, out.add);
                panel::panel_rows_t_into(
                    isa,
                    &w[i0 * n + p0..],
                    n,
                    m,
                    &b[i0 * ldb + c0..],
                    t - i0,
                    ldb,
                    dst,
                );
            }
        }
    }
}

/// One row of the scores' gradient: with `dp` = dY·Vᵀ's row, the weights `p` and the
/// weights after dropout `pd`, `ds = pd ⊙ dp − p · (pd · dp)`, written over `dp`;
/// `dbias` (when not empty) gets it before the scaling, `dp` after.
#[inline(always)]
fn score_grad_row_body(dp: &mut [f32], p: &[f32], pd: &[f32], dbias: &mut [f32], scale: f32) {
    let mut acc = [0f32; 16];
    let (ca, cb) = (pd.chunks_exact(16), dp.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut dot = super::vmath::hsum16(acc);
    for (x, y) in ra.iter().zip(rb) {
        dot += x * y;
    }
    for ((d, &pij), &pdij) in dp.iter_mut().zip(p).zip(pd) {
        *d = pdij * *d - pij * dot;
    }
    if !dbias.is_empty() {
        dbias.copy_from_slice(dp);
    }
    dp.iter_mut().for_each(|d| *d *= scale);
}
super::vmath::dispatch!(
    /// See [`score_grad_row_body`].
    score_grad_row = score_grad_row_body, score_grad_row512, score_grad_row256,
    (dp: &mut [f32], p: &[f32], pd: &[f32], dbias: &mut [f32], scale: f32) -> ()
);

/// [`score_grad_row`] for four rows `n` long (of which `live[r]` are seen, the rest
/// set to zero) without a bias gradient, in AVX2 registers: the four rows' dot
/// products, reductions and second passes in step (one row at a time waited on its
/// dot product's chain).
///
/// # Safety
/// AVX2 and FMA; `dp`, `p` and `pd` hold four rows of `n`, and every `live[r]` ≤ `n`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // r indexes the rows' registers and the rows
unsafe fn score_grad_rows4(
    dp: &mut [f32],
    p: &[f32],
    pd: &[f32],
    n: usize,
    live: [usize; 4],
    scale: f32,
) {
    use super::vmath::avx2::{hsum, lanes, store_lanes};
    use std::arch::x86_64::*;
    assert!(dp.len() >= 4 * n && p.len() >= 4 * n && pd.len() >= 4 * n);
    assert!(live.iter().all(|&l| l <= n));
    let (dpp, pp, pdp) = (dp.as_mut_ptr(), p.as_ptr(), pd.as_ptr());
    // Register c of row r of a matrix, zero past what the row sees.
    let ld = |m: *const f32, r: usize, c: usize| {
        let at = m.add(r * n + 8 * c);
        if live[r] >= 8 * c + 8 {
            _mm256_loadu_ps(at)
        } else {
            _mm256_maskload_ps(at, lanes(live[r].saturating_sub(8 * c)))
        }
    };
    let regs = live.iter().max().unwrap().div_ceil(8);
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in 0..regs {
        for r in 0..4 {
            acc[r] = _mm256_fmadd_ps(ld(pdp, r, c), ld(dpp, r, c), acc[r]);
        }
    }
    let dot = acc.map(|a| _mm256_set1_ps(hsum(a)));
    let sv = _mm256_set1_ps(scale);
    for r in 0..4 {
        for c in 0..regs {
            // (pd ⊙ dp − p · dot) · scale: zero past the row's live values.
            let ds = _mm256_fnmadd_ps(
                ld(pp, r, c),
                dot[r],
                _mm256_mul_ps(ld(pdp, r, c), ld(dpp, r, c)),
            );
            store_lanes(dpp.add(r * n + 8 * c), n - 8 * c, _mm256_mul_ps(ds, sv));
        }
        let done = (8 * regs).min(n);
        std::slice::from_raw_parts_mut(dpp.add(r * n + done), n - done).fill(0.0);
    }
}

/// Backward of [`attend_head`] in training, for `t` queries against `n` keys seen as
/// `span` says (laid out as there), whose weights `p` `[t, n]` the forward kept (before
/// dropout; zero where a query does not see a key). With `drop`, the weights after it
/// follow in `p` when the forward kept them (`[2, t, n]`), and are drawn again from the
/// same masks otherwise. From the output gradient `dy` (query `j`'s row at
/// `dy[j·dy_stride..][..hd]`), writes the gradients of the queries `dq` `[t, hd]`, keys
/// `dk` and values `dv` `[n, hd]`, and with a non-empty `dbias` `[t, n]` those of the
/// scaled scores (an additive bias's). With dropout mask M, pd = p ⊙ M: dV = pdᵀ·dY,
/// and with dP = dY·Vᵀ, dS = pd ⊙ dP − p · rowsum(pd ⊙ dP); dQ = scale·dS·K and dK =
/// scale·dSᵀ·Q. The four products are panel products, as the forward's two, over the
/// lower triangle when the head is causal. The gradients go to the rows `dq` (`t` of
/// them, overwritten) and `dk`, `dv` (`n` each, overwritten or, with their `add`, added
/// to: the query heads that share a key/value head sum their gradients there).
///
/// # Safety
/// Each output must be valid for its rows of `hd` values, which no other thread (and no
/// other of the three) touches meanwhile.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_head_backward(
    (q, q_stride): (&[f32], usize),
    (k, v, kv_stride): (&[f32], &[f32], usize),
    (dy, dy_stride): (&[f32], usize),
    (t, hd, scale): (usize, usize, f32),
    span: Span,
    p: &[f32],
    drop: Option<super::Dropout>,
    [dq, dk, dv]: [HeadOut; 3],
    dbias: &mut [f32],
) {
    let n = span.keys(t);
    assert!(p.len() >= t * n && !dq.add);
    assert!(dbias.is_empty() || dbias.len() >= t * n);
    let np = n.next_multiple_of(NR);
    SCRATCH.with_borrow_mut(|s| {
        let pd: &[f32] = match drop {
            Some(_) if p.len() >= 2 * t * n => &p[t * n..2 * t * n],
            Some(d) => {
                s.pd.clear();
                s.pd.extend_from_slice(&p[..t * n]);
                for j in 0..t {
                    let row = &mut s.pd[j * n..j * n + span.seen(j)];
                    super::dropout::drop_row(row, d, (j * n) as u64);
                }
                &s.pd
            }
            None => &p[..t * n],
        };
        // dP = dY·Vᵀ (the triangle a causal head sees), then dS row by row.
        let (dyr, lddy) = rows_view(dy, dy_stride, t, hd, &mut s.g);
        let vt = transposed_into(v, kv_stride, n, hd, &mut s.b);
        s.s.resize(t * n, 0.0);
        lower_products(dyr, lddy, hd, vt, np, (t, n, span), &mut s.s);
        let ds = &mut s.s;
        let mut first = 0;
        #[cfg(target_arch = "x86_64")]
        if dbias.is_empty() && isa() == Isa::Avx2 {
            first = t / 4 * 4;
            for j0 in (0..first).step_by(4) {
                let live: [usize; 4] = std::array::from_fn(|r| span.seen(j0 + r).min(n));
                let rows = j0 * n..(j0 + 4) * n;
                // SAFETY: AVX2 and FMA were detected; four rows of n in each.
                unsafe {
                    score_grad_rows4(
                        &mut ds[rows.clone()],
                        &p[rows.clone()],
                        &pd[rows],
                        n,
                        live,
                        scale,
                    )
                };
            }
        }
        for j in first..t {
            let (r, live) = (j * n..(j + 1) * n, span.seen(j).min(n));
            let dbias = if dbias.is_empty() {
                &mut []
            } else {
                dbias[r.clone()][live..].fill(0.0);
                &mut dbias[j * n..j * n + live]
            };
            let (row, pr, pdr) = (&mut ds[r.clone()], &p[r.clone()], &pd[r]);
            score_grad_row(&mut row[..live], &pr[..live], &pdr[..live], dbias, scale);
            row[live..].fill(0.0);
        }
        let ds = &s.s;
        // dQ = dS·K; dK = dSᵀ·Q and dV = pdᵀ·dY (by columns of dS and pd).
        let (kr, ldk) = rows_view(k, kv_stride, n, hd, &mut s.c);
        let (qr, ldq) = rows_view(q, q_stride, t, hd, &mut s.a);
        // SAFETY: the caller's contract on the three outputs.
        unsafe {
            prefix_sums(ds, (t, n, span), kr, ldk, hd, dq);
            suffix_sums(ds, (t, n, span), qr, ldq, hd, dk);
            suffix_sums(pd, (t, n, span), dyr, lddy, hd, dv);
        }
    })
}

/// One place the heads of an attention pass write: rows `r0..r1` (of some row stride)
/// at columns `col..col + hd`.
pub(crate) type Cell = (usize, usize, usize);

/// Whether no two cells overlap (cells of one width `hd`).
pub(crate) fn disjoint(mut cells: Vec<Cell>, hd: usize) -> bool {
    cells.sort_unstable();
    cells.windows(2).all(|w| {
        let ((c0, _, e0), (c1, s1, _)) = (w[0], w[1]);
        c1 >= c0 + hd || (c1 == c0 && s1 >= e0)
    })
}

/// `out[p] = scale · q·k_p` for `p < count`.
fn scores(
    q: &[f32],
    k: &[f32],
    stride: usize,
    count: usize,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && isa() != Isa::Portable {
        // SAFETY: AVX2 and FMA are present (every non-portable level has them); every
        // row p < count lies inside k.
        unsafe { avx::scores(q, k, stride, count, hd, scale, out) };
        return;
    }
    for (p, o) in out[..count].iter_mut().enumerate() {
        let kp = &k[p * stride..][..hd];
        *o = q.iter().zip(kp).map(|(a, b)| a * b).sum::<f32>() * scale;
    }
}

/// `out = Σ_p w[p] · v_p`.
fn weighted_sum(w: &[f32], v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && isa() != Isa::Portable {
        // SAFETY: AVX2 and FMA are present (as above); every row p < w.len() lies
        // inside v.
        unsafe { avx::weighted_sum(w, v, stride, hd, out) };
        return;
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for (p, &wp) in w.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[p * stride..][..hd]) {
            *o += wp * x;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX2 and FMA (detected at run time by the caller); `q` must hold `hd`
    /// values (rounded up to 8), and `k` position `p < count` at `p·stride` must hold as many.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores(
        q: &[f32],
        k: &[f32],
        stride: usize,
        count: usize,
        hd: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let (pq, pk) = (q.as_ptr(), k.as_ptr());
        for (p, o) in out[..count].iter_mut().enumerate() {
            let kp = pk.add(p * stride);
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            let mut d = 0;
            while d + 16 <= hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(d)), _mm256_loadu_ps(kp.add(d)), a0);
                a1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pq.add(d + 8)),
                    _mm256_loadu_ps(kp.add(d + 8)),
                    a1,
                );
                d += 16;
            }
            if d < hd {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(d)), _mm256_loadu_ps(kp.add(d)), a0);
            }
            let s = _mm256_add_ps(a0, a1);
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            *o = _mm_cvtss_f32(s) * scale;
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA (detected at run time by the caller); `out` must hold
    /// `hd` values and `v` position `p < w.len()` at `p·stride` must hold `hd` values (rounded
    /// up to 8).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn weighted_sum(w: &[f32], v: &[f32], stride: usize, hd: usize, out: &mut [f32]) {
        let pv = v.as_ptr();
        let po = out.as_mut_ptr();
        // Sixteen lanes of the output at a time stay in registers over all positions.
        let mut d = 0;
        while d < hd {
            let wide = hd - d >= 16;
            let mut a0 = _mm256_setzero_ps();
            let mut a1 = _mm256_setzero_ps();
            for (p, &wp) in w.iter().enumerate() {
                let s = _mm256_set1_ps(wp);
                let row = pv.add(p * stride + d);
                a0 = _mm256_fmadd_ps(s, _mm256_loadu_ps(row), a0);
                if wide {
                    a1 = _mm256_fmadd_ps(s, _mm256_loadu_ps(row.add(8)), a1);
                }
            }
            _mm256_storeu_ps(po.add(d), a0);
            if wide {
                _mm256_storeu_ps(po.add(d + 8), a1);
                d += 16;
            } else {
                d += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    /// The heads' three products (the lower triangle of scores, weighted sums of rows,
    /// and the transposed weighted sums) against plain loops, for head widths below, at
    /// and above one panel, key counts that are not whole panels, and causal spans with
    /// and without a past (a prompt after a cache) as well as bidirectional ones.
    #[test]
    fn head_products_match_plain_loops() {
        for (t, hd, past) in [
            (7usize, 12usize, 0usize),
            (33, 32, 0),
            (64, 48, 0),
            (40, 64, 0),
            (9, 40, 30),
            (20, 8, 45),
        ] {
            for causal in [true, false] {
                let n = past + t;
                let span = if causal {
                    Span::Causal { past }
                } else {
                    Span::All { keys: n }
                };
                let sees = |i: usize, j: usize| !causal || j <= past + i;
                let (hdp, np) = (hd.next_multiple_of(NR), n.next_multiple_of(NR));
                let (a_src, b_src) = (data(t * hd, 1), data(n * hd, 2));
                let mut a = Vec::new();
                rows_into(&a_src, hd, t, hd, 1.0, &mut a);
                let mut b = Vec::new();
                rows_into(&b_src, hd, n, hd, 1.0, &mut b);
                let mut bt_buf = Vec::new();
                let bt = transposed_into(&b_src, hd, n, hd, &mut bt_buf);
                assert_eq!((a.len(), b.len(), bt.len()), (t * hdp, n * hdp, hd * np));
                assert_eq!(bt.as_ptr() as usize % 64, 0, "the transpose starts a line");
                // Scores: every entry a row sees.
                let mut s = vec![f32::NAN; t * n];
                lower_products(&a, hdp, hd, bt, np, (t, n, span), &mut s);
                for i in 0..t {
                    for j in (0..n).filter(|&j| sees(i, j)) {
                        let w: f32 = (0..hd).map(|d| a_src[i * hd + d] * b_src[j * hd + d]).sum();
                        assert!(
                            (s[i * n + j] - w).abs() < 1e-4,
                            "t {t} hd {hd} past {past}: s[{i},{j}]"
                        );
                    }
                }
                // Weights zero where a row does not see a key, against b's rows.
                let mut w = data(t * n, 3);
                for i in 0..t {
                    for j in 0..n {
                        if !sees(i, j) {
                            w[i * n + j] = 0.0;
                        }
                    }
                }
                let mut got = vec![f32::NAN; t * hd];
                unsafe { prefix_sums(&w, (t, n, span), &b, hdp, hd, HeadOut::of(&mut got, t, hd)) };
                let mut got_t = vec![f32::NAN; n * hd];
                let mut a_rows = Vec::new();
                rows_into(&a_src, hd, t, hd, 1.0, &mut a_rows);
                unsafe {
                    suffix_sums(
                        &w,
                        (t, n, span),
                        &a_rows,
                        hdp,
                        hd,
                        HeadOut::of(&mut got_t, n, hd),
                    )
                };
                for i in 0..t {
                    for d in 0..hd {
                        let want: f32 = (0..n).map(|j| w[i * n + j] * b_src[j * hd + d]).sum();
                        assert!(
                            (got[i * hd + d] - want).abs() < 1e-4,
                            "t {t} hd {hd} past {past}: [{i},{d}]"
                        );
                    }
                }
                for j in 0..n {
                    for d in 0..hd {
                        let want: f32 = (0..t).map(|i| w[i * n + j] * a_src[i * hd + d]).sum();
                        assert!(
                            (got_t[j * hd + d] - want).abs() < 1e-4,
                            "t {t} hd {hd} past {past}: ᵀ[{j},{d}]"
                        );
                    }
                }
                // Into rows of a wider matrix (a head's columns 3..3 + hd of rows hd + 7
                // apart), overwritten and added to: the same sums there, the columns
                // around them untouched.
                let ld = hd + 7;
                for add in [false, true] {
                    let (before, before_t) = (data(t * ld, 11), data(n * ld, 12));
                    let (mut wide, mut wide_t) = (before.clone(), before_t.clone());
                    // SAFETY: t (n) rows of ld values, the head's columns inside them.
                    unsafe {
                        let out = HeadOut {
                            ptr: wide.as_mut_ptr().add(3),
                            ld,
                            add,
                        };
                        prefix_sums(&w, (t, n, span), &b, hdp, hd, out);
                        let out = HeadOut {
                            ptr: wide_t.as_mut_ptr().add(3),
                            ld,
                            add,
                        };
                        suffix_sums(&w, (t, n, span), &a_rows, hdp, hd, out);
                    }
                    for (rows, (wide, before), plain) in [
                        (t, (&wide, &before), &got),
                        (n, (&wide_t, &before_t), &got_t),
                    ] {
                        for r in 0..rows {
                            for col in 0..ld {
                                let (at, was) = (wide[r * ld + col], before[r * ld + col]);
                                let want = match col.checked_sub(3).filter(|&d| d < hd) {
                                    Some(d) if add => was + plain[r * hd + d],
                                    Some(d) => plain[r * hd + d],
                                    None => was,
                                };
                                assert!(
                                    (at - want).abs() < 1e-5,
                                    "t {t} hd {hd} add {add}: [{r},{col}] {at} vs {want}"
                                );
                            }
                        }
                    }
                }
                // Whole-panel heads are read in place, as columns hd..2·hd of rows
                // 3·hd wide (a fused projection's layout): the same sums, exactly.
                if hd % NR == 0 {
                    let wide = |src: &[f32], count: usize| -> Vec<f32> {
                        let mut v = data(count * 3 * hd, 9);
                        for i in 0..count {
                            v[i * 3 * hd + hd..i * 3 * hd + 2 * hd]
                                .copy_from_slice(&src[i * hd..(i + 1) * hd]);
                        }
                        v
                    };
                    let (aw, bw) = (wide(&a_src, t), wide(&b_src, n));
                    let (mut sa, mut sb) = (Vec::new(), Vec::new());
                    let (av, lda) = rows_view(&aw[hd..], 3 * hd, t, hd, &mut sa);
                    let (bv, ldb) = rows_view(&bw[hd..], 3 * hd, n, hd, &mut sb);
                    assert!(std::ptr::eq(av.as_ptr(), aw[hd..].as_ptr()));
                    assert!(std::ptr::eq(bv.as_ptr(), bw[hd..].as_ptr()));
                    assert!(lda == 3 * hd && ldb == lda);
                    let mut s2 = vec![f32::NAN; t * n];
                    lower_products(av, lda, hd, bt, np, (t, n, span), &mut s2);
                    let mut got2 = vec![f32::NAN; t * hd];
                    unsafe {
                        prefix_sums(&w, (t, n, span), bv, ldb, hd, HeadOut::of(&mut got2, t, hd))
                    };
                    let mut got2_t = vec![f32::NAN; n * hd];
                    unsafe {
                        suffix_sums(
                            &w,
                            (t, n, span),
                            av,
                            lda,
                            hd,
                            HeadOut::of(&mut got2_t, n, hd),
                        )
                    };
                    for i in 0..t {
                        for j in (0..n).filter(|&j| sees(i, j)) {
                            assert_eq!(s2[i * n + j], s[i * n + j], "in place s[{i},{j}]");
                        }
                    }
                    assert_eq!(got2, got, "in place, t {t} hd {hd}");
                    assert_eq!(got2_t, got_t, "in place ᵀ, t {t} hd {hd}");
                }
            }
        }
    }

    /// A head's transposed copy (square blocks in registers, the rest one by one)
    /// against the plain gather, at widths and lengths with and without whole blocks,
    /// from rows of a wider matrix.
    #[test]
    fn head_transposes_match_the_plain_gather() {
        for (count, hd, stride) in [
            (64usize, 32usize, 128usize),
            (40, 48, 96),
            (7, 12, 24),
            (33, 64, 64),
        ] {
            let src = data(count * stride + 3, 4);
            let mut buf = vec![f32::NAN; 5];
            let out = transposed_into(&src[3..], stride, count, hd, &mut buf);
            let np = count.next_multiple_of(NR);
            assert_eq!(out.len(), hd * np);
            for d in 0..hd {
                for i in 0..np {
                    let want = if i < count {
                        src[3 + i * stride + d]
                    } else {
                        0.0
                    };
                    assert_eq!(out[d * np + i], want, "count {count} hd {hd}: [{d},{i}]");
                }
            }
        }
    }

    /// [`attend_head_backward`] against the gradients written out as plain loops (in
    /// f64), for causal and bidirectional heads, with and without dropout, strided
    /// inputs, head widths below and above one panel and key counts that are not whole
    /// panels; with a bias gradient asked for, and the same gradients without one.
    #[test]
    fn head_backward_matches_plain_loops() {
        // (queries, keys, head width, causal, dropout, the weights after dropout kept)
        for (t, n, hd, causal, p_drop, kept) in [
            (5usize, 5usize, 8usize, true, 0.0f32, true),
            (6, 9, 12, false, 0.2, true),
            (33, 33, 32, true, 0.1, true),
            (33, 33, 32, true, 0.1, false),
            (40, 52, 24, true, 0.25, false),
            (1, 40, 40, false, 0.0, true),
            (20, 70, 16, false, 0.3, false),
        ] {
            let (qs, ks) = (hd + 3, 2 * hd + 5);
            let q = data(t * qs, 1);
            let kv = data(n * ks, 2);
            let dy_s = hd + 1;
            let dy = data(t * dy_s, 3);
            let (k, v) = (&kv[..], &kv[hd + 2..]);
            let scale = 0.37;
            let drop = super::super::Dropout::new(p_drop, 9);
            // The forward's kept weights, through the forward itself.
            let mut out = vec![0f32; t * hd];
            let mut p = vec![f32::NAN; t * n * if p_drop > 0.0 && kept { 2 } else { 1 }];
            let span = if causal {
                Span::Causal { past: n - t }
            } else {
                Span::All { keys: n }
            };
            attend_head(
                &q,
                qs,
                k,
                v,
                ks,
                span,
                t,
                hd,
                scale,
                None,
                &mut out,
                Some(&mut p),
                drop,
            );
            let seen = |j: usize| if causal { n - t + j + 1 } else { n };
            let mask = |j: usize, i: usize| drop.map_or(1.0, |d| d.factor((j * n + i) as u64));
            // With the bias gradient asked for, and without it (the decoders' training,
            // where the score gradient's rows take another path): the same gradients.
            let backward = |db: &mut [f32]| {
                let (mut dq, mut dk, mut dv) = (
                    vec![f32::NAN; t * hd],
                    vec![f32::NAN; n * hd],
                    vec![f32::NAN; n * hd],
                );
                let outs = [
                    HeadOut::of(&mut dq, t, hd),
                    HeadOut::of(&mut dk, n, hd),
                    HeadOut::of(&mut dv, n, hd),
                ];
                // SAFETY: three vectors of their rows (checked by HeadOut::of).
                unsafe {
                    attend_head_backward(
                        (&q, qs),
                        (k, v, ks),
                        (&dy, dy_s),
                        (t, hd, scale),
                        span,
                        &p,
                        drop,
                        outs,
                        db,
                    )
                };
                (dq, dk, dv)
            };
            let mut db = vec![f32::NAN; t * n];
            let (dq, dk, dv) = backward(&mut db);
            let (dq2, dk2, dv2) = backward(&mut []);
            for (what, a, b) in [("dq", &dq, &dq2), ("dk", &dk, &dk2), ("dv", &dv, &dv2)] {
                for (i, (&x, &y)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                        "t {t} n {n}: {what}[{i}] {x} vs {y} without dbias"
                    );
                }
            }
            let at = |x: &[f32], r: usize, s: usize, d: usize| x[r * s + d] as f64;
            let mut want_q = vec![0f64; t * hd];
            let mut want_k = vec![0f64; n * hd];
            let mut want_v = vec![0f64; n * hd];
            for j in 0..t {
                // dP_ji = dy_j · v_i; dS_ji = m·p·dP − p·Σ_i' m·p·dP.
                let dp: Vec<f64> = (0..n)
                    .map(|i| (0..hd).map(|d| at(&dy, j, dy_s, d) * at(v, i, ks, d)).sum())
                    .collect();
                let pji = |i: usize| p[j * n + i] as f64;
                let dot: f64 = (0..n).map(|i| pji(i) * mask(j, i) as f64 * dp[i]).sum();
                for i in 0..n {
                    let ds = pji(i) * (mask(j, i) as f64 * dp[i] - dot);
                    let got = db[j * n + i] as f64;
                    assert!(
                        (got - ds).abs() < 1e-4,
                        "t {t} n {n}: dbias[{j},{i}] {got} vs {ds}"
                    );
                    if i >= seen(j) {
                        assert_eq!(p[j * n + i], 0.0);
                    }
                    for d in 0..hd {
                        want_q[j * hd + d] += scale as f64 * ds * at(k, i, ks, d);
                        want_k[i * hd + d] += scale as f64 * ds * at(&q, j, qs, d);
                        want_v[i * hd + d] += pji(i) * mask(j, i) as f64 * at(&dy, j, dy_s, d);
                    }
                }
            }
            for (what, got, want) in [
                ("dq", &dq, &want_q),
                ("dk", &dk, &want_k),
                ("dv", &dv, &want_v),
            ] {
                for (i, (&g, &w)) in got.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()),
                        "t {t} n {n} hd {hd}: {what}[{i}] {g} vs {w}"
                    );
                }
            }
        }
    }
}
