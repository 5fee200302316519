//! Vectorisable exp, GELU, softmax and norms for the engine's row operations: plain Rust
//! loops with no library calls inside, compiled for AVX-512, AVX2 or portably and picked at
//! run time, and hand-written variants where those loops fall short ([`avx2`], [`avx512`]).

/// ln 2 split in two (the high part exact in a few bits), for the exp's argument
/// reduction.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// e^r for |r| ≤ ln2/2: the Taylor coefficients from r⁶ down, for Horner's rule.
const EXP_POLY: [f32; 7] = [
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];
/// The GELU's tanh form: `u = C(x + A·x³)`.
pub(crate) const GELU_C: f32 = 0.797_884_6;
pub(crate) const GELU_A: f32 = 0.044715;

/// e^x to about 2 ulp for x in the f32 range (0 below −87.3; e^88.3 ≈ 2·10³⁸ above 88.3):
/// x = k·ln 2 + r with |r| ≤ ln2/2, e^r by a degree-6 polynomial, 2^k from the exponent.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let under = x < -87.3;
    let x = x.clamp(-87.3, 88.3);
    // Fused multiply-adds throughout (Rust never contracts `a * b + c` on its own): half
    // the instructions, and one rounding per step.
    let k = x.mul_add(LOG2E, 0.5).floor();
    let r = (-k).mul_add(LN2_LO, (-k).mul_add(LN2_HI, x));
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    // SAFETY: x is clamped, so k is a finite integer in −126..=128 (no saturation needed;
    // the checked `as` conversion would not vectorise).
    let ki: i32 = unsafe { k.to_int_unchecked() };
    let y = p * f32::from_bits(((ki + 127) as u32) << 23);
    if under {
        0.0
    } else {
        y
    }
}

/// GELU, tanh form, as `x / (1 + e^{−2u})` with `u = C(x + A·x³)` (the same function:
/// `(1 + tanh u)/2` is the logistic of `2u`), one exp and one division.
#[inline(always)]
fn gelu_body(xs: &mut [f32]) {
    const C: f32 = GELU_C;
    const A: f32 = GELU_A;
    for v in xs.iter_mut() {
        let x = *v;
        let e = exp(x * (x * x).mul_add(-2.0 * C * A, -2.0 * C));
        *v = x / (1.0 + e);
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error below 1.5·10⁻⁷), branch-free
/// so that a loop of it vectorises: `1 − (a₁t + … + a₅t⁵)·e^{−x²}`, `t = 1/(1 + p|x|)`,
/// with the sign of x.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    erf_parts(x).0
}

/// erf(x) and the `e^{−x²}` it is computed with (which the erf GELU's derivative needs
/// too, as `φ(√2·x)·√(2π)`).
#[inline(always)]
fn erf_parts(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        1.061_405_4,
        -1.453_152_1,
        1.421_413_8,
        -0.284_496_74,
        0.254_829_6,
    ];
    let ax = x.abs();
    let t = 1.0 / P.mul_add(ax, 1.0);
    let mut poly = A[0];
    for c in &A[1..] {
        poly = poly.mul_add(t, *c);
    }
    let e = exp(-ax * ax);
    let y = 1.0 - poly * t * e;
    (y.copysign(x), e)
}

/// GELU with the error function, `x·Φ(x) = x·(1 + erf(x/√2))/2`, in place.
#[inline(always)]
fn gelu_erf_body(xs: &mut [f32]) {
    for v in xs.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The erf GELU at `x` and its derivative `Φ(x) + x·φ(x)`, with one exponential:
/// `φ(x)·√(2π) = e^{−x²/2}` is the one inside `erf(x/√2)`.
#[inline(always)]
pub(crate) fn gelu_erf_and_grad(x: f32) -> (f32, f32) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    let (erf, e) = erf_parts(x * std::f32::consts::FRAC_1_SQRT_2);
    let cdf = 0.5 * (1.0 + erf);
    (x * cdf, cdf + x * INV_SQRT_2PI * e)
}

/// The sum of sixteen partial sums, pairwise (four dependent steps rather than the
/// sixteen of a running sum: at the length of a short causal row the reduction costs as
/// much as the row).
#[inline(always)]
pub(crate) fn hsum16(mut a: [f32; 16]) -> f32 {
    for w in [8, 4, 2, 1] {
        for j in 0..w {
            a[j] += a[j + w];
        }
    }
    a[0]
}

/// The largest of sixteen values, pairwise (see [`hsum16`]).
#[inline(always)]
pub(crate) fn hmax16(mut a: [f32; 16]) -> f32 {
    for w in [8, 4, 2, 1] {
        for j in 0..w {
            a[j] = if a[j + w] > a[j] { a[j + w] } else { a[j] };
        }
    }
    a[0]
}

/// x ← e^{x − max}; returns the sum (sixteen partial sums: a single running sum would
/// keep the loop scalar, as floating-point addition may not be reordered).
#[inline(always)]
fn softmax_body(xs: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = xs.chunks_exact_mut(16);
    for c in &mut chunks {
        let c: &mut [f32; 16] = c.try_into().unwrap();
        for j in 0..16 {
            c[j] = exp(c[j] - max);
            acc[j] += c[j];
        }
    }
    let mut sum = 0f32;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    hsum16(acc) + sum
}

/// Mean and 1/√(variance + eps) of a row, with sixteen partial sums (vectorisable).
#[inline(always)]
fn moments_body(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mut s = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            s[j] += c[j];
        }
    }
    let mean = (hsum16(s) + chunks.remainder().iter().sum::<f32>()) / n;
    let mut q = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            let d = c[j] - mean;
            q[j] += d * d;
        }
    }
    let var = (hsum16(q)
        + chunks
            .remainder()
            .iter()
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>())
        / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// out = (x − mean)·rstd·w + b for one row; returns the row's mean and 1/√(var + eps)
/// (the training step keeps them for the backward pass).
#[inline(always)]
fn norm_body(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32) {
    let (mean, rstd) = moments_body(x, eps);
    for i in 0..out.len().min(x.len()).min(w.len()).min(b.len()) {
        out[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
    (mean, rstd)
}

/// RMSNorm of one row: out = x / √(mean(x²) + eps) · w; returns 1/√(mean(x²) + eps).
#[inline(always)]
fn rms_body(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32 {
    let mut q = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            q[j] += c[j] * c[j];
        }
    }
    let ss = hsum16(q) + chunks.remainder().iter().map(|v| v * v).sum::<f32>();
    let rstd = 1.0 / (ss / x.len() as f32 + eps).sqrt();
    for i in 0..out.len().min(x.len()).min(w.len()) {
        out[i] = x[i] * rstd * w[i];
    }
    rstd
}

/// SwiGLU's product: out = silu(g) · u, with silu(g) = g / (1 + e^{−g}).
#[inline(always)]
fn silu_mul_body(g: &[f32], u: &[f32], out: &mut [f32]) {
    for i in 0..out.len().min(g.len()).min(u.len()) {
        out[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
    }
}

/// SiLU (swish) in place: x / (1 + e^{−x}).
#[inline(always)]
fn silu_body(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x /= 1.0 + exp(-*x);
    }
}

/// Softmax of `row[..live]` in place; the rest of the row (masked) set to zero. The
/// last chunk of sixteen is padded with −∞ (whose exp is 0) instead of finished one
/// value at a time: a causal row is short on average, and a scalar tail would cost as
/// much as the rest.
#[inline(always)]
fn causal_softmax_body(row: &mut [f32], live: usize) {
    let end = live.next_multiple_of(16).min(row.len());
    row[live..end]
        .iter_mut()
        .for_each(|x| *x = f32::NEG_INFINITY);
    let (row, dead) = row.split_at_mut(end);
    let mut mx = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for c in &mut chunks {
        for j in 0..16 {
            mx[j] = if c[j] > mx[j] { c[j] } else { mx[j] };
        }
    }
    let max = chunks
        .remainder()
        .iter()
        .fold(hmax16(mx), |m, &x| if x > m { x } else { m });
    let inv = 1.0 / softmax_body(row, max);
    for x in row.iter_mut() {
        *x *= inv;
    }
    for x in dead.iter_mut() {
        *x = 0.0;
    }
}

/// [`causal_softmax_body`] for the whole `t × t` causal block `p` (row `i` keeps
/// `i + 1` entries), four rows at a time: the four rows of a group end in the same
/// chunk of sixteen, so their loops run in step, and the four dependency chains (max,
/// exp and sum, reciprocal) interleave instead of each row waiting on its own.
#[inline(always)]
fn causal_softmax_rows_body(p: &mut [f32], t: usize) {
    const G: usize = 4;
    let groups = t / G;
    for g in 0..groups {
        let i0 = g * G;
        let end = (i0 + G).next_multiple_of(16).min(t);
        let block = &mut p[i0 * t..(i0 + G) * t];
        for r in 0..G {
            block[r * t + i0 + r + 1..r * t + end]
                .iter_mut()
                .for_each(|x| *x = f32::NEG_INFINITY);
        }
        let whole = end / 16;
        let mut mx = [[f32::NEG_INFINITY; 16]; G];
        for c in 0..whole {
            for r in 0..G {
                let x: &[f32; 16] = block[r * t + 16 * c..r * t + 16 * c + 16]
                    .try_into()
                    .unwrap();
                for j in 0..16 {
                    mx[r][j] = if x[j] > mx[r][j] { x[j] } else { mx[r][j] };
                }
            }
        }
        let mut max = [0f32; G];
        for r in 0..G {
            max[r] = block[r * t + 16 * whole..r * t + end]
                .iter()
                .fold(hmax16(mx[r]), |m, &x| if x > m { x } else { m });
        }
        let mut acc = [[0f32; 16]; G];
        for c in 0..whole {
            for r in 0..G {
                let x: &mut [f32; 16] = (&mut block[r * t + 16 * c..r * t + 16 * c + 16])
                    .try_into()
                    .unwrap();
                for j in 0..16 {
                    x[j] = exp(x[j] - max[r]);
                    acc[r][j] += x[j];
                }
            }
        }
        let mut inv = [0f32; G];
        for r in 0..G {
            let mut tail = 0f32;
            for x in block[r * t + 16 * whole..r * t + end].iter_mut() {
                *x = exp(*x - max[r]);
                tail += *x;
            }
            inv[r] = 1.0 / (hsum16(acc[r]) + tail);
        }
        for r in 0..G {
            let row = &mut block[r * t..(r + 1) * t];
            for x in row[..end].iter_mut() {
                *x *= inv[r];
            }
            row[end..].iter_mut().for_each(|x| *x = 0.0);
        }
    }
    for i in groups * G..t {
        causal_softmax_body(&mut p[i * t..(i + 1) * t], i + 1);
    }
}

/// A public function `$name` running `$body` compiled for AVX-512, AVX2 or portably,
/// whichever [`isa`] says this CPU has.
macro_rules! dispatch {
    ($(#[$m:meta])* $name:ident = $body:ident, $avx512:ident, $avx2:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        /// # Safety
        /// The CPU must have AVX-512F and FMA (the dispatcher checks).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn $avx512($($a: $t),*) -> $r {
            $body($($a),*)
        }
        /// # Safety
        /// The CPU must have AVX2 and FMA (the dispatcher checks).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($a: $t),*) -> $r {
            $body($($a),*)
        }
        $crate::kernels::cpu::vmath::dispatch!(@pick $(#[$m])* $name = $body, $avx512, $avx2, ($($a: $t),*) -> $r);
    };
    // The AVX-512 variant written by hand (with intrinsics), `own $avx512`.
    ($(#[$m:meta])* $name:ident = $body:ident, own $avx512:path, $avx2:ident, ($($a:ident: $t:ty),*) -> $r:ty) => {
        /// # Safety
        /// The CPU must have AVX2 and FMA (the dispatcher checks).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($a: $t),*) -> $r {
            $body($($a),*)
        }
        $crate::kernels::cpu::vmath::dispatch!(@pick $(#[$m])* $name = $body, $avx512, $avx2, ($($a: $t),*) -> $r);
    };
    // The AVX2 variant written by hand, `own $avx2`.
    ($(#[$m:meta])* $name:ident = $body:ident, $avx512:ident, own $avx2:path, ($($a:ident: $t:ty),*) -> $r:ty) => {
        /// # Safety
        /// The CPU must have AVX-512F and FMA (the dispatcher checks).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,fma")]
        unsafe fn $avx512($($a: $t),*) -> $r {
            $body($($a),*)
        }
        $crate::kernels::cpu::vmath::dispatch!(@pick $(#[$m])* $name = $body, $avx512, $avx2, ($($a: $t),*) -> $r);
    };
    // Both variants written by hand.
    ($(#[$m:meta])* $name:ident = $body:ident, own $avx512:path, own $avx2:path, ($($a:ident: $t:ty),*) -> $r:ty) => {
        $crate::kernels::cpu::vmath::dispatch!(@pick $(#[$m])* $name = $body, $avx512, $avx2, ($($a: $t),*) -> $r);
    };
    (@pick $(#[$m:meta])* $name:ident = $body:ident, $avx512:path, $avx2:path, ($($a:ident: $t:ty),*) -> $r:ty) => {
        $(#[$m])*
        pub fn $name($($a: $t),*) -> $r {
            match $crate::kernels::cpu::isa() {
                // SAFETY: the features were detected at run time.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::cpu::Isa::Avx512 => unsafe { $avx512($($a),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::cpu::Isa::Avx2 => unsafe { $avx2($($a),*) },
                _ => $body($($a),*),
            }
        }
    };
}

pub(crate) use dispatch;

dispatch!(
    /// GELU (tanh form) in place.
    gelu_tanh = gelu_body, gelu512, gelu256, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// GELU (erf form) in place.
    gelu_erf = gelu_erf_body, gelu_erf512, gelu_erf256, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// `x ← e^{x − max}` in place; returns Σ.
    exp_shifted = softmax_body, softmax512, softmax256, (xs: &mut [f32], max: f32) -> f32
);
dispatch!(
    /// Layer norm of one row; returns its mean and 1/√(var + eps).
    layer_norm = norm_body, own avx512::layer_norm, norm256, (x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) -> (f32, f32)
);
dispatch!(
    /// RMSNorm of one row; returns 1/√(mean(x²) + eps).
    rms_norm = rms_body, rms512, rms256, (x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> f32
);
dispatch!(
    /// SiLU (swish) in place.
    silu = silu_body, silu512, silu256, (xs: &mut [f32]) -> ()
);
dispatch!(
    /// SwiGLU's product `silu(g) · u` into `out`.
    silu_mul = silu_mul_body, silu_mul512, own avx2::silu_mul, (g: &[f32], u: &[f32], out: &mut [f32]) -> ()
);

dispatch!(
    /// Softmax of `row[..live]` in place; the rest of the row (masked) set to zero.
    causal_softmax = causal_softmax_body, causal_softmax512, own avx2::softmax_row, (row: &mut [f32], live: usize) -> ()
);
dispatch!(
    /// [`causal_softmax`] of every row `i` of the `t × t` block `p` with `i + 1` live
    /// entries.
    causal_softmax_rows = causal_softmax_rows_body, own avx512::causal_softmax_rows, own avx2::causal_softmax_rows, (p: &mut [f32], t: usize) -> ()
);

/// Row operations written with AVX2 intrinsics (see the module's header).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

/// Row operations written with AVX-512 intrinsics: masked loads and stores finish a row
/// in whole registers, and the reductions stay in registers (the plain loops, compiled
/// for AVX-512, kept their partial sums on the stack and reduced them one value at a
/// time).
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes `..n` of a register (all for `n` ≥ 16).
    #[inline(always)]
    pub(crate) fn lanes(n: usize) -> __mmask16 {
        if n >= 16 {
            0xFFFF
        } else {
            ((1u32 << n) - 1) as __mmask16
        }
    }

    /// [`super::exp`] of sixteen values ≤ 0 (the polynomial and reduction of the
    /// scalar version; 2^k applied with `scalef`, so values below −87.3 come out as
    /// tiny subnormals rather than exactly 0).
    #[inline]
    #[target_feature(enable = "avx512f,fma")]
    pub(crate) fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.3));
        let k =
            _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm512_fmadd_ps(
                x,
                _mm512_set1_ps(std::f32::consts::LOG2_E),
                _mm512_set1_ps(0.5),
            ));
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(super::LN2_LO), r);
        let mut p = _mm512_set1_ps(super::EXP_POLY[0]);
        for c in &super::EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        _mm512_scalef_ps(p, k)
    }

    /// [`super::layer_norm`] for rows of whole registers (others take the plain loop).
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f,fma")]
    pub(crate) unsafe fn layer_norm(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> (f32, f32) {
        let n = x.len();
        if !n.is_multiple_of(16) || w.len() < n || b.len() < n || out.len() < n {
            return super::norm_body(x, w, b, eps, out);
        }
        let (xp, wp, bp, op) = (x.as_ptr(), w.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        // SAFETY (all accesses): c + 16 ≤ n ≤ every length (checked above).
        let mut s = _mm512_setzero_ps();
        for c in (0..n).step_by(16) {
            s = _mm512_add_ps(s, _mm512_loadu_ps(xp.add(c)));
        }
        let mean = _mm512_reduce_add_ps(s) / n as f32;
        let mv = _mm512_set1_ps(mean);
        let mut q = _mm512_setzero_ps();
        for c in (0..n).step_by(16) {
            let d = _mm512_sub_ps(_mm512_loadu_ps(xp.add(c)), mv);
            q = _mm512_fmadd_ps(d, d, q);
        }
        let rstd = 1.0 / (_mm512_reduce_add_ps(q) / n as f32 + eps).sqrt();
        let rv = _mm512_set1_ps(rstd);
        for c in (0..n).step_by(16) {
            let xh = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xp.add(c)), mv), rv);
            let o = _mm512_fmadd_ps(xh, _mm512_loadu_ps(wp.add(c)), _mm512_loadu_ps(bp.add(c)));
            _mm512_storeu_ps(op.add(c), o);
        }
        (mean, rstd)
    }

    /// The causal softmax of the `t × t` block `p`, a row at a time (row `i`: `i + 1`
    /// live values, zeros after). A row's values stay in registers (rather than being
    /// stored between passes: a masked store is not forwarded to the load that reads it
    /// back, which then waits for the store to retire). Rows past 256 values take the
    /// plain loop.
    ///
    /// # Safety
    /// AVX-512F must be present.
    #[target_feature(enable = "avx512f,fma")]
    pub(crate) unsafe fn causal_softmax_rows(p: &mut [f32], t: usize) {
        const MAXC: usize = 16;
        if t > 16 * MAXC {
            return super::causal_softmax_rows_body(p, t);
        }
        assert!(p.len() >= t * t);
        for i in 0..t {
            let row = p.as_mut_ptr().add(i * t);
            let live = i + 1;
            let chunks = live.div_ceil(16);
            let mut x = [_mm512_set1_ps(f32::NEG_INFINITY); MAXC];
            let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
            for (c, x) in x[..chunks].iter_mut().enumerate() {
                // SAFETY (all accesses): lanes masked to the row's first t values.
                *x = _mm512_mask_loadu_ps(*x, lanes(live - 16 * c), row.add(16 * c));
                mx = _mm512_max_ps(mx, *x);
            }
            let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
            let mut sum = _mm512_setzero_ps();
            for (c, x) in x[..chunks].iter_mut().enumerate() {
                *x = _mm512_maskz_mov_ps(lanes(live - 16 * c), exp16(_mm512_sub_ps(*x, max)));
                sum = _mm512_add_ps(sum, *x);
            }
            let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
            for (c, x) in x[..chunks].iter().enumerate() {
                _mm512_mask_storeu_ps(row.add(16 * c), lanes(t - 16 * c), _mm512_mul_ps(*x, inv));
            }
            // The rest of the row: zeros.
            let mut c = 16 * chunks;
            while c < t {
                _mm512_mask_storeu_ps(row.add(c), lanes(t - c), _mm512_setzero_ps());
                c += 16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf by its Taylor series (|x| < 3) or the continued fraction of erfc, in f64.
    fn erf_f64(x: f64) -> f64 {
        if x.abs() < 3.0 {
            let (mut term, mut sum, mut k) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                k += 1.0;
                term *= -x * x / k;
                sum += term / (2.0 * k + 1.0);
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // erfc(x) = e^{−x²}/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + …)))).
            let ax = x.abs();
            let mut f = ax;
            for n in (1..60).rev() {
                f = ax + n as f64 / 2.0 / f;
            }
            let erfc = (-ax * ax).exp() / std::f64::consts::PI.sqrt() / f;
            (1.0 - erfc).copysign(x)
        }
    }

    /// The erf GELU and its derivative against f64 (the derivative also against a
    /// central difference of the f64 GELU), over −10..10 and on every instruction set.
    #[test]
    fn erf_gelu_and_its_derivative_match_f64() {
        let gelu64 = |x: f64| 0.5 * x * (1.0 + erf_f64(x / 2f64.sqrt()));
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.005).collect();
        let mut got = xs.clone();
        gelu_erf(&mut got);
        for (&x, &g) in xs.iter().zip(&got) {
            let want = gelu64(x as f64);
            assert!(
                (g as f64 - want).abs() < 3e-7 * (1.0 + want.abs()),
                "gelu({x}) = {g}, want {want}"
            );
            let h = 1e-4;
            let slope = (gelu64(x as f64 + h) - gelu64(x as f64 - h)) / (2.0 * h);
            let d = gelu_erf_and_grad(x).1 as f64;
            assert!((d - slope).abs() < 1e-6, "gelu'({x}) = {d}, want {slope}");
        }
        assert!((erf_f64(0.5) - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert!((erf_f64(3.5) - 0.999_999_256_901_627_7).abs() < 1e-15);
    }

    /// The causal softmax of whole blocks (the training attention's) and of single rows
    /// (the decoder's) against the softmax in f64, at lengths with and without whole
    /// registers, with spread-out scores (some far below the row's maximum).
    #[test]
    fn causal_softmaxes_match_f64() {
        for t in [1usize, 7, 16, 33, 64, 70, 200, 300] {
            let orig: Vec<f32> = (0..t * t)
                .map(|i| ((i * 7919) % 1013) as f32 / 25.0 - 20.0)
                .collect();
            let mut block = orig.clone();
            causal_softmax_rows(&mut block, t);
            for i in 0..t {
                let mut row = orig[i * t..(i + 1) * t].to_vec();
                causal_softmax(&mut row, i + 1);
                let src = &orig[i * t..i * t + i + 1];
                let max = src.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let sum: f64 = src.iter().map(|&x| (x as f64 - max).exp()).sum();
                for j in 0..t {
                    let want = if j <= i {
                        (orig[i * t + j] as f64 - max).exp() / sum
                    } else {
                        0.0
                    };
                    for (what, got) in [("rows", block[i * t + j]), ("row", row[j])] {
                        assert!(
                            (got as f64 - want).abs() <= 1e-5 * want + 1e-8,
                            "{what} t {t} [{i},{j}]: {got} vs {want}"
                        );
                        if j > i {
                            assert_eq!(got, 0.0, "{what} t {t} [{i},{j}] is masked");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn exp_and_gelu_match_the_library_functions() {
        let xs: Vec<f32> = (-2000..=2000).map(|i| i as f32 * 0.05).collect();
        for &x in &xs {
            let (a, b) = (exp(x), x.exp());
            if x < -87.3 {
                assert!(a == 0.0 && b < 1.3e-38, "exp({x}) = {a}");
                continue;
            }
            if x > 88.3 {
                assert!(a > 1.9e38 && a.is_finite(), "exp({x}) = {a}");
                continue;
            }
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b,
                "exp({x}): {a} vs {b}"
            );
        }
        assert_eq!(exp(-200.0), 0.0);
        let mut g = xs.clone();
        gelu_tanh(&mut g);
        for (&x, &y) in xs.iter().zip(&g) {
            let want = 0.5
                * x as f64
                * (1.0
                    + (0.797_884_560_802_865_4 * (x as f64 + 0.044715 * (x as f64).powi(3)))
                        .tanh());
            assert!(
                (y as f64 - want).abs() < 1e-6 * (1.0 + want.abs()),
                "gelu({x}): {y} vs {want}"
            );
        }
        let row: Vec<f32> = (0..37)
            .map(|i| (i as f32 * 0.7).sin() * 3.0 + 1.0)
            .collect();
        let (w, b) = (vec![1.5f32; 37], vec![0.25f32; 37]);
        let mut out = vec![0f32; 37];
        layer_norm(&row, &w, &b, 1e-5, &mut out);
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / 37.0;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 37.0;
        for (o, &v) in out.iter().zip(&row) {
            let want = (v as f64 - mean) / (var + 1e-5).sqrt() * 1.5 + 0.25;
            assert!((*o as f64 - want).abs() < 1e-5, "{o} vs {want}");
        }
        let mut s = vec![1.0f32, 2.0, 3.0];
        let sum = exp_shifted(&mut s, 3.0);
        let want = (-2f32).exp() + (-1f32).exp() + 1.0;
        assert!((sum - want).abs() < 1e-6, "{sum} vs {want}");
    }
}
