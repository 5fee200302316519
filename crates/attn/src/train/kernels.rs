//! Slice kernels for the native GPT-2 training step ([`super::native`]): matrix products
//! on the inference engine's panel kernel, layer norm, GELU, causal attention and softmax
//! cross-entropy, each forward with its backward, and the AdamW update. Row-wise work
//! is split over the rayon pool; the inner loops are compiled for AVX-512, AVX2 or
//! portably and picked at run time (as in [`crate::infer::vmath`]).

/// Run `f` on a thread of the rayon pool, so that the many parallel loops inside it
/// start from a worker (cheap) instead of each waking the pool from outside and putting
/// the caller to sleep until it finishes.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

use rayon::prelude::*;

use crate::infer::panel::{self, Panels, SyncPtr, NR};
use crate::infer::vmath::{self, dispatch};

/// Inverted dropout drawn from a counter-based hash: element `i` of a site is kept (and
/// scaled by `1/(1−p)`) or zeroed by a hash of `(seed, i)`, so a mask is recomputed in the
/// backward pass instead of stored, and is the same whichever thread computes it.
#[derive(Clone, Copy, Debug)]
pub struct Dropout {
    /// Per-site seed (see [`Dropout::site`]).
    pub seed: u64,
    /// Elements whose hash's top 32 bits fall below this are dropped (`p · 2³²`).
    threshold: u64,
    /// `1/(1−p)`.
    scale: f32,
}

impl Dropout {
    /// Dropout with probability `p` for the masks of one step drawn from `seed`; `None`
    /// when `p` is zero.
    pub fn new(p: f32, seed: u64) -> Option<Self> {
        (p > 0.0).then(|| Dropout {
            seed,
            threshold: (p as f64 * 4294967296.0) as u64,
            scale: 1.0 / (1.0 - p),
        })
    }

    /// The same dropout for another site (layer and place), with its own masks.
    pub fn site(self, site: u64) -> Self {
        Dropout {
            seed: mix(self.seed ^ mix(site.wrapping_add(0x5151_5151))),
            ..self
        }
    }

    /// The masks from element `by` on: element `i` of the result is element `by + i`
    /// here (a shard of a batch).
    pub fn shifted(self, by: u64) -> Self {
        Dropout {
            seed: self.seed.wrapping_add(by.wrapping_mul(GOLDEN)),
            ..self
        }
    }

    /// The mask value of element `i`: 0 or `1/(1−p)`.
    #[inline(always)]
    pub fn factor(&self, i: u64) -> f32 {
        if (mix(self.seed.wrapping_add(i.wrapping_mul(GOLDEN))) >> 32) < self.threshold {
            0.0
        } else {
            self.scale
        }
    }
}

/// The counter's step (SplitMix64's).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[inline(always)]
fn drop_body(x: &mut [f32], d: Dropout, first: u64) {
    for (i, v) in x.iter_mut().enumerate() {
        *v *= d.factor(first + i as u64);
    }
}
dispatch!(
    /// `x[i] ← x[i] · mask(first + i)`.
    drop_row = drop_body, drop512, drop256, (x: &mut [f32], d: Dropout, first: u64) -> ()
);

/// `out = x ⊙ mask` over whole buffers (element `i` of `x` is mask element `i`), on both
/// cores.
pub fn dropout_into(x: &[f32], d: Dropout, out: &mut [f32]) {
    const CH: usize = 1 << 14;
    out[..x.len()]
        .par_chunks_mut(CH)
        .enumerate()
        .for_each(|(c, o)| {
            o.copy_from_slice(&x[c * CH..c * CH + o.len()]);
            drop_row(o, d, (c * CH) as u64);
        });
}

/// The right-hand matrix of a product: `Nn(b)` is `b [k, n]` row-major, `Nt(b)` is
/// `b [n, k]` row-major and its transpose is used.
#[derive(Clone, Copy)]
pub enum Rhs<'a> {
    Nn(&'a [f32]),
    Nt(&'a [f32]),
}

/// Panel `p` (output columns `p·NR..`) of the right-hand matrix, `[k][NR]`.
fn fill(b: Rhs, k: usize, n: usize, p: usize, out: &mut [f32]) {
    match b {
        Rhs::Nt(b) => panel::pack_panel(b, n, k, p, out),
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

/// All panels of the right-hand matrix into `panels`, on both cores.
fn pack_all(b: Rhs, k: usize, n: usize, panels: &mut Vec<f32>) {
    let np = n.div_ceil(NR);
    panels.resize(np * k * NR, 0.0);
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
        _ => panels[..np * k * NR]
            .par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, out)| fill(b, k, n, p, out)),
    }
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
fn gemm_then(
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
    pack_all(b, k, n, panels);
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
            if let Some((w, b, eps, o, st)) = norm {
                // SAFETY: row `row` < m of the norm's output and stats (asserted above),
                // written only by the task that computed that row.
                let (o, st) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(o.get().add(row * n), n),
                        std::slice::from_raw_parts_mut(st.get().add(2 * row), 2),
                    )
                };
                let (mean, rstd) = norm_row(r, w, b, eps, o);
                st[0] = mean;
                st[1] = rstd;
            }
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
    pack_all(Rhs::Nn(dy), m, cols, panels);
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

/// Rows per parallel task for rows of `row` elements: about 16K elements each.
fn rows_per_task(rows: usize, row: usize) -> usize {
    (16384 / row.max(1)).clamp(1, rows.max(1))
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

dispatch!(
    /// `out = gelu(y + b)`, `y = gelu'(y + b)` for one row.
    bias_gelu_row = bias_gelu_body, own bias_gelu512, bias_gelu256,
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

// ---------------------------------------------------------------- layer norm

/// One row's layer norm (with a bias) or RMSNorm (without); returns its mean (0 for
/// RMSNorm) and 1/√(var + eps).
fn norm_row(x: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32, out: &mut [f32]) -> (f32, f32) {
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
        // Whole 16 × 16 blocks in registers where AVX-512 is there; the rest one by one.
        let (d16, t16) = match crate::infer::isa() {
            #[cfg(target_arch = "x86_64")]
            crate::infer::Isa::Avx512 => (hd / 16 * 16, t / 16 * 16),
            _ => (0, 0),
        };
        #[cfg(target_arch = "x86_64")]
        for d0 in (0..d16).step_by(16) {
            for i0 in (0..t16).step_by(16) {
                // SAFETY: rows i0..i0 + 16 ≤ t of the source hold columns d0..d0 + 16 ≤
                // hd (bound asserted above); rows d0..d0 + 16 ≤ hd of out hold columns
                // i0..i0 + 16 ≤ t ≤ tp. The ISA was detected.
                unsafe {
                    panel::transpose16(
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
    let isa = crate::infer::isa();
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
    let isa = crate::infer::isa();
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
    let isa = crate::infer::isa();
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
    use crate::infer::vmath::avx512::lanes;
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
/// side, to `y [b·t, heads.q_width()]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    qkv: &[f32],
    b: usize,
    t: usize,
    heads: Heads,
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

// ---------------------------------------------------------------- rotary positions

/// Rotary tables for positions `0..n`: `cos`, `sin` `[n, dim / 2]`, frequencies
/// `theta^(−2i/dim)` (transformers' arithmetic: the frequency in f32 from an f64 power,
/// the angle in f32).
pub struct RopeTable {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub half: usize,
}

impl RopeTable {
    /// The tables for `n` positions of heads `dim` wide; sized by a config alone, so
    /// their memory is checked first (`what` names the setting in the error).
    pub fn new(dim: usize, n: usize, theta: f64, what: &str) -> crate::Result<Self> {
        let half = dim / 2;
        crate::guard::check_memory(what, 2.0 * n as f64 * half as f64 * 4.0)?;
        let inv: Vec<f32> = (0..half)
            .map(|i| (1.0 / theta.powf(2.0 * i as f64 / dim as f64)) as f32)
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in 0..n {
            for f in &inv {
                let a = pos as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(RopeTable { cos, sin, half })
    }

    /// Rotate each `2·half`-long head in `x` to position `pos` (the pairs `(i, i + half)`,
    /// transformers' rotate-half form); `inverse` rotates back, which is the backward
    /// pass (the rotation's transpose).
    pub fn rotate(&self, x: &mut [f32], pos: usize, inverse: bool) {
        let h = self.half;
        let (cos, sin) = (&self.cos[pos * h..][..h], &self.sin[pos * h..][..h]);
        let sign = if inverse { -1.0 } else { 1.0 };
        for head in x.chunks_exact_mut(2 * h) {
            let (a, b) = head.split_at_mut(h);
            for i in 0..h {
                let (x1, x2, s) = (a[i], b[i], sign * sin[i]);
                a[i] = x1 * cos[i] - x2 * s;
                b[i] = x2 * cos[i] + x1 * s;
            }
        }
    }
}

/// Rotary positions on the queries and keys of `qkv [m, heads.width()]` in place; row
/// `r` is position `r % t`. With `inverse`, the backward pass on their gradients.
pub fn rope(qkv: &mut [f32], m: usize, t: usize, heads: Heads, table: &RopeTable, inverse: bool) {
    let w = heads.width();
    let rot = (heads.n + heads.kv) * heads.dim;
    let per = rows_per_task(m, w);
    qkv[..m * w]
        .par_chunks_mut(per * w)
        .enumerate()
        .for_each(|(c, rows)| {
            for (i, row) in rows.chunks_mut(w).enumerate() {
                table.rotate(&mut row[..rot], (c * per + i) % t, inverse);
            }
        });
}

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

// ---------------------------------------------------------------- cross-entropy

/// Softmax cross-entropy of each row of `logits [m, v]` against `targets`: returns the
/// summed loss (f64) and, with `grad_scale`, replaces the logits by
/// `grad_scale · (softmax − onehot)`.
pub fn cross_entropy(
    logits: &mut [f32],
    v: usize,
    targets: &[u32],
    grad_scale: Option<f32>,
) -> f64 {
    let m = targets.len();
    let per = rows_per_task(m, v).max(8);
    logits[..m * v]
        .par_chunks_mut(per * v)
        .enumerate()
        .map(|(c, chunk)| {
            let mut loss = 0f64;
            for (i, row) in chunk.chunks_mut(v).enumerate() {
                let y = targets[c * per + i] as usize;
                let max = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let logit_y = row[y];
                let sum = vmath::exp_shifted(row, max);
                loss += (sum.ln() + max - logit_y) as f64;
                if let Some(s) = grad_scale {
                    let inv = s / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                    row[y] -= s;
                }
            }
            loss
        })
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in chunk order: the same total on every run
}

// ---------------------------------------------------------------- optimiser

#[inline(always)]
fn squares_body(c: &[f32]) -> f64 {
    let mut s = [0f32; 16];
    let mut chunks = c.chunks_exact(16);
    for ch in &mut chunks {
        let ch: &[f32; 16] = ch.try_into().unwrap();
        for j in 0..16 {
            s[j] = ch[j].mul_add(ch[j], s[j]);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| (v * v) as f64).sum();
    s.iter().map(|&v| v as f64).sum::<f64>() + tail
}
dispatch!(
    /// Σ x² of a chunk: sixteen f32 partial sums (a `s[i % 16]` index had kept the loop
    /// scalar), added in f64.
    squares = squares_body, squares512, squares256, (c: &[f32]) -> f64
);

/// Σ x² (f64), on both cores.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 15)
        .map(squares)
        .collect::<Vec<f64>>()
        .iter()
        .sum() // in chunk order: the same total on every run
}

/// The AdamW constants of one update.
#[derive(Clone, Copy)]
pub struct AdamWStep {
    pub lr: f32,
    pub decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub eps: f32,
    /// Multiplies the gradient (clipping).
    pub grad_scale: f32,
}

#[inline(always)]
fn adamw_body(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    let keep = 1.0 - s.lr * s.decay;
    // Cut to one length first, or each element keeps its bounds checks (scalar loop).
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i] * s.grad_scale;
        m[i] = s.beta1 * m[i] + (1.0 - s.beta1) * gi;
        v[i] = s.beta2 * v[i] + (1.0 - s.beta2) * gi * gi;
        p[i] = p[i] * keep - s.lr * (m[i] / s.bc1) / ((v[i] / s.bc2).sqrt() + s.eps);
    }
}
dispatch!(
    adamw_chunk = adamw_body, adamw512, adamw256,
    (p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) -> ()
);

/// One AdamW update of `p` in place, with moments `m`, `v`, on both cores, in one
/// parallel pass over `segments` (`start..end` ranges, each with or without weight
/// decay; `s.decay` applies to those with).
pub fn adamw(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    segments: &[(usize, usize, bool)],
    s: AdamWStep,
) {
    const CH: usize = 1 << 14;
    let n = p.len();
    assert!(g.len() == n && m.len() == n && v.len() == n);
    let mut tasks = Vec::new();
    for &(a, b, decays) in segments {
        assert!(a <= b && b <= n);
        tasks.extend((a..b).step_by(CH).map(|c| (c, (c + CH).min(b), decays)));
    }
    let (pp, mp, vp) = (
        SyncPtr(p.as_mut_ptr()),
        SyncPtr(m.as_mut_ptr()),
        SyncPtr(v.as_mut_ptr()),
    );
    tasks.par_iter().for_each(|&(a, b, decays)| {
        // SAFETY: a..b lies inside every buffer (asserted) and the tasks' ranges do
        // not overlap (the segments are disjoint parameters).
        let (p, m, v) = unsafe {
            (
                std::slice::from_raw_parts_mut(pp.get().add(a), b - a),
                std::slice::from_raw_parts_mut(mp.get().add(a), b - a),
                std::slice::from_raw_parts_mut(vp.get().add(a), b - a),
            )
        };
        let step = AdamWStep {
            decay: if decays { s.decay } else { 0.0 },
            ..s
        };
        adamw_chunk(p, &g[a..b], m, v, step);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0)
            .collect()
    }

    #[test]
    fn products_match_plain_loops() {
        let (m, k, n) = (37, 45, 70);
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

    #[test]
    fn dropout_masks_drop_the_asked_fraction_and_repeat() {
        for p in [0.1f32, 0.5] {
            let d = Dropout::new(p, 42).unwrap().site(3);
            let n = 200_000u64;
            let dropped = (0..n).filter(|&i| d.factor(i) == 0.0).count() as f64 / n as f64;
            assert!(
                (dropped - p as f64).abs() < 0.005,
                "p {p}: dropped {dropped}"
            );
            assert!((0..n).all(|i| d.factor(i) == 0.0 || d.factor(i) == 1.0 / (1.0 - p)));
            // The vectorised row form gives the same mask as the scalar one.
            let mut row = vec![1f32; 1000];
            drop_row(&mut row, d, 5000);
            for (i, v) in row.iter().enumerate() {
                assert_eq!(*v, d.factor(5000 + i as u64));
            }
            // Other sites and seeds: other masks.
            let e = Dropout::new(p, 42).unwrap().site(4);
            let f = Dropout::new(p, 43).unwrap().site(3);
            let same = |a: Dropout, b: Dropout| (0..1000).all(|i| a.factor(i) == b.factor(i));
            assert!(!same(d, e) && !same(d, f));
        }
        assert!(Dropout::new(0.0, 1).is_none());
    }

    /// The rotation by table equals the textbook rotate-half form computed in f64, and
    /// the inverse rotation undoes it.
    #[test]
    fn rope_rotates_pairs_half_a_head_apart() {
        let rope = RopeTable::new(8, 16, 100.0, "test").unwrap();
        let x: Vec<f32> = (0..16).map(|i| 0.3 * i as f32 - 1.0).collect();
        for pos in [0, 1, 7, 15] {
            let mut got = x.clone();
            rope.rotate(&mut got, pos, false);
            for head in 0..2 {
                for i in 0..4 {
                    let (a, b) = (head * 8 + i, head * 8 + i + 4);
                    let f = 1.0 / 100f64.powf(2.0 * i as f64 / 8.0);
                    let (c, s) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
                    let (x1, x2) = (x[a] as f64, x[b] as f64);
                    assert!(
                        (got[a] as f64 - (x1 * c - x2 * s)).abs() < 1e-5,
                        "pos {pos} i {i}"
                    );
                    assert!((got[b] as f64 - (x2 * c + x1 * s)).abs() < 1e-5);
                }
            }
            rope.rotate(&mut got, pos, true);
            for (g, w) in got.iter().zip(&x) {
                assert!(
                    (g - w).abs() < 1e-5,
                    "pos {pos}: the inverse gives {g}, not {w}"
                );
            }
        }
    }

    #[test]
    fn adamw_matches_the_recurrence() {
        let n = 1000;
        let mut p = data(n, 3);
        let g = data(n, 4);
        let (mut m, mut v) = (vec![0.1f32; n], vec![0.2f32; n]);
        let p0 = p.clone();
        let s = AdamWStep {
            lr: 0.01,
            decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            bc1: 0.5,
            bc2: 0.25,
            eps: 1e-8,
            grad_scale: 0.5,
        };
        adamw(
            &mut p,
            &g,
            &mut m,
            &mut v,
            &[(0, 400, true), (400, n, false)],
            s,
        );
        for i in 0..n {
            let gi = g[i] as f64 * 0.5;
            let mi = 0.9 * 0.1 + 0.1 * gi;
            let vi = 0.99 * 0.2 + 0.01 * gi * gi;
            let keep = if i < 400 { 1.0 - 0.001 } else { 1.0 };
            let want = p0[i] as f64 * keep - 0.01 * (mi / 0.5) / ((vi / 0.25).sqrt() + 1e-8);
            assert!((p[i] as f64 - want).abs() < 1e-6, "{} vs {want}", p[i]);
            assert!((m[i] as f64 - mi).abs() < 1e-6 && (v[i] as f64 - vi).abs() < 1e-6);
        }
    }
}
