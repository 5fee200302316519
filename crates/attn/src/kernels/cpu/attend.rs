//! Causal attention of one head against its key/value cache, for the inference engine.
//!
//! A few queries (decoding): scores, softmax and the weighted sum of values row by row,
//! with the dot products and sums in AVX2 registers. Many queries (a prompt): the scores
//! and the weighted sum are two panel products (see [`super::panel`]).

use super::panel::{matmul_serial, matmul_t_serial, SyncPtr, NR};
use super::{isa, Isa};

/// Queries at or above which the products go through the blocked GEMM.
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

/// Attention of `t` queries of one head. Query `j` is `q[j·q_stride..][..hd]`; key and
/// value `p` are `k[p·kv_stride..][..hd]` and `v[p·kv_stride..][..hd]`; `span` says
/// which keys each query sees, `n` of them in all (`past + t`, or `keys`). Writes `out`
/// `[t, hd]`; with `keep`, also each query's weights over the `n` keys (`[t, n]`). With
/// `drop` (training), the values are summed with the weights after dropout (weight
/// (j, p) is mask element `j·n + p`), and `keep` gets those too, after the weights
/// before it (`[t, n]` more: what the backward reads). With `bias` (`[t, n]`, T5's
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
    mut keep: Option<&mut Vec<f32>>,
    drop: Option<super::Dropout>,
) {
    let n = match span {
        Span::Causal { past } | Span::Window { past, .. } => past + t,
        Span::All { keys } => keys,
    };
    let seen = |j: usize| match span {
        Span::Causal { past } | Span::Window { past, .. } => past + j + 1,
        Span::All { keys } => keys,
    };
    let mut w = if t >= GEMM_MIN_QUERIES {
        // S = scale · Q Kᵀ, with the keys as the panel matrix ([n, hd], one key a row).
        let mut qs = Vec::with_capacity(t * hd);
        for j in 0..t {
            qs.extend(q[j * q_stride..][..hd].iter().map(|v| v * scale));
        }
        let keys = row_panels(k, kv_stride, n, hd);
        let mut s = vec![0f32; t * n];
        matmul_serial(&qs, t, n, hd, &keys, &mut s);
        s
    } else {
        let mut s = vec![0f32; t * n];
        for j in 0..t {
            let qj = &q[j * q_stride..][..hd];
            scores(qj, k, kv_stride, seen(j), hd, scale, &mut s[j * n..]);
        }
        s
    };
    if let Some(b) = bias {
        for j in 0..t {
            let row = &mut w[j * n..j * n + seen(j)];
            row.iter_mut().zip(&b[j * n..]).for_each(|(s, b)| *s += b);
        }
    }
    if let Span::Window { window, .. } = span {
        for j in 0..t {
            let hidden = seen(j).saturating_sub(window);
            w[j * n..j * n + hidden].fill(f32::NEG_INFINITY);
        }
    }
    for j in 0..t {
        super::vmath::causal_softmax(&mut w[j * n..(j + 1) * n], seen(j));
    }
    if let Some(keep) = keep.as_deref_mut() {
        keep.extend_from_slice(&w);
    }
    if let Some(d) = drop {
        super::dropout::drop_row(&mut w, d, 0);
        if let Some(keep) = keep {
            keep.extend_from_slice(&w);
        }
    }
    if t >= GEMM_MIN_QUERIES {
        // O = P V, with Vᵀ ([hd, n]) as the panel matrix: panel rows are value
        // dimensions, so each panel step is a slice of one value row.
        let vals = col_panels(v, kv_stride, n, hd);
        matmul_serial(&w, t, hd, n, &vals, out);
    } else {
        for j in 0..t {
            weighted_sum(
                &w[j * n..j * n + seen(j)],
                v,
                kv_stride,
                hd,
                &mut out[j * hd..(j + 1) * hd],
            );
        }
    }
}

/// Panels (see [`super::panel`]) of the `[n, hd]` matrix whose row `p` is
/// `src[p·stride..][..hd]`: a product against them sums over a head's dimensions (the
/// keys in `Q·Kᵀ`).
fn row_panels(src: &[f32], stride: usize, n: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; n.div_ceil(NR) * hd * NR];
    for p in 0..n {
        let dst = &mut out[(p / NR) * hd * NR..];
        for (d, &v) in src[p * stride..][..hd].iter().enumerate() {
            dst[d * NR + p % NR] = v;
        }
    }
    out
}

/// Panels of the transpose `[hd, n]` of those rows: a product against them sums over
/// positions (the values in `P·V`). Panel rows are a head's dimensions, so each panel
/// step is a slice of one source row.
fn col_panels(src: &[f32], stride: usize, n: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; hd.div_ceil(NR) * n * NR];
    for p in 0..n {
        let row = &src[p * stride..][..hd];
        for (b, chunk) in row.chunks(NR).enumerate() {
            out[b * n * NR + p * NR..][..chunk.len()].copy_from_slice(chunk);
        }
    }
    out
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

/// Backward of [`attend_head`] in training, for `t` queries against `n` keys (laid out
/// as there) whose weights `p` `[t, n]` (before dropout; zero where a query does not
/// see a key; with `drop`, followed by the weights after it) the forward kept: from the
/// output gradient `dy` (query `j`'s row at `dy[j·dy_stride..][..hd]`), writes the
/// gradients of the queries `dq` `[t, hd]`, keys `dk` and values `dv` `[n, hd]`, and
/// with a non-empty `dbias` `[t, n]` those of the scaled scores (an additive bias's). With dropout mask M, pd = p ⊙ M: dV = pdᵀ·dY,
/// and with dP = dY·Vᵀ, dS = pd ⊙ dP − p · rowsum(pd ⊙ dP); dQ = scale·dS·K and dK =
/// scale·dSᵀ·Q. The four products are panel products, as the forward's two.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend_head_backward(
    (q, q_stride): (&[f32], usize),
    (k, v, kv_stride): (&[f32], &[f32], usize),
    (dy, dy_stride): (&[f32], usize),
    (t, n, hd, scale): (usize, usize, usize, f32),
    p: &[f32],
    drop: Option<super::Dropout>,
    [dq, dk, dv, dbias]: [&mut [f32]; 4],
) {
    let pd = match drop {
        Some(_) => &p[t * n..2 * t * n],
        None => &p[..t * n],
    };
    let mut g = Vec::with_capacity(t * hd);
    for j in 0..t {
        g.extend_from_slice(&dy[j * dy_stride..][..hd]);
    }
    let mut ds = vec![0f32; t * n];
    matmul_serial(&g, t, n, hd, &row_panels(v, kv_stride, n, hd), &mut ds);
    for j in 0..t {
        let dbias = if dbias.is_empty() {
            &mut []
        } else {
            &mut dbias[j * n..(j + 1) * n]
        };
        let r = j * n..(j + 1) * n;
        score_grad_row(&mut ds[r.clone()], &p[r.clone()], &pd[r], dbias, scale);
    }
    matmul_serial(&ds, t, hd, n, &col_panels(k, kv_stride, n, hd), dq);
    // dK and dV read dS and pd by columns, in place (a transposed-input product).
    matmul_t_serial(&ds, n, n, hd, t, &col_panels(q, q_stride, t, hd), dk);
    matmul_t_serial(pd, n, n, hd, t, &col_panels(&g, hd, t, hd), dv);
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

/// Copies `rows` (`hd` wide, contiguous) to `dst` rows `r0..` of stride `stride` from
/// column `col`.
///
/// # Safety
/// `dst` must be valid for writes up to `(r0 + rows) · stride` (checked by the callers
/// against its length), and no other thread may touch those elements meanwhile.
pub(crate) unsafe fn put_rows(
    dst: SyncPtr,
    (r0, stride, col): (usize, usize, usize),
    rows: &[f32],
    hd: usize,
) {
    for (r, row) in rows.chunks_exact(hd).enumerate() {
        std::ptr::copy_nonoverlapping(row.as_ptr(), dst.get().add((r0 + r) * stride + col), hd);
    }
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
    if hd % 8 == 0 && isa() != Isa::Portable {
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
    if hd % 8 == 0 && isa() != Isa::Portable {
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

    /// [`attend_head_backward`] against the gradients written out as plain loops (in
    /// f64), for causal and bidirectional heads, with and without dropout, strided
    /// inputs, head widths below and above one panel and key counts that are not whole
    /// panels; with a bias gradient asked for.
    #[test]
    fn head_backward_matches_plain_loops() {
        for (t, n, hd, causal, p_drop) in [
            (5usize, 5usize, 8usize, true, 0.0f32),
            (6, 9, 12, false, 0.2),
            (33, 33, 32, true, 0.1),
            (1, 40, 40, false, 0.0),
            (20, 70, 16, false, 0.3),
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
            let mut p = Vec::new();
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
            let (mut dq, mut dk, mut dv, mut db) = (
                vec![f32::NAN; t * hd],
                vec![f32::NAN; n * hd],
                vec![f32::NAN; n * hd],
                vec![f32::NAN; t * n],
            );
            attend_head_backward(
                (&q, qs),
                (k, v, ks),
                (&dy, dy_s),
                (t, n, hd, scale),
                &p,
                drop,
                [&mut dq, &mut dk, &mut dv, &mut db],
            );
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
