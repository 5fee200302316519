//! Causal attention of one head against its key/value cache, for the inference engine.
//!
//! A few queries (decoding): scores, softmax and the weighted sum of values row by row,
//! with the dot products and sums in AVX2 registers. Many queries (a prompt): the scores
//! and the weighted sum are two panel products (see [`super::panel`]).

use super::panel::{matmul_serial, NR};
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
/// `[t, hd]`; with `keep`, also each query's weights over the `n` keys. With `drop`
/// (training), the values are summed with the weights after dropout (weight (j, p) is
/// mask element `j·n + p`); `keep` gets them before. With `bias` (`[t, n]`, T5's
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
    keep: Option<&mut Vec<Vec<f32>>>,
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
        let mut keys = vec![0f32; n.div_ceil(NR) * hd * NR];
        for p in 0..n {
            let dst = &mut keys[(p / NR) * hd * NR..];
            for (d, &v) in k[p * kv_stride..][..hd].iter().enumerate() {
                dst[d * NR + p % NR] = v;
            }
        }
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
    if let Some(keep) = keep {
        keep.extend(w.chunks(n).map(|r| r.to_vec()));
    }
    if let Some(d) = drop {
        super::dropout::drop_row(&mut w, d, 0);
    }
    if t >= GEMM_MIN_QUERIES {
        // O = P V, with Vᵀ ([hd, n]) as the panel matrix: panel rows are value
        // dimensions, so each panel step is a slice of one value row.
        let mut vals = vec![0f32; hd.div_ceil(NR) * n * NR];
        for p in 0..n {
            let row = &v[p * kv_stride..][..hd];
            for (b, chunk) in row.chunks(NR).enumerate() {
                vals[b * n * NR + p * NR..][..chunk.len()].copy_from_slice(chunk);
            }
        }
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
