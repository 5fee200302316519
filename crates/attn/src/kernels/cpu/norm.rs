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

/// [`norm_row`] of each row of `x [rows, n]` into `out`, each row's mean and 1/√(var +
/// eps) into `stats [rows, 2]`. With AVX2, four rows at a time in step: a row's norm is
/// a chain of two sums, their reductions, a square root and a division, and one row at
/// a time left the core waiting on it (70 ns a row of 128 on a Zen 3 core).
pub(super) fn norm_rows(
    x: &[f32],
    n: usize,
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) {
    let rows = x.len().checked_div(n).unwrap_or(0);
    assert!(out.len() >= rows * n && stats.len() >= 2 * rows && w.len() >= n);
    assert!(b.is_none_or(|b| b.len() >= n));
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::isa() == super::Isa::Avx2 && n.is_multiple_of(8) {
        done = rows / 4 * 4;
        for r0 in (0..done).step_by(4) {
            // SAFETY: AVX2 and FMA were detected; rows r0..r0 + 4 of x, out and stats
            // lie in them (asserted above), w and b are n long.
            unsafe {
                norm4(
                    &x[r0 * n..],
                    n,
                    w,
                    b,
                    eps,
                    &mut out[r0 * n..],
                    &mut stats[2 * r0..],
                )
            };
        }
    }
    for r in done..rows {
        let (mean, rstd) = norm_row(
            &x[r * n..(r + 1) * n],
            w,
            b,
            eps,
            &mut out[r * n..(r + 1) * n],
        );
        stats[2 * r] = mean;
        stats[2 * r + 1] = rstd;
    }
}

/// Four rows of [`norm_rows`] in AVX2 registers (the same sums as `vmath`'s rows: two
/// partial sums per row, reduced at the end).
///
/// # Safety
/// AVX2 and FMA; `n` a multiple of 8; four rows of `n` in `x` and `out`, eight stats,
/// and `w` (and `b`) `n` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // r indexes the four rows' registers and x
unsafe fn norm4(
    x: &[f32],
    n: usize,
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
    out: &mut [f32],
    stats: &mut [f32],
) {
    use std::arch::x86_64::*;
    use vmath::avx2::hsum;
    assert!(x.len() >= 4 * n && out.len() >= 4 * n && stats.len() >= 8 && w.len() >= n);
    let (xp, op, wp) = (x.as_ptr(), out.as_mut_ptr(), w.as_ptr());
    let ld = |r: usize, c: usize| _mm256_loadu_ps(xp.add(r * n + 8 * c));
    let chunks = n / 8;
    let inv_n = 1.0 / n as f32;
    let mut mean = [0f32; 4];
    if b.is_some() {
        let mut s = [[_mm256_setzero_ps(); 2]; 4];
        for c in 0..chunks {
            for r in 0..4 {
                s[r][c & 1] = _mm256_add_ps(s[r][c & 1], ld(r, c));
            }
        }
        mean = s.map(|s| hsum(_mm256_add_ps(s[0], s[1])) * inv_n);
    }
    let mv = mean.map(|m| _mm256_set1_ps(m));
    let mut q = [[_mm256_setzero_ps(); 2]; 4];
    for c in 0..chunks {
        for r in 0..4 {
            let d = _mm256_sub_ps(ld(r, c), mv[r]);
            q[r][c & 1] = _mm256_fmadd_ps(d, d, q[r][c & 1]);
        }
    }
    let rstd = q.map(|q| 1.0 / (hsum(_mm256_add_ps(q[0], q[1])) * inv_n + eps).sqrt());
    let rv = rstd.map(|r| _mm256_set1_ps(r));
    for c in 0..chunks {
        let wv = _mm256_loadu_ps(wp.add(8 * c));
        let bv = match b {
            Some(b) => _mm256_loadu_ps(b.as_ptr().add(8 * c)),
            None => _mm256_setzero_ps(),
        };
        for r in 0..4 {
            let xh = _mm256_mul_ps(_mm256_sub_ps(ld(r, c), mv[r]), rv[r]);
            _mm256_storeu_ps(op.add(r * n + 8 * c), _mm256_fmadd_ps(xh, wv, bv));
        }
    }
    for r in 0..4 {
        stats[2 * r] = mean[r];
        stats[2 * r + 1] = rstd[r];
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
            let r = c * per * n;
            norm_rows(&x[r..r + o.len()], n, w, b, eps, o, s)
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
#[cfg(test)]
mod tests {
    use super::*;

    /// Every row count (groups of four and the rest) and width (whole registers or
    /// not), layer norm and RMSNorm, against the formula in f64.
    #[test]
    fn rows_match_the_formula() {
        for n in [8usize, 24, 128, 20] {
            let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
            let bias: Vec<f32> = (0..n).map(|i| (i % 3) as f32 * 0.1 - 0.1).collect();
            for rows in [1usize, 3, 4, 7, 9] {
                let x: Vec<f32> = (0..rows * n)
                    .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 3.0 + (i / n) as f32)
                    .collect();
                for b in [Some(&bias[..]), None] {
                    let (mut out, mut stats) = (vec![0f32; rows * n], vec![0f32; 2 * rows]);
                    norm_rows(&x, n, &w, b, 1e-5, &mut out, &mut stats);
                    for r in 0..rows {
                        let row: Vec<f64> =
                            x[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
                        let mean = if b.is_some() {
                            row.iter().sum::<f64>() / n as f64
                        } else {
                            0.0
                        };
                        let var =
                            row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n as f64;
                        let rstd = 1.0 / (var + 1e-5).sqrt();
                        assert!((stats[2 * r] as f64 - mean).abs() < 1e-5 * (1.0 + mean.abs()));
                        assert!(
                            (stats[2 * r + 1] as f64 - rstd).abs() < 1e-5 * rstd,
                            "n {n} row {r}"
                        );
                        for j in 0..n {
                            let want = (row[j] - mean) * rstd * w[j] as f64
                                + b.map_or(0.0, |b| b[j] as f64);
                            let got = out[r * n + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-5 * (1.0 + want.abs()),
                                "n {n} [{r},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// The backward of both norms against the formula in f64, for row counts with and
    /// without a group of four's remainder, over one task's rows and several.
    #[test]
    fn backward_matches_the_formula() {
        for n in [8usize, 24, 128, 20] {
            let w: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
            for m in [3usize, 9, 70] {
                let x: Vec<f32> = (0..m * n)
                    .map(|i| ((i * 7919) % 1013) as f32 / 100.0 - 5.0)
                    .collect();
                let g: Vec<f32> = (0..m * n)
                    .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                    .collect();
                for layer in [true, false] {
                    let stats: Vec<f32> = (0..m)
                        .flat_map(|r| {
                            let row = &x[r * n..(r + 1) * n];
                            let mean = if layer {
                                row.iter().sum::<f32>() / n as f32
                            } else {
                                0.0
                            };
                            let var =
                                row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
                            [mean, 1.0 / (var + 1e-5).sqrt()]
                        })
                        .collect();
                    let mut dx = vec![0.5f32; m * n];
                    let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
                    let dbo = if layer { Some(&mut db[..]) } else { None };
                    layer_norm_backward(&g, &x, &stats, &w, m, &mut dx, &mut dw, dbo);
                    let (mut want_dw, mut want_db) = (vec![0f64; n], vec![0f64; n]);
                    for r in 0..m {
                        let (mean, rstd) = (stats[2 * r] as f64, stats[2 * r + 1] as f64);
                        let xh: Vec<f64> = (0..n)
                            .map(|j| (x[r * n + j] as f64 - mean) * rstd)
                            .collect();
                        let gw: Vec<f64> =
                            (0..n).map(|j| g[r * n + j] as f64 * w[j] as f64).collect();
                        let m1 = if layer {
                            gw.iter().sum::<f64>() / n as f64
                        } else {
                            0.0
                        };
                        let m2 = gw.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / n as f64;
                        for j in 0..n {
                            let want = 0.5 + rstd * (gw[j] - m1 - xh[j] * m2);
                            let got = dx[r * n + j] as f64;
                            assert!(
                                (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "n {n} m {m} [{r},{j}]: {got} vs {want}"
                            );
                            want_dw[j] += g[r * n + j] as f64 * xh[j];
                            want_db[j] += g[r * n + j] as f64;
                        }
                    }
                    for j in 0..n {
                        assert!(
                            (dw[j] as f64 - want_dw[j]).abs() < 1e-4 * (1.0 + want_dw[j].abs()),
                            "dw n {n} m {m}"
                        );
                        if layer {
                            assert!(
                                (db[j] as f64 - want_db[j]).abs() < 1e-4 * (1.0 + want_db[j].abs()),
                                "db n {n} m {m}"
                            );
                        }
                    }
                }
            }
        }
    }
}
