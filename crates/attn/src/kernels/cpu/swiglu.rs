//! SwiGLU (`silu(gate) · up`) over rows of fused gate/up products, forward and backward.

use rayon::prelude::*;

use super::rows_per_task;
use super::vmath::{self, dispatch};

// ---------------------------------------------------------------- SwiGLU

/// SwiGLU's product for each row of `gu [m, 2f]` (gate, then up): `act = silu(g)·u`.
pub fn swiglu(gu: &[f32], m: usize, f: usize, act: &mut [f32]) {
    let per = rows_per_task(m, 2 * f);
    act[..m * f]
        .par_chunks_mut(per * f)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, o) in out.chunks_mut(f).enumerate() {
                let row = &gu[(c * per + i) * 2 * f..][..2 * f];
                vmath::silu_mul(&row[..f], &row[f..], o);
            }
        });
}

#[inline(always)]
fn swiglu_bwd_body(d: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let n = d.len();
    let (g, u, dg, du) = (&g[..n], &u[..n], &mut dg[..n], &mut du[..n]);
    for i in 0..n {
        let s = 1.0 / (1.0 + vmath::exp(-g[i]));
        let silu = g[i] * s;
        du[i] = d[i] * silu;
        dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
    }
}
/// [`swiglu_bwd_body`] in AVX2 registers, the exp of four registers in step (see
/// [`vmath::avx2::by_exp_neg`]); the last values of a row that are not a whole register take
/// the plain loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn swiglu_bwd_avx2(d: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) {
    use std::arch::x86_64::*;
    use vmath::avx2::by_exp_neg;
    let n = d
        .len()
        .min(g.len())
        .min(u.len())
        .min(dg.len())
        .min(du.len());
    let (dp, gp, up, dgp, dup) = (
        d.as_ptr(),
        g.as_ptr(),
        u.as_ptr(),
        dg.as_mut_ptr(),
        du.as_mut_ptr(),
    );
    let one = _mm256_set1_ps(1.0);
    let regs = |c: usize, e: &[__m256]| {
        for (i, &e) in e.iter().enumerate() {
            let at = c + 8 * i;
            // SAFETY: at + 8 ≤ n ≤ every length.
            unsafe {
                let (dv, gv, uv) = (
                    _mm256_loadu_ps(dp.add(at)),
                    _mm256_loadu_ps(gp.add(at)),
                    _mm256_loadu_ps(up.add(at)),
                );
                let s = _mm256_div_ps(one, _mm256_add_ps(one, e));
                _mm256_storeu_ps(dup.add(at), _mm256_mul_ps(dv, _mm256_mul_ps(gv, s)));
                // d·u·s·(1 + g·(1 − s))
                let t = _mm256_fmadd_ps(gv, _mm256_sub_ps(one, s), one);
                _mm256_storeu_ps(
                    dgp.add(at),
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dv, uv), s), t),
                );
            }
        }
    };
    // SAFETY: g holds n values.
    let done = unsafe { by_exp_neg(gp, n, regs) };
    swiglu_bwd_body(
        &d[done..n],
        &g[done..n],
        &u[done..n],
        &mut dg[done..n],
        &mut du[done..n],
    );
}
dispatch!(
    /// One row of SwiGLU's backward.
    swiglu_bwd_row = swiglu_bwd_body, swiglu_bwd512, own swiglu_bwd_avx2,
    (d: &[f32], g: &[f32], u: &[f32], dg: &mut [f32], du: &mut [f32]) -> ()
);

/// Backward of [`swiglu`]: from `d [m, f]`, the gradient of `act`, writes that of `gu`
/// to `dgu [m, 2f]`.
pub fn swiglu_backward(d: &[f32], gu: &[f32], m: usize, f: usize, dgu: &mut [f32]) {
    let per = rows_per_task(m, 2 * f);
    dgu[..m * 2 * f]
        .par_chunks_mut(per * 2 * f)
        .enumerate()
        .for_each(|(c, out)| {
            for (i, o) in out.chunks_mut(2 * f).enumerate() {
                let r = c * per + i;
                let row = &gu[r * 2 * f..][..2 * f];
                let (dg, du) = o.split_at_mut(f);
                swiglu_bwd_row(&d[r * f..][..f], &row[..f], &row[f..], dg, du);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Forward and backward against the formulas in f64, for rows with groups of four
    /// registers, single registers and a remainder of values.
    #[test]
    fn swiglu_matches_the_formula() {
        for f in [5usize, 8, 21, 40, 77, 100] {
            let m = 3;
            let gu: Vec<f32> = (0..m * 2 * f)
                .map(|i| ((i * 7919) % 1013) as f32 / 60.0 - 8.0)
                .collect();
            let d: Vec<f32> = (0..m * f)
                .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let mut act = vec![f32::NAN; m * f];
            swiglu(&gu, m, f, &mut act);
            let mut dgu = vec![f32::NAN; m * 2 * f];
            swiglu_backward(&d, &gu, m, f, &mut dgu);
            for r in 0..m {
                for j in 0..f {
                    let (g, u) = (gu[r * 2 * f + j] as f64, gu[r * 2 * f + f + j] as f64);
                    let s = 1.0 / (1.0 + (-g).exp());
                    let dd = d[r * f + j] as f64;
                    let close = |got: f32, want: f64| {
                        (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs())
                    };
                    assert!(close(act[r * f + j], g * s * u), "f {f} act[{r},{j}]");
                    let dg = dd * u * s * (1.0 + g * (1.0 - s));
                    assert!(
                        close(dgu[r * 2 * f + j], dg),
                        "f {f} dg[{r},{j}]: {} vs {dg}",
                        dgu[r * 2 * f + j]
                    );
                    assert!(
                        close(dgu[r * 2 * f + f + j], dd * g * s),
                        "f {f} du[{r},{j}]"
                    );
                }
            }
        }
    }
}
