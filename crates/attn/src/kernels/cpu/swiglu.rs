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
dispatch!(
    /// One row of SwiGLU's backward.
    swiglu_bwd_row = swiglu_bwd_body, swiglu_bwd512, swiglu_bwd256,
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
