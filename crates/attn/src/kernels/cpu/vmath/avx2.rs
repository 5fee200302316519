//! Row operations in AVX2 registers, where the compiled loops fall short: the exp of
//! several registers in step (the GELU and the softmax go through it), and the causal
//! softmax with its reductions in registers and its rows in step. A row's softmax (as a
//! row's norm) is a chain of dependent steps from its first max to its last store; the
//! loops here take several registers or rows through each step together, so that the
//! out-of-order core has independent work while one chain waits.

use std::arch::x86_64::*;

/// [`super::exp`] of `N` registers of eight values: the same reduction and
/// polynomial; inputs are clamped to −87.3..=88.3 (so 2^k, built in the exponent
/// bits, stays a normal number: k is −126..=127). Each step is taken for all the
/// registers before the next: the exp is a chain of some twenty dependent
/// operations, and one register's chain at a time leaves the out-of-order window too
/// few independent ones to keep the FMA pipes busy (the GELU rows ran at 1.15 ns an
/// element so on a Zen 3 core, 0.67 ns with four registers in step).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn exp8x<const N: usize>(x: [__m256; N]) -> [__m256; N] {
    let x = x.map(|x| {
        _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.3),
        )
    });
    let k = x.map(|x| {
        _mm256_round_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ))
    });
    let r: [__m256; N] = std::array::from_fn(|i| {
        let r = _mm256_fnmadd_ps(k[i], _mm256_set1_ps(super::LN2_HI), x[i]);
        _mm256_fnmadd_ps(k[i], _mm256_set1_ps(super::LN2_LO), r)
    });
    let mut p = [_mm256_set1_ps(super::EXP_POLY[0]); N];
    for c in &super::EXP_POLY[1..] {
        for i in 0..N {
            p[i] = _mm256_fmadd_ps(p[i], r[i], _mm256_set1_ps(*c));
        }
    }
    std::array::from_fn(|i| {
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(k[i]),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(p[i], _mm256_castsi256_ps(bits))
    })
}

/// Lanes `..n` of a register (all for `n` ≥ 8), as a mask of whole lanes.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn lanes(n: usize) -> __m256i {
    let n = n.min(8) as i32;
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// Stores the lanes of `v` below `n` at `p` (all eight for `n` ≥ 8): a plain store
/// when all of them, else one at a time (AMD's masked stores are microcoded, about
/// ten times as slow as a store).
///
/// # Safety
/// `p` must be writable for `min(n, 8)` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn store_lanes(p: *mut f32, n: usize, v: __m256) {
    if n >= 8 {
        _mm256_storeu_ps(p, v);
    } else {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(a.as_ptr(), p, n);
    }
}

/// The largest of eight values, in every lane.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hmax(v: __m256) -> __m256 {
    let v = _mm256_max_ps(v, _mm256_permute2f128_ps::<1>(v, v));
    let v = _mm256_max_ps(v, _mm256_shuffle_ps::<0b01_00_11_10>(v, v));
    _mm256_max_ps(v, _mm256_shuffle_ps::<0b10_11_00_01>(v, v))
}

/// The sum of eight values.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) fn hsum(v: __m256) -> f32 {
    let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)))
}

/// [`super::causal_softmax`]: the softmax of `row[..live]` in place, the rest of the
/// row zero. The row's registers go through [`exp8x`] four at a time; the last, partial
/// one is read under a mask and stored lane by lane ([`store_lanes`]).
#[target_feature(enable = "avx2,fma")]
pub(crate) fn softmax_row(row: &mut [f32], live: usize) {
    let (len, live) = (row.len(), live.min(row.len()));
    if live == 0 {
        row.fill(0.0);
        return;
    }
    let p = row.as_mut_ptr();
    let (whole, rest) = (live / 8, live % 8);
    let tail = lanes(rest);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    // SAFETY (all accesses): registers c < whole lie in row[..live]; the partial
    // one is read under `tail` (its lanes < live) and stored only into the lanes
    // the row has.
    let load = |c: usize| unsafe { _mm256_loadu_ps(p.add(8 * c)) };
    let last = || unsafe {
        _mm256_blendv_ps(
            ninf,
            _mm256_maskload_ps(p.add(8 * whole), tail),
            _mm256_castsi256_ps(tail),
        )
    };
    let mut mx = [ninf; 4];
    for c in 0..whole {
        mx[c % 4] = _mm256_max_ps(mx[c % 4], load(c));
    }
    if rest > 0 {
        mx[3] = _mm256_max_ps(mx[3], last());
    }
    let max = hmax(_mm256_max_ps(
        _mm256_max_ps(mx[0], mx[1]),
        _mm256_max_ps(mx[2], mx[3]),
    ));
    // e^{x − max}, zero where x − max is below exp's range (as [`super::exp`]).
    let floor = _mm256_set1_ps(-87.3);
    let shifted = |x: __m256| _mm256_sub_ps(x, max);
    let keep = |d: __m256, e: __m256| _mm256_and_ps(e, _mm256_cmp_ps::<_CMP_GE_OQ>(d, floor));
    let mut sum = [_mm256_setzero_ps(); 4];
    let mut c = 0;
    while c + 4 <= whole {
        let d: [__m256; 4] = std::array::from_fn(|i| shifted(load(c + i)));
        let e = exp8x(d);
        for i in 0..4 {
            let e = keep(d[i], e[i]);
            sum[i] = _mm256_add_ps(sum[i], e);
            // SAFETY: register c + i < whole.
            unsafe { _mm256_storeu_ps(p.add(8 * (c + i)), e) };
        }
        c += 4;
    }
    while c < whole {
        let d = shifted(load(c));
        let e = keep(d, exp8x([d])[0]);
        sum[c % 4] = _mm256_add_ps(sum[c % 4], e);
        // SAFETY: register c < whole.
        unsafe { _mm256_storeu_ps(p.add(8 * c), e) };
        c += 1;
    }
    let mut last_e = _mm256_setzero_ps();
    if rest > 0 {
        let d = shifted(last());
        // Lanes past `live` are −∞ − max: below the floor, so zero.
        last_e = keep(d, exp8x([d])[0]);
        sum[3] = _mm256_add_ps(sum[3], last_e);
    }
    let total = hsum(_mm256_add_ps(
        _mm256_add_ps(sum[0], sum[1]),
        _mm256_add_ps(sum[2], sum[3]),
    ));
    let inv = _mm256_set1_ps(1.0 / total);
    for c in 0..whole {
        // SAFETY: register c < whole.
        unsafe { _mm256_storeu_ps(p.add(8 * c), _mm256_mul_ps(load(c), inv)) };
    }
    let mut done = 8 * whole;
    if rest > 0 {
        // SAFETY: lanes below len − 8·whole lie in the row.
        unsafe { store_lanes(p.add(done), len - done, _mm256_mul_ps(last_e, inv)) };
        done = (done + 8).min(len);
    }
    row[done..].fill(0.0);
}

/// [`super::causal_softmax_rows`]: the rows of the `t × t` block four at a time,
/// each step (a register's max, exp, sum; the reductions; the reciprocal) taken for
/// the four rows together. A row's steps depend on each other from its first max to
/// its last store, and one row at a time left the core waiting on those chains.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // r indexes the rows' registers and the rows
pub(crate) fn causal_softmax_rows(p: &mut [f32], t: usize) {
    const G: usize = 4;
    assert!(p.len() >= t * t);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let floor = _mm256_set1_ps(-87.3);
    let base = p.as_mut_ptr();
    for i0 in (0..t / G * G).step_by(G) {
        // Row i0 + r keeps i0 + r + 1 entries; registers up to `regs` are read.
        let live: [usize; G] = std::array::from_fn(|r| i0 + r + 1);
        let regs = live[G - 1].div_ceil(8);
        let row = |r: usize| base.wrapping_add((i0 + r) * t);
        // Register c of row r, −∞ past what the row keeps.
        // SAFETY: lanes below live[r] − 8c lie in row r (live[r] ≤ t).
        let load = |r: usize, c: usize| unsafe {
            if live[r] >= 8 * c + 8 {
                return _mm256_loadu_ps(row(r).add(8 * c));
            }
            let m = lanes(live[r].saturating_sub(8 * c));
            _mm256_blendv_ps(
                ninf,
                _mm256_maskload_ps(row(r).add(8 * c), m),
                _mm256_castsi256_ps(m),
            )
        };
        let mut mx = [ninf; G];
        for c in 0..regs {
            for r in 0..G {
                mx[r] = _mm256_max_ps(mx[r], load(r, c));
            }
        }
        let max = mx.map(|m| hmax(m));
        let mut sum = [_mm256_setzero_ps(); G];
        for c in 0..regs {
            let d: [__m256; G] = std::array::from_fn(|r| _mm256_sub_ps(load(r, c), max[r]));
            let e = exp8x(d);
            for r in 0..G {
                // Zero below exp's range (as [`super::exp`]) and past the row's end.
                let e = _mm256_and_ps(e[r], _mm256_cmp_ps::<_CMP_GE_OQ>(d[r], floor));
                sum[r] = _mm256_add_ps(sum[r], e);
                // SAFETY: lanes below t − 8c lie in row r.
                unsafe { store_lanes(row(r).add(8 * c), t - 8 * c, e) };
            }
        }
        let inv = sum.map(|s| _mm256_set1_ps(1.0 / hsum(s)));
        for r in 0..G {
            for c in 0..regs {
                // SAFETY: lanes below t − 8c lie in row r.
                unsafe {
                    let at = row(r).add(8 * c);
                    let x = if 8 * c + 8 <= t {
                        _mm256_loadu_ps(at)
                    } else {
                        _mm256_maskload_ps(at, lanes(t - 8 * c))
                    };
                    store_lanes(at, t - 8 * c, _mm256_mul_ps(x, inv[r]));
                }
            }
            let done = (8 * regs).min(t);
            // SAFETY: the rest of row r.
            unsafe { std::slice::from_raw_parts_mut(row(r).add(done), t - done).fill(0.0) };
        }
    }
    for i in t / G * G..t {
        softmax_row(&mut p[i * t..(i + 1) * t], i + 1);
    }
}

/// Walks `g[..n]` by whole registers, handing `regs(c, e)` the e^{−g} of the registers
/// from `c`: four in step (see [`exp8x`]) while they fit, then one at a time; returns
/// where the whole registers end (the caller finishes the rest, fewer than eight
/// values). The sigmoid of SiLU and SwiGLU, forward and backward, starts here.
///
/// # Safety
/// `g` must be readable for `n` values.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn by_exp_neg(
    g: *const f32,
    n: usize,
    mut regs: impl FnMut(usize, &[__m256]),
) -> usize {
    // −g of register i from c (c + 8·(i + 1) ≤ n: the walk's bound).
    let neg =
        |c: usize, i: usize| _mm256_sub_ps(_mm256_setzero_ps(), _mm256_loadu_ps(g.add(c + 8 * i)));
    let mut c = 0;
    while c + 32 <= n {
        regs(c, &exp8x::<4>(std::array::from_fn(|i| neg(c, i))));
        c += 32;
    }
    while c + 8 <= n {
        regs(c, &exp8x([neg(c, 0)]));
        c += 8;
    }
    c
}

/// [`super::silu_mul`]: `out = silu(g) · u`, the exp of four registers in step.
#[target_feature(enable = "avx2,fma")]
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len().min(g.len()).min(u.len());
    let (gp, up, op) = (g.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    let regs = |c: usize, e: &[__m256]| {
        for (i, &e) in e.iter().enumerate() {
            // SAFETY: c + 8·(i + 1) ≤ n ≤ every length.
            unsafe {
                let gv = _mm256_loadu_ps(gp.add(c + 8 * i));
                let s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.0), e));
                let uv = _mm256_loadu_ps(up.add(c + 8 * i));
                _mm256_storeu_ps(op.add(c + 8 * i), _mm256_mul_ps(s, uv));
            }
        }
    };
    // SAFETY: g holds n values.
    let done = unsafe { by_exp_neg(gp, n, regs) };
    super::silu_mul_body(&g[done..n], &u[done..n], &mut out[done..n]);
}
