//! The training step's matrix products on the panel kernel ([`super::panel`]), with their
//! epilogues fused in while each block of output rows is in cache: bias; residual +
//! dropout + the next sublayer's norm; GELU with its derivative (the backward then costs
//! a multiplication); and the weight gradient `xᵀ·dy` (with the bias gradient as one more
//! column) without transposing `x`.

use rayon::prelude::*;

use super::dropout::{drop_row, Dropout};
use super::norm::norm_rows;
use super::panel::{self, Panels, SyncPtr, NR};
use super::quant::{self, QMatrix};
use super::vmath::{self, dispatch};

/// The right-hand matrix of a product: `Nn(b)` is `b [k, n]` row-major, `Nt(b)` is
/// `b [n, k]` row-major and its transpose is used; `Q(w)` is a `[n, k]` matrix kept for
/// inference (f32 panels, f16, 8- or 4-bit blocks), multiplied by [`quant::matmul_then`]
/// (the training products and inference's go through the same functions here).
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    Nn(&'a [f32]),
    Nt(&'a [f32]),
    Q(&'a QMatrix),
}

/// Panel `p` (output columns `p·NR..`) of the right-hand matrix, `[k][NR]`.
fn fill(b: Rhs, k: usize, n: usize, p: usize, out: &mut [f32]) {
    match b {
        Rhs::Nt(b) => panel::pack_panel(b, n, k, p, out),
        Rhs::Q(w) => w.fill_panel(p, out),
        Rhs::Nn(b) => {
            let c0 = p * NR;
            let w = NR.min(n - c0);
            if w == NR {
                for (kk, o) in out[..k * NR].chunks_exact_mut(NR).enumerate() {
                    let o: &mut [f32; NR] = o.try_into().unwrap();
                    *o = b[kk * n + c0..kk * n + c0 + NR].try_into().unwrap();
                }
                return;
            }
            out.iter_mut().for_each(|v| *v = 0.0);
            for kk in 0..k {
                out[kk * NR..kk * NR + w].copy_from_slice(&b[kk * n + c0..kk * n + c0 + w]);
            }
        }
    }
}

/// All panels of the right-hand matrix into `panels`, on both cores; returns them (from
/// the first cache line that starts in `panels`: see [`panel::aligned_front`]; GPT-2
/// 4×128's training step ran about 1% faster with AVX2 and with AVX-512 than from the
/// vector's own 16-byte alignment). The scratch only grows: resizing it to each
/// product's length would zero the difference at every call (the products of a step
/// alternate between sizes), and every element used is written here. Each product packs
/// its own, even the weights that both shards of a training pass read: packing those once
/// per pass for both made GPT-2 4×128's AVX2 step 1.9% slower (the shared panels were
/// cold when read; a product's own packing leaves them in its core's cache).
fn pack_all<'p>(b: Rhs, k: usize, n: usize, panels: &'p mut Vec<f32>) -> &'p [f32] {
    let np = n.div_ceil(NR);
    let need = np * k * NR;
    let panels = panel::aligned_front(panels, need);
    match b {
        Rhs::Nn(b) if n.is_multiple_of(NR) && k >= 64 => {
            // Row by row (each row of b read once, front to back), into every panel:
            // reading panel by panel would take 128 bytes from each row in turn.
            let ptr = SyncPtr(panels.as_mut_ptr());
            (0..k.div_ceil(32)).into_par_iter().for_each(|c| {
                for kk in c * 32..(c * 32 + 32).min(k) {
                    let row = &b[kk * n..(kk + 1) * n];
                    for (p, src) in row.chunks_exact(NR).enumerate() {
                        let src: &[f32; NR] = src.try_into().unwrap();
                        // SAFETY: step kk of panel p; steps are split between tasks.
                        unsafe {
                            let dst = ptr.get().add((p * k + kk) * NR) as *mut [f32; NR];
                            *dst = *src;
                        }
                    }
                }
            });
        }
        _ => panels
            .par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, out)| fill(b, k, n, p, out)),
    }
    panels
}

/// `out [m, n] = a [m, k] · b`, on both cores; `panels` is scratch for the packed `b`.
pub fn gemm(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    out: &mut [f32],
    panels: &mut Vec<f32>,
) {
    gemm_then(a, m, k, n, b, out, panels, None)
}

/// [`gemm`], then `epilogue` on each block of finished rows while it is in cache.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_then(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    out: &mut [f32],
    panels: &mut Vec<f32>,
    epilogue: Option<panel::Epilogue<'_>>,
) {
    debug_assert!(a.len() >= m * k && out.len() >= m * n);
    if let Rhs::Q(w) = b {
        assert!(
            w.rows == n && w.cols == k,
            "gemm: a [{n}, {k}] matrix was expected"
        );
        return quant::matmul_then(&a[..m * k], m, w, &mut out[..m * n], epilogue);
    }
    let panels = pack_all(b, k, n, panels);
    panel::matmul_then(
        a,
        m,
        n,
        k,
        Panels::Stored(panels),
        &mut out[..m * n],
        epilogue,
    );
}

/// `out = a·b + bias` (bias added to every row), or `a·b` without one.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    bias: Option<&[f32]>,
    out: &mut [f32],
    panels: &mut Vec<f32>,
) {
    match bias {
        Some(bias) => {
            let e = |_: usize, rows: &mut [f32]| rows.chunks_mut(n).for_each(|r| bias_row(r, bias));
            gemm_then(a, m, k, n, b, out, panels, Some(&e));
        }
        None => gemm_then(a, m, k, n, b, out, panels, None),
    }
}

/// Where [`gemm_bias_residual`] also writes the norm of its output rows: a layer norm
/// with bias `b`, or an RMSNorm where `b` is `None`.
pub struct NormOut<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub eps: f32,
    pub out: &'a mut [f32],
    /// Each row's mean (0 for RMSNorm) and 1/√(var + eps), as [`layer_norm`] keeps
    /// them.
    pub stats: &'a mut [f32],
}

/// `out = res + dropout(a·b + bias)` (a residual connection; no bias where `bias` is
/// `None`); with `norm`, also the norm of each output row (the next sublayer's input),
/// computed while the row is in cache.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_residual(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    bias: Option<&[f32]>,
    res: &[f32],
    out: &mut [f32],
    panels: &mut Vec<f32>,
    dropout: Option<Dropout>,
    norm: Option<NormOut<'_>>,
) {
    let norm = norm.map(|nm| {
        assert!(nm.out.len() >= m * n && nm.stats.len() >= 2 * m);
        (
            nm.w,
            nm.b,
            nm.eps,
            SyncPtr(nm.out.as_mut_ptr()),
            SyncPtr(nm.stats.as_mut_ptr()),
        )
    });
    let e = |r0: usize, rows: &mut [f32]| {
        for (i, r) in rows.chunks_mut(n).enumerate() {
            let row = r0 + i;
            let res = &res[row * n..(row + 1) * n];
            match (dropout, bias) {
                (None, Some(bias)) => res_bias_row(r, res, bias),
                (None, None) => add_row(r, res),
                (Some(d), _) => {
                    if let Some(bias) = bias {
                        bias_row(r, bias);
                    }
                    drop_row(r, d, (row * n) as u64);
                    add_row(r, res);
                }
            }
        }
        if let Some((w, b, eps, o, st)) = norm {
            let count = rows.len() / n;
            // SAFETY: rows r0..r0 + count ≤ m of the norm's output and stats (asserted
            // above), written only by the task that computed those rows.
            let (o, st) = unsafe {
                (
                    std::slice::from_raw_parts_mut(o.get().add(r0 * n), count * n),
                    std::slice::from_raw_parts_mut(st.get().add(2 * r0), 2 * count),
                )
            };
            norm_rows(&rows[..count * n], n, w, b, eps, o, st);
        }
    };
    gemm_then(a, m, k, n, b, out, panels, Some(&e));
}

/// `act = gelu(a·b + bias)` (tanh form), and `out` = the GELU's derivative there.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_gelu(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    bias: &[f32],
    out: &mut [f32],
    act: &mut [f32],
    panels: &mut Vec<f32>,
) {
    assert!(act.len() >= m * n);
    let ap = SyncPtr(act.as_mut_ptr());
    let e = |r0: usize, rows: &mut [f32]| {
        for (i, r) in rows.chunks_mut(n).enumerate() {
            // SAFETY: row r0 + i < m of act, written only by the task that computed
            // that row of out.
            let o = unsafe { std::slice::from_raw_parts_mut(ap.get().add((r0 + i) * n), n) };
            bias_gelu_row(r, bias, o);
        }
    };
    gemm_then(a, m, k, n, b, out, panels, Some(&e));
}

/// `out = (a·b) ⊙ dgelu`: the gradient through the GELU, given its derivative (as
/// [`gemm_bias_gelu`] leaves it).
#[allow(clippy::too_many_arguments)]
pub fn gemm_gelu_grad(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: Rhs,
    dgelu: &[f32],
    out: &mut [f32],
    panels: &mut Vec<f32>,
) {
    let e = |r0: usize, rows: &mut [f32]| {
        mul_row(rows, &dgelu[r0 * n..r0 * n + rows.len()]);
    };
    gemm_then(a, m, k, n, b, out, panels, Some(&e));
}

/// `dw [rows, cols] += xᵀ · dy` for `x [m, rows]`, `dy [m, cols]` (a weight gradient),
/// without transposing `x`; on both cores. With `with_bias`, `dw` continues with the
/// bias gradient `[cols]`, to which the column sums of `dy` are added (the same
/// product, with a column of ones appended to `x`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_tn_acc(
    x: &[f32],
    m: usize,
    rows: usize,
    dy: &[f32],
    cols: usize,
    dw: &mut [f32],
    scratch: (&mut Vec<f32>, &mut Vec<f32>),
    with_bias: bool,
) {
    if m == 0 {
        // A sum over no rows adds nothing (and panels of no steps cannot be cut).
        return;
    }
    let (panels, xpack) = scratch;
    let out_rows = rows + with_bias as usize;
    // Short sums read dy's strips in place; long ones pack them.
    if panel::matmul_tn_unpacked(
        x,
        rows,
        rows,
        cols,
        m,
        dy,
        &mut dw[..out_rows * cols],
        true,
        with_bias,
    )
    .is_some()
    {
        return;
    }
    let panels = pack_all(Rhs::Nn(dy), m, cols, panels);
    panel::matmul_tn(
        x,
        rows,
        rows,
        cols,
        m,
        panels,
        &mut dw[..out_rows * cols],
        true,
        xpack,
        with_bias,
    );
}

#[inline(always)]
fn add_body(acc: &mut [f32], x: &[f32]) {
    for (a, v) in acc.iter_mut().zip(x) {
        *a += v;
    }
}
dispatch!(
    /// `acc += x`.
    add_row = add_body, add512, add256, (acc: &mut [f32], x: &[f32]) -> ()
);

#[inline(always)]
fn res_bias_body(y: &mut [f32], res: &[f32], b: &[f32]) {
    // Cut to one length first, or each element keeps its bounds checks (scalar loop).
    let n = y.len();
    let (res, b) = (&res[..n], &b[..n]);
    for i in 0..n {
        y[i] += res[i] + b[i];
    }
}
dispatch!(
    /// `y += res + b` for one row.
    res_bias_row = res_bias_body, res_bias512, res_bias256, (y: &mut [f32], res: &[f32], b: &[f32]) -> ()
);

#[inline(always)]
fn bias_body(y: &mut [f32], b: &[f32]) {
    for (v, b) in y.iter_mut().zip(b) {
        *v += b;
    }
}

/// `out = gelu(y + b)` (tanh form), and `y` replaced by the derivative `gelu'(y + b)`,
/// which is all the backward pass needs (it then costs a multiplication, not an exp).
/// Written with `s = (1 + tanh u)/2 = 1/(1 + e^{−2u})`, `u = C(x + A·x³)`: then
/// `gelu = x·s` and `gelu' = s + 2·x·s(1 − s)·C(1 + 3A·x²)`, one exp and one division.
#[inline(always)]
fn bias_gelu_body(y: &mut [f32], b: &[f32], out: &mut [f32]) {
    const C: f32 = vmath::GELU_C;
    const A: f32 = vmath::GELU_A;
    let n = y.len();
    let (b, out) = (&b[..n], &mut out[..n]);
    for i in 0..n {
        let x = y[i] + b[i];
        let x2 = x * x;
        // −2u = x·(−2C − 2CA·x²)
        let e = vmath::exp(x * x2.mul_add(-2.0 * C * A, -2.0 * C));
        let s = 1.0 / (1.0 + e);
        out[i] = x * s;
        let du = x2.mul_add(6.0 * C * A, 2.0 * C);
        y[i] = (x * (s - s * s)).mul_add(du, s);
    }
}
dispatch!(
    /// `y += b` for one row.
    bias_row = bias_body, bias512, bias256, (y: &mut [f32], b: &[f32]) -> ()
);

/// [`bias_gelu_body`] in AVX-512 registers for rows of whole registers (others take the
/// plain loop): the exp of [`vmath::avx512::exp16`], and the reciprocal as the 14-bit
/// estimate with one Newton step (about 1 ulp) instead of a division, which occupies
/// the divider for about as long as the rest of the arithmetic.
///
/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller). Rows of other
/// lengths take the plain loop, so any slices are sound.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn bias_gelu512(y: &mut [f32], b: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const C: f32 = vmath::GELU_C;
    const A: f32 = vmath::GELU_A;
    let n = y.len();
    if !n.is_multiple_of(16) || b.len() < n || out.len() < n {
        return bias_gelu_body(y, b, out);
    }
    let (yp, bp, op) = (y.as_mut_ptr(), b.as_ptr(), out.as_mut_ptr());
    let set = _mm512_set1_ps;
    for c in (0..n).step_by(16) {
        // SAFETY: c + 16 ≤ n ≤ every length (checked above).
        let x = _mm512_add_ps(_mm512_loadu_ps(yp.add(c)), _mm512_loadu_ps(bp.add(c)));
        let x2 = _mm512_mul_ps(x, x);
        // −2u = x·(−2C − 2CA·x²), at most 88 (e^{88} is finite; beyond, s is 0 anyway).
        let m2u = _mm512_mul_ps(x, _mm512_fmadd_ps(x2, set(-2.0 * C * A), set(-2.0 * C)));
        let e = vmath::avx512::exp16(_mm512_min_ps(m2u, set(88.0)));
        let d = _mm512_add_ps(set(1.0), e);
        let r = _mm512_rcp14_ps(d);
        let s = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, set(2.0)));
        _mm512_storeu_ps(op.add(c), _mm512_mul_ps(x, s));
        let du = _mm512_fmadd_ps(x2, set(6.0 * C * A), set(2.0 * C));
        let xs = _mm512_mul_ps(x, _mm512_fnmadd_ps(s, s, s));
        _mm512_storeu_ps(yp.add(c), _mm512_fmadd_ps(xs, du, s));
    }
}

/// [`bias_gelu512`] in AVX2 registers, four at a time in step ([`vmath::avx2::exp8x`]:
/// 0.67 ns an element on a Zen 3 core, against 1.15 ns one register at a time and about
/// twice that for the plain loop compiled for AVX2), the reciprocal as the 12-bit
/// estimate with one Newton step (within about 2 ulp).
///
/// # Safety
/// The CPU must have AVX2 and FMA (detected at run time by the caller). Rows of other
/// lengths take the plain loop, so any slices are sound.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn bias_gelu256(y: &mut [f32], b: &[f32], out: &mut [f32]) {
    let n = y.len();
    if !n.is_multiple_of(8) || b.len() < n || out.len() < n {
        return bias_gelu_body(y, b, out);
    }
    let (yp, bp, op) = (y.as_mut_ptr(), b.as_ptr(), out.as_mut_ptr());
    // GN registers in step (see `exp8x`), then one at a time for a row's last ones.
    const GN: usize = 4;
    let mut c = 0;
    while c + 8 * GN <= n {
        // SAFETY: c + 8·GN ≤ n ≤ every length (checked above).
        gelu_regs::<GN>(yp, bp, op, c);
        c += 8 * GN;
    }
    while c < n {
        // SAFETY: c + 8 ≤ n (n is a multiple of 8).
        gelu_regs::<1>(yp, bp, op, c);
        c += 8;
    }
}

/// [`bias_gelu256`]'s step for the `N` registers from element `c`.
///
/// # Safety
/// AVX2 and FMA, and `c + 8·N` elements readable at `b` and writable at `y` and `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn gelu_regs<const N: usize>(yp: *mut f32, bp: *const f32, op: *mut f32, c: usize) {
    use std::arch::x86_64::*;
    const C: f32 = vmath::GELU_C;
    const A: f32 = vmath::GELU_A;
    let set = _mm256_set1_ps;
    // SAFETY: c + 8·N elements (the caller's bound).
    let x: [__m256; N] = std::array::from_fn(|i| unsafe {
        _mm256_add_ps(
            _mm256_loadu_ps(yp.add(c + 8 * i)),
            _mm256_loadu_ps(bp.add(c + 8 * i)),
        )
    });
    let x2 = x.map(|x| _mm256_mul_ps(x, x));
    let m2u: [__m256; N] = std::array::from_fn(|i| {
        _mm256_mul_ps(
            x[i],
            _mm256_fmadd_ps(x2[i], set(-2.0 * C * A), set(-2.0 * C)),
        )
    });
    let e = vmath::avx2::exp8x(m2u);
    for i in 0..N {
        let d = _mm256_add_ps(set(1.0), e[i]);
        let r = _mm256_rcp_ps(d);
        let s = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, set(2.0)));
        let du = _mm256_fmadd_ps(x2[i], set(6.0 * C * A), set(2.0 * C));
        // s(1 − s) as s²·e (1 − s = e·s): s − s² would cancel where s ≈ 1 and leave
        // the estimate's error, times x·du (hundreds for large x).
        let xs = _mm256_mul_ps(x[i], _mm256_mul_ps(_mm256_mul_ps(s, s), e[i]));
        // SAFETY: as above.
        unsafe {
            _mm256_storeu_ps(op.add(c + 8 * i), _mm256_mul_ps(x[i], s));
            _mm256_storeu_ps(yp.add(c + 8 * i), _mm256_fmadd_ps(xs, du, s));
        }
    }
}

dispatch!(
    @pick
    /// `out = gelu(y + b)`, `y = gelu'(y + b)` for one row.
    bias_gelu_row = bias_gelu_body, bias_gelu512, bias_gelu256,
    (y: &mut [f32], b: &[f32], out: &mut [f32]) -> ()
);

#[inline(always)]
fn add_clear_body(acc: &mut [f32], x: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(x.iter_mut()) {
        *a += *x;
        *x = 0.0;
    }
}
dispatch!(
    /// `acc += x`, then `x = 0`.
    add_and_clear = add_clear_body, add_clear512, add_clear256, (acc: &mut [f32], x: &mut [f32]) -> ()
);

#[inline(always)]
fn mul_body(y: &mut [f32], x: &[f32]) {
    for (v, x) in y.iter_mut().zip(x) {
        *v *= x;
    }
}
dispatch!(
    /// `y ⊙= x`.
    mul_row = mul_body, mul512, mul256, (y: &mut [f32], x: &[f32]) -> ()
);

#[cfg(test)]
mod tests {
    use super::super::test_data as data;
    use super::*;

    #[test]
    fn products_match_plain_loops() {
        // m = 100: four panels of bias sums, taken two at a time.
        for m in [37, 100] {
            products_of(m, 45, 70);
        }
        // Blocks of six and then two rows (on both sides of the transposed product).
        products_of(38, 44, 70);
        // A weight gradient over no rows (an empty sum) adds nothing.
        let mut dw = vec![0.25f32; 45 * 70];
        let scratch = (&mut Vec::new(), &mut Vec::new());
        gemm_tn_acc(&[], 0, 45, &[], 70, &mut dw, scratch, false);
        assert!(dw.iter().all(|&v| v == 0.25));
        // Many rows (blocks over rows, whole blocks of six looped in one call, a
        // remainder after them), on both sides of the transposed product; 600 steps
        // take several passes in the plain product (one in the transposed).
        products_of(263, 600, 70);
        products_of(300, 45, 600);
        // A transposed product's sum long enough for passes of its own (2100 steps:
        // 1024, 1024 and 52), over whole panels and blocks and a remainder of both.
        products_of(40, 13, 2100);
    }

    fn products_of(m: usize, k: usize, n: usize) {
        let a = data(m * k, 1);
        let bn = data(k * n, 2); // [k, n]
        let mut bt = vec![0f32; n * k]; // [n, k]
        for i in 0..k {
            for j in 0..n {
                bt[j * k + i] = bn[i * n + j];
            }
        }
        let mut want = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] = (0..k).map(|l| a[i * k + l] * bn[l * n + j]).sum();
            }
        }
        for rhs in [Rhs::Nn(&bn), Rhs::Nt(&bt)] {
            let mut out = vec![0f32; m * n];
            gemm(&a, m, k, n, rhs, &mut out, &mut Vec::new());
            for (o, w) in out.iter().zip(&want) {
                assert!((o - w).abs() < 1e-4);
            }
        }
        // aᵀ·b for a [k', m'] = bt viewed as [n, k] rows: (btᵀ)·a' with a' [n, m].
        let a2 = data(n * m, 5); // [n, m]
        let mut tn = vec![0.5f32; k * m]; // [k, m]
        gemm_tn_acc(
            &bt,
            n,
            k,
            &a2,
            m,
            &mut tn,
            (&mut Vec::new(), &mut Vec::new()),
            false,
        );
        // With the bias row: the column sums of a2 follow.
        let mut tb = vec![0f32; (k + 1) * m];
        gemm_tn_acc(
            &bt,
            n,
            k,
            &a2,
            m,
            &mut tb,
            (&mut Vec::new(), &mut Vec::new()),
            true,
        );
        for j in 0..m {
            let w: f32 = (0..n).map(|r| a2[r * m + j]).sum();
            assert!((tb[k * m + j] - w).abs() < 1e-4, "bias [{j}]");
            assert!((tb[j] - (tn[j] - 0.5)).abs() < 1e-5);
        }
        for i in 0..k {
            for j in 0..m {
                let w: f32 = (0..n).map(|r| bt[r * k + i] * a2[r * m + j]).sum();
                assert!((tn[i * m + j] - 0.5 - w).abs() < 1e-4, "tn [{i},{j}]");
            }
        }
    }

    /// The GELU epilogue (value and derivative) against the tanh formula in f64, over
    /// rows of whole registers and not, and arguments far out on both sides.
    #[test]
    fn bias_gelu_rows_match_the_formula() {
        const C: f64 = 0.797_884_560_802_865_4;
        const A: f64 = 0.044715;
        for n in [48usize, 21] {
            let b: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
            for scale in [0.5f32, 3.0, 40.0] {
                let y0: Vec<f32> = data(n, 7).iter().map(|v| v * scale).collect();
                let (mut y, mut out) = (y0.clone(), vec![0f32; n]);
                bias_gelu_row(&mut y, &b, &mut out);
                for i in 0..n {
                    let x = (y0[i] + b[i]) as f64;
                    let th = (C * (x + A * x * x * x)).tanh();
                    let gelu = 0.5 * x * (1.0 + th);
                    let grad =
                        0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * C * (1.0 + 3.0 * A * x * x);
                    assert!(
                        (out[i] as f64 - gelu).abs() < 1e-5 * (1.0 + gelu.abs()),
                        "n {n} gelu({x}): {} vs {gelu}",
                        out[i]
                    );
                    assert!(
                        (y[i] as f64 - grad).abs() < 1e-5 * (1.0 + grad.abs()),
                        "n {n} gelu'({x}): {} vs {grad}",
                        y[i]
                    );
                }
            }
        }
    }
}
