//! LayerNorm (with a bias) and RMSNorm (without) over rows, forward with saved
//! statistics and backward; the AVX-512 backward is written with intrinsics.

use rayon::prelude::*;

use super::gemm::add_row;
use super::rows_per_task;
use super::vmath::{self, dispatch};

// ---------------------------------------------------------------- layer norm

/// One row's layer norm (with a bias) or RMSNorm (without); returns its mean (0 for
/// RMSNorm) and 1/√(var + eps).
pub(super) fn norm_row(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
) -> (f32, f32) {
    match b {
        Some(b) => vmath::layer_norm(x, w, b, eps, out),
        None => (0.0, vmath::rms_norm(x, w, eps, out)),
    }
}

/// Layer norm (with a bias `b`) or RMSNorm (`b` is `None`) of each row of `x [m, n]`
/// into `out`, keeping each row's mean (0 for RMSNorm) and 1/√(var + eps) in
/// `stats [m, 2]` for the backward pass.
pub fn layer_norm(
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
    m: usize,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let n = w.len();
    let per = rows_per_task(m, n);
    out[..m * n]
        .par_chunks_mut(per * n)
        .zip(stats[..2 * m].par_chunks_mut(per * 2))
        .enumerate()
        .for_each(|(c, (o, s))| {
            for (i, (row, st)) in o.chunks_mut(n).zip(s.chunks_mut(2)).enumerate() {
                let r = (c * per + i) * n;
                let (mean, rstd) = norm_row(&x[r..r + n], w, b, eps, row);
                st[0] = mean;
                st[1] = rstd;
            }
        });
}

/// One row: `dx += rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂))`, `dw += g·x̂`, `db += g`.
#[inline(always)]
fn ln_bwd_body(
    g: &[f32],
    x: &[f32],
    mean: f32,
    rstd: f32,
    w: &[f32],
    dx: &mut [f32],
    dwb: &mut [f32],
) {
    const L: usize = 16;
    let n = g.len();
    // Every slice cut to n up front: otherwise the loops keep a bounds check per element
    // and stay scalar.
    let (x, w, dx) = (&x[..n], &w[..n], &mut dx[..n]);
    let (dw, db) = dwb[..2 * n].split_at_mut(n);
    let whole = n / L * L;
    let mut s1 = [0f32; L];
    let mut s2 = [0f32; L];
    // Sixteen lanes of fixed-size arrays: the compiler keeps them in vector registers.
    for c in (0..whole).step_by(L) {
        let g: &[f32; L] = g[c..c + L].try_into().unwrap();
        let x: &[f32; L] = x[c..c + L].try_into().unwrap();
        let w: &[f32; L] = w[c..c + L].try_into().unwrap();
        let dw: &mut [f32; L] = (&mut dw[c..c + L]).try_into().unwrap();
        let db: &mut [f32; L] = (&mut db[c..c + L]).try_into().unwrap();
        for j in 0..L {
            let xh = (x[j] - mean) * rstd;
            let gw = g[j] * w[j];
            s1[j] += gw;
            s2[j] += gw * xh;
            dw[j] += g[j] * xh;
            db[j] += g[j];
        }
    }
    let (mut t1, mut t2) = (0f32, 0f32);
    for i in whole..n {
        let xh = (x[i] - mean) * rstd;
        let gw = g[i] * w[i];
        t1 += gw;
        t2 += gw * xh;
        dw[i] += g[i] * xh;
        db[i] += g[i];
    }
    let m1 = (vmath::hsum16(s1) + t1) / n as f32;
    let m2 = (vmath::hsum16(s2) + t2) / n as f32;
    for c in (0..whole).step_by(L) {
        let g: &[f32; L] = g[c..c + L].try_into().unwrap();
        let x: &[f32; L] = x[c..c + L].try_into().unwrap();
        let w: &[f32; L] = w[c..c + L].try_into().unwrap();
        let dx: &mut [f32; L] = (&mut dx[c..c + L]).try_into().unwrap();
        for j in 0..L {
            let xh = (x[j] - mean) * rstd;
            dx[j] += rstd * (g[j] * w[j] - m1 - xh * m2);
        }
    }
    for i in whole..n {
        let xh = (x[i] - mean) * rstd;
        dx[i] += rstd * (g[i] * w[i] - m1 - xh * m2);
    }
}

/// [`ln_bwd_body`] in AVX-512 registers for rows of whole registers (others take the
/// plain loop): the compiled loop kept its two partial sums on the stack.
///
/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller). Lengths are
/// checked; rows that do not fit take the plain loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn ln_bwd512(
    g: &[f32],
    x: &[f32],
    mean: f32,
    rstd: f32,
    w: &[f32],
    dx: &mut [f32],
    dwb: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = g.len();
    if !n.is_multiple_of(16) || x.len() < n || w.len() < n || dx.len() < n || dwb.len() < 2 * n {
        return ln_bwd_body(g, x, mean, rstd, w, dx, dwb);
    }
    let (gp, xp, wp, dxp, dwp) = (
        g.as_ptr(),
        x.as_ptr(),
        w.as_ptr(),
        dx.as_mut_ptr(),
        dwb.as_mut_ptr(),
    );
    let dbp = dwp.add(n);
    let (mv, rv) = (_mm512_set1_ps(mean), _mm512_set1_ps(rstd));
    let (mut s1, mut s2) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    // SAFETY (all accesses): c + 16 ≤ n ≤ every length (checked above; dw and db are
    // dwb's two halves).
    for c in (0..n).step_by(16) {
        let gv = _mm512_loadu_ps(gp.add(c));
        let xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xp.add(c)), mv), rv);
        let gw = _mm512_mul_ps(gv, _mm512_loadu_ps(wp.add(c)));
        s1 = _mm512_add_ps(s1, gw);
        s2 = _mm512_fmadd_ps(gw, xh, s2);
        _mm512_storeu_ps(
            dwp.add(c),
            _mm512_fmadd_ps(gv, xh, _mm512_loadu_ps(dwp.add(c))),
        );
        _mm512_storeu_ps(dbp.add(c), _mm512_add_ps(gv, _mm512_loadu_ps(dbp.add(c))));
    }
    let m1 = _mm512_set1_ps(_mm512_reduce_add_ps(s1) / n as f32);
    let m2 = _mm512_set1_ps(_mm512_reduce_add_ps(s2) / n as f32);
    for c in (0..n).step_by(16) {
        let gv = _mm512_loadu_ps(gp.add(c));
        let xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xp.add(c)), mv), rv);
        let gw = _mm512_mul_ps(gv, _mm512_loadu_ps(wp.add(c)));
        // rstd·(g·w − m1 − x̂·m2)
        let t = _mm512_fnmadd_ps(xh, m2, _mm512_sub_ps(gw, m1));
        _mm512_storeu_ps(
            dxp.add(c),
            _mm512_fmadd_ps(rv, t, _mm512_loadu_ps(dxp.add(c))),
        );
    }
}

dispatch!(
    /// One row of the layer norm's backward (see [`ln_bwd_body`]).
    ln_bwd_row = ln_bwd_body, own ln_bwd512, ln_bwd256,
    (g: &[f32], x: &[f32], mean: f32, rstd: f32, w: &[f32], dx: &mut [f32], dwb: &mut [f32]) -> ()
);

/// One row of RMSNorm's backward: with x̂ = x·rstd, `dx += rstd·(g·w − x̂·mean(g·w·x̂))`
/// and `dw += g·x̂` (`dwb`'s first half; the second is unused).
#[inline(always)]
fn rms_bwd_body(
    g: &[f32],
    x: &[f32],
    _mean: f32,
    rstd: f32,
    w: &[f32],
    dx: &mut [f32],
    dwb: &mut [f32],
) {
    const L: usize = 16;
    let n = g.len();
    let (x, w, dx, dw) = (&x[..n], &w[..n], &mut dx[..n], &mut dwb[..n]);
    let whole = n / L * L;
    let mut s2 = [0f32; L];
    for c in (0..whole).step_by(L) {
        let g: &[f32; L] = g[c..c + L].try_into().unwrap();
        let x: &[f32; L] = x[c..c + L].try_into().unwrap();
        let w: &[f32; L] = w[c..c + L].try_into().unwrap();
        let dw: &mut [f32; L] = (&mut dw[c..c + L]).try_into().unwrap();
        for j in 0..L {
            let xh = x[j] * rstd;
            s2[j] += g[j] * w[j] * xh;
            dw[j] += g[j] * xh;
        }
    }
    let mut t2 = 0f32;
    for i in whole..n {
        let xh = x[i] * rstd;
        t2 += g[i] * w[i] * xh;
        dw[i] += g[i] * xh;
    }
    let m2 = (vmath::hsum16(s2) + t2) / n as f32;
    for i in 0..n {
        let xh = x[i] * rstd;
        dx[i] += rstd * (g[i] * w[i] - xh * m2);
    }
}

dispatch!(
    /// One row of RMSNorm's backward (see [`rms_bwd_body`]).
    rms_bwd_row = rms_bwd_body, rms_bwd512, rms_bwd256,
    (g: &[f32], x: &[f32], mean: f32, rstd: f32, w: &[f32], dx: &mut [f32], dwb: &mut [f32]) -> ()
);

/// Backward of [`layer_norm`]: adds the input gradient into `dx` and the weight and
/// bias gradients into `dw`, `db` (RMSNorm, which has no bias, where `db` is `None`).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_backward(
    g: &[f32],
    x: &[f32],
    stats: &[f32],
    w: &[f32],
    m: usize,
    dx: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    let row_bwd = if db.is_some() {
        ln_bwd_row
    } else {
        rms_bwd_row
    };
    let n = w.len();
    let per = rows_per_task(m, n).max(16);
    let parts: Vec<Vec<f32>> = dx[..m * n]
        .par_chunks_mut(per * n)
        .enumerate()
        .map(|(c, d)| {
            let mut acc = vec![0f32; 2 * n];
            for (i, row) in d.chunks_mut(n).enumerate() {
                let r = c * per + i;
                row_bwd(
                    &g[r * n..(r + 1) * n],
                    &x[r * n..(r + 1) * n],
                    stats[2 * r],
                    stats[2 * r + 1],
                    w,
                    row,
                    &mut acc,
                );
            }
            acc
        })
        .collect();
    let mut db = db;
    for p in parts {
        add_row(dw, &p[..n]);
        if let Some(db) = db.as_deref_mut() {
            add_row(db, &p[n..]);
        }
    }
}
