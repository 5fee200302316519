//! f32 matrix products over weights stored in column panels.
//!
//! A `[rows, cols]` weight matrix is kept as panels of [`NR`] rows, each panel laid out
//! `[cols][NR]` (the last panel padded with zeros). A product then streams each panel
//! front to back once, broadcasting one input value against 32 weights per step: the
//! same loop is a bandwidth-bound matrix-vector product at batch 1 and, with several
//! input rows sharing each panel load, a compute-bound matrix product for prompts. The
//! inner loop is plain Rust over fixed-size arrays, compiled three times (AVX-512, AVX2,
//! portable) and picked at run time.
//!
//! Why one file of this length: the packing, the three ISA variants of the register
//! block (plain and transposed-input), their prefetching and the task splitting are one
//! kernel whose parts only make sense together (block shapes, panel width and prefetch
//! distances are tuned against each other); splitting them would scatter `NR` and the
//! row-block constants across files.

use rayon::prelude::*;

use super::{isa, Isa};

/// Weight rows per panel.
pub const NR: usize = 32;

/// `go!(M)` for the block's row count `$m` (1 to 12) as a constant.
macro_rules! by_rows {
    ($m:expr, $go:ident) => {
        match $m {
            1 => $go!(1),
            2 => $go!(2),
            3 => $go!(3),
            4 => $go!(4),
            5 => $go!(5),
            6 => $go!(6),
            7 => $go!(7),
            8 => $go!(8),
            9 => $go!(9),
            10 => $go!(10),
            11 => $go!(11),
            12 => $go!(12),
            m => unreachable!("{m} rows per block"),
        }
    };
}
pub(crate) use by_rows;

/// Panels for row-major `values` `[rows, cols]`.
pub fn pack(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; packed_len(rows, cols)];
    pack_into(values, rows, cols, &mut out);
    out
}

/// The length of the panels of a `[rows, cols]` matrix.
pub fn packed_len(rows: usize, cols: usize) -> usize {
    rows.div_ceil(NR) * cols * NR
}

/// [`pack`] into `out` ([`packed_len`] long), for panels kept in a buffer of the
/// caller's choosing (weights: [`super::huge::HugeVec`]).
pub fn pack_into(values: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    out[..packed_len(rows, cols)]
        .par_chunks_mut(cols.max(1) * NR)
        .enumerate()
        .for_each(|(p, panel)| pack_panel(values, rows, cols, p, panel));
}

/// Panel `p` of row-major `values` `[rows, cols]`, written into `panel` (`cols · NR`
/// long; the rows past the last are zero).
pub fn pack_panel(values: &[f32], rows: usize, cols: usize, p: usize, panel: &mut [f32]) {
    let valid = NR.min(rows - p * NR);
    if valid < NR {
        panel.iter_mut().for_each(|v| *v = 0.0);
    }
    assert!(panel.len() >= cols * NR && values.len() >= (p * NR + valid) * cols);
    // Whole square blocks in registers where the ISA has them.
    #[cfg(target_arch = "x86_64")]
    let (level, side) = (isa(), transpose_side(isa()));
    #[cfg(target_arch = "x86_64")]
    let whole = if side > 0 && valid == NR {
        let c16 = cols / side * side;
        for c0 in (0..c16).step_by(side) {
            // The rows' next sixteen values (a line further on each of 32 rows, often
            // pages apart: more streams than the hardware prefetcher follows).
            for j in 0..NR {
                let at = values.as_ptr().wrapping_add((p * NR + j) * cols + c0 + 16);
                // SAFETY: a prefetch reads nothing and cannot fault.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        at as *const i8,
                    )
                };
            }
            for j0 in (0..NR).step_by(side) {
                // SAFETY: rows p·NR + j0.. (`side` of them, all < rows) hold columns
                // c0..c0 + side ≤ cols; panel rows c0..c0 + side hold NR values (bounds
                // asserted above). The ISA was detected.
                unsafe {
                    transpose_block(
                        level,
                        values.as_ptr().add((p * NR + j0) * cols + c0),
                        cols,
                        panel.as_mut_ptr().add(c0 * NR + j0),
                        NR,
                    )
                }
            }
        }
        c16
    } else {
        0
    };
    #[cfg(not(target_arch = "x86_64"))]
    let whole = 0;
    // Sixteen columns (one cache line of each row) at a time, so the sixteen panel
    // rows being written stay in L1 while all the rows are read.
    for c0 in (whole..cols).step_by(16) {
        let c1 = (c0 + 16).min(cols);
        for j in 0..valid {
            let row = &values[(p * NR + j) * cols + c0..(p * NR + j) * cols + c1];
            for (kk, &v) in row.iter().enumerate() {
                panel[(c0 + kk) * NR + j] = v;
            }
        }
    }
}

/// The side of the square blocks [`transpose_block`] moves in registers: 16 with
/// AVX-512, 8 with AVX2, none portably (the callers then copy element by element).
pub(crate) fn transpose_side(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 16,
        Isa::Avx2 => 8,
        Isa::Portable => 0,
    }
}

/// `dst[c·ldd + r] = src[r·lds + c]` for one block of [`transpose_side`]`(isa)`.
///
/// # Safety
/// `isa` must be [`isa()`] or lower and not portable; `src` (`side` rows `lds` apart)
/// and `dst` (`side` rows `ldd` apart) must hold `side` floats per row.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn transpose_block(
    isa: Isa,
    src: *const f32,
    lds: usize,
    dst: *mut f32,
    ldd: usize,
) {
    match isa {
        Isa::Avx512 => transpose16(src, lds, dst, ldd),
        Isa::Avx2 => transpose8(src, lds, dst, ldd),
        Isa::Portable => unreachable!("no register transpose without SIMD"),
    }
}

/// [`transpose16`] for an 8 × 8 block in AVX2 registers: rows interleaved by 32 bits,
/// then by 64 bits, then the 128-bit halves exchanged.
///
/// # Safety
/// AVX must be present, and `src` (8 rows `lds` apart) and `dst` (8 rows `ldd` apart)
/// must hold 8 floats per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
pub(crate) unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * lds)));
    let mut t = [_mm256_setzero_ps(); 8];
    for k in 0..4 {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // u[4g + m], each half: column 4·half + m of rows 4g..4g + 4.
    let mut u = [_mm256_setzero_ps(); 8];
    for g in 0..2 {
        u[4 * g] = _mm256_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm256_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm256_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm256_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    for m in 0..4 {
        _mm256_storeu_ps(
            dst.add(m * ldd),
            _mm256_permute2f128_ps::<0x20>(u[m], u[4 + m]),
        );
        _mm256_storeu_ps(
            dst.add((4 + m) * ldd),
            _mm256_permute2f128_ps::<0x31>(u[m], u[4 + m]),
        );
    }
}

/// `dst[c·ldd + r] = src[r·lds + c]` for a 16 × 16 block, in registers: pairs of rows
/// interleaved by 32 bits, then by 64 bits (each 128-bit lane then holds one column of
/// four rows), then the lanes gathered across registers, twice.
///
/// # Safety
/// AVX-512F must be present, and `src` (16 rows `lds` apart) and `dst` (16 rows `ldd`
/// apart) must hold 16 floats per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    use std::arch::x86_64::*;
    let r: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(src.add(i * lds)));
    // t[2k], t[2k+1]: rows 2k, 2k+1 interleaved (low and high halves of each lane).
    let mut t = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // u[4g + m], lane L: column 4L + m of rows 4g..4g + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        let d = |x: __m512| _mm512_castps_pd(x);
        let (a, b, c, e) = (
            d(t[4 * g]),
            d(t[4 * g + 1]),
            d(t[4 * g + 2]),
            d(t[4 * g + 3]),
        );
        u[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    // Column 4L + m is lane L of u[m], u[4 + m], u[8 + m], u[12 + m].
    for m in 0..4 {
        let x_lo = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
        let x_hi = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
        let y_lo = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
        let y_hi = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
        let put = |col: usize, v: __m512| _mm512_storeu_ps(dst.add(col * ldd), v);
        put(m, _mm512_shuffle_f32x4::<0x88>(x_lo, y_lo));
        put(4 + m, _mm512_shuffle_f32x4::<0xDD>(x_lo, y_lo));
        put(8 + m, _mm512_shuffle_f32x4::<0x88>(x_hi, y_hi));
        put(12 + m, _mm512_shuffle_f32x4::<0xDD>(x_hi, y_hi));
    }
}

/// Row `r` of a packed matrix.
pub fn unpack_row(panels: &[f32], cols: usize, r: usize, out: &mut [f32]) {
    unpack_range(panels, cols, r, 0, &mut out[..cols]);
}

/// Elements `c0..c0 + out.len()` of row `r` of a packed matrix.
pub fn unpack_range(panels: &[f32], cols: usize, r: usize, c0: usize, out: &mut [f32]) {
    let panel = &panels[(r / NR) * cols * NR..][..cols * NR];
    for (i, o) in out.iter_mut().enumerate() {
        *o = panel[(c0 + i) * NR + r % NR];
    }
}

/// Where a product leaves its block of sums: the first `cols` (at most [`NR`]) of row
/// `r` at `ptr + r·ld`, written over what is there or, with `add`, added to it. Whole
/// panels are stored (or loaded, added and stored) by the kernels straight from their
/// accumulators; a last panel narrower than [`NR`] goes through a block of its own
/// ([`through_block`]). A block kept aside and then copied or added into the output by
/// generic code had cost 3–4% of a training step.
#[derive(Clone, Copy)]
pub(crate) struct Dst {
    ptr: *mut f32,
    ld: usize,
    cols: usize,
    add: bool,
}

impl Dst {
    /// A block of its own, overwritten, of which the first `cols` columns are wanted
    /// (the AVX2 kernel leaves the second half alone when `cols` ≤ 16; the others
    /// write whole rows).
    fn block(out: &mut [[f32; NR]], cols: usize) -> Dst {
        Dst {
            ptr: out.as_mut_ptr().cast(),
            ld: NR,
            cols,
            add: false,
        }
    }

    /// The first `cols` values of rows `ld` apart from `ptr`, overwritten or (with `add`)
    /// added to.
    ///
    /// # Safety
    /// Every product handed it writes `cols` values at `ptr + r·ld` for each of its rows
    /// `r`: those must be valid for reads and writes, and touched by no other thread
    /// meanwhile.
    pub(crate) unsafe fn rows(ptr: *mut f32, ld: usize, cols: usize, add: bool) -> Dst {
        debug_assert!(cols <= NR);
        Dst { ptr, ld, cols, add }
    }

    /// Stores row `r`'s sums `v` (portable kernels, and narrow panels).
    ///
    /// # Safety
    /// As for [`Dst::rows`].
    #[inline(always)]
    unsafe fn put(self, r: usize, v: &[f32; NR]) {
        let o = std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld), self.cols);
        if self.add {
            for (o, v) in o.iter_mut().zip(v) {
                *o += v;
            }
        } else {
            o.copy_from_slice(&v[..self.cols]);
        }
    }
}

/// Runs `kernel` for `rows` rows into `out`: straight when `out` is a whole panel wide
/// (the kernels store [`NR`] values a row), else into a block whose first `out.cols`
/// columns are then stored.
///
/// # Safety
/// `out` must be valid for `rows` rows (see [`Dst::rows`]), and `kernel` write `rows`
/// rows of the [`Dst`] it is given.
#[inline(always)]
unsafe fn through_block(out: Dst, rows: usize, kernel: impl FnOnce(Dst)) {
    if out.cols == NR {
        return kernel(out);
    }
    let mut block = [[0f32; NR]; 12];
    let block = &mut block[..rows];
    kernel(Dst::block(block, out.cols));
    for (r, v) in block.iter().enumerate() {
        out.put(r, v);
    }
}

/// `out[r][j] = Σ_kk x_r[kk] · panel[kk·ps + j]` for `k` steps of the `MR` input rows
/// `x_r` (`ps` = [`NR`] for a packed panel; more for one read in place), left in `out`
/// (see [`Dst`]).
///
/// # Safety
/// `out` must be valid for the `MR` rows (see [`Dst::rows`]).
#[inline(always)]
unsafe fn body<const MR: usize>(x: &[&[f32]; MR], panel: &[f32], k: usize, ps: usize, out: Dst) {
    for r in x {
        assert!(r.len() >= k);
    }
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        let p: &[f32; NR] = panel[kk * ps..kk * ps + NR].try_into().unwrap();
        for r in 0..MR {
            // SAFETY: every x[r] holds at least k values (asserted above).
            let xv = unsafe { *x[r].get_unchecked(kk) };
            for j in 0..NR {
                acc[r][j] = xv.mul_add(p[j], acc[r][j]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out.put(r, a);
    }
}

/// One input row: four independent partial sums over alternating steps, so that the
/// additions do not wait on each other (a single chain is bound by the FMA latency).
#[inline(always)]
fn body_one(x: &[f32], panel: &[f32], out: &mut [f32; NR]) {
    let k = panel.len() / NR;
    assert!(x.len() >= k);
    let mut acc = [[0f32; NR]; 4];
    let mut kk = 0;
    while kk + 4 <= k {
        // The panel 8 KiB ahead (a prefetch past the end is harmless).
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
            let ahead = panel.as_ptr().wrapping_add(kk * NR + 2048) as *const i8;
            let far = panel.as_ptr().wrapping_add(kk * NR + 8192) as *const i8;
            for l in 0..8 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * l));
                _mm_prefetch::<_MM_HINT_T1>(far.wrapping_add(64 * l));
            }
        }
        for (u, a) in acc.iter_mut().enumerate() {
            let p: &[f32; NR] = panel[(kk + u) * NR..(kk + u + 1) * NR].try_into().unwrap();
            let xv = x[kk + u];
            for j in 0..NR {
                a[j] = xv.mul_add(p[j], a[j]);
            }
        }
        kk += 4;
    }
    while kk < k {
        let p: &[f32; NR] = panel[kk * NR..(kk + 1) * NR].try_into().unwrap();
        for j in 0..NR {
            acc[0][j] = x[kk].mul_add(p[j], acc[0][j]);
        }
        kk += 1;
    }
    for j in 0..NR {
        out[j] = (acc[0][j] + acc[1][j]) + (acc[2][j] + acc[3][j]);
    }
}

/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller). Lengths are
/// asserted in the body.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn one512(x: &[f32], panel: &[f32], out: &mut [f32; NR]) {
    body_one(x, panel, out)
}

/// [`body_one`] for AVX2: two partial sums of four registers each (the four of
/// [`body_one`] take all sixteen AVX2 registers, and the compiled loop spills), and no
/// software prefetch. On a Zen 3 EPYC (AVX2 only) a 400 MB f32 matrix-vector product
/// streamed at 26.5 GB/s with [`body_one`]'s prefetches, 30.5 without them, and 31.0
/// with this loop (two threads; 15.3, 18.0 and 19.0 on one), the machine's read
/// bandwidth being about 31: its hardware prefetcher follows the panels, and the extra
/// instructions only compete with the loads.
///
/// # Safety
/// The CPU must have AVX2 and FMA (detected at run time by the caller). Lengths are
/// asserted before any access.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn one256(x: &[f32], panel: &[f32], out: &mut [f32; NR]) {
    use std::arch::x86_64::*;
    let k = panel.len() / NR;
    assert!(x.len() >= k);
    let (p, xp) = (panel.as_ptr(), x.as_ptr());
    let mut a = [_mm256_setzero_ps(); 8];
    let mut kk = 0;
    // SAFETY (every access): kk + 1 < k steps of NR floats lie in the panel, and x holds
    // k values (asserted above).
    while kk + 2 <= k {
        let q = p.add(kk * NR);
        let (x0, x1) = (_mm256_set1_ps(*xp.add(kk)), _mm256_set1_ps(*xp.add(kk + 1)));
        for (j, s) in a.iter_mut().enumerate() {
            // Sums 0..4 take step kk's columns 8·j.., sums 4..8 step kk + 1's.
            let xv = if j < 4 { x0 } else { x1 };
            *s = _mm256_fmadd_ps(xv, _mm256_loadu_ps(q.add(8 * j)), *s);
        }
        kk += 2;
    }
    if kk < k {
        let q = p.add(kk * NR);
        let x0 = _mm256_set1_ps(*xp.add(kk));
        for (j, s) in a[..4].iter_mut().enumerate() {
            *s = _mm256_fmadd_ps(x0, _mm256_loadu_ps(q.add(8 * j)), *s);
        }
    }
    for j in 0..4 {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), _mm256_add_ps(a[j], a[4 + j]));
    }
}

/// The AVX-512 kernel of [`body512`] and [`body_t512`]: `out[r][j] = Σ_kk x(r, kk) ·
/// panel[kk·ps + j]` for `MR` rows, with `ahead(kk)` issued at each step. Written with
/// intrinsics so that up to 12 rows (24 accumulator registers of the 32) stay in
/// registers: the compiler leaves the plain loop's array in memory beyond 6 rows.
///
/// # Safety
/// AVX-512F and FMA must be present, `panel` must hold `(k − 1)·ps + NR` floats,
/// `x(r, kk)` must be readable for every `r < MR`, `kk < k`, and `out` valid for `MR`
/// rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn fma_rows512<const MR: usize>(
    panel: *const f32,
    k: usize,
    ps: usize,
    out: Dst,
    x: impl Fn(usize, usize) -> f32,
    ahead: impl Fn(usize),
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..k {
        ahead(kk);
        let p0 = _mm512_loadu_ps(panel.add(kk * ps));
        let p1 = _mm512_loadu_ps(panel.add(kk * ps + 16));
        for (r, a) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_ps(x(r, kk));
            a[0] = _mm512_fmadd_ps(xv, p0, a[0]);
            a[1] = _mm512_fmadd_ps(xv, p1, a[1]);
        }
    }
    for (r, a) in acc.iter().enumerate() {
        let o = out.ptr.add(r * out.ld);
        let (mut v0, mut v1) = (a[0], a[1]);
        if out.add {
            v0 = _mm512_add_ps(_mm512_loadu_ps(o), v0);
            v1 = _mm512_add_ps(_mm512_loadu_ps(o.add(16)), v1);
        }
        _mm512_storeu_ps(o, v0);
        _mm512_storeu_ps(o.add(16), v1);
    }
}

/// [`body`] for AVX-512 (see [`fma_rows512`]).
///
/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller), and `out`
/// be valid for `MR` rows. Lengths are asserted before any access.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn body512<const MR: usize>(x: &[&[f32]; MR], panel: &[f32], k: usize, ps: usize, out: Dst) {
    for r in x {
        assert!(r.len() >= k);
    }
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    let xp: [*const f32; MR] = std::array::from_fn(|r| x[r].as_ptr());
    // SAFETY: kk < k ≤ x[r].len() and the panel's length (asserted above).
    fma_rows512::<MR>(panel.as_ptr(), k, ps, out, |r, kk| *xp[r].add(kk), |_| {})
}

/// The AVX2 kernel of [`body256`] and [`body_t256`]: as [`fma_rows512`], in two
/// passes of sixteen columns each, so that up to 6 rows keep their accumulators in 12
/// of AVX2's 16 registers (the whole 32 columns of 3 rows, as the plain loop compiled
/// for AVX2 has them, need 12 accumulators, 4 panel registers and a broadcast: more
/// than there are, and every step spilled). The inputs are read twice, from L1. One or
/// two rows take all 32 columns in one pass.
///
/// # Safety
/// AVX2 and FMA must be present, `panel` must hold `(k − 1)·ps + NR` floats, `x(r, kk)`
/// must be readable for every `r < MR`, `kk < k`, and `out` valid for `MR` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn fma_rows256<const MR: usize>(
    panel: *const f32,
    k: usize,
    ps: usize,
    out: Dst,
    x: impl Fn(usize, usize) -> f32,
    ahead: impl Fn(usize),
) {
    use std::arch::x86_64::*;
    // A destination that wants at most sixteen columns (a block's; see `Dst::block`)
    // gets the first half only.
    let halves = if out.cols <= 16 { 1 } else { 2 };
    if MR <= 2 && halves == 2 {
        // One or two rows (a product's last rows after its blocks of six) in one pass
        // over all 32 columns: 8 accumulators and 4 panel registers fit, and two rows'
        // 8 chains of sums keep both FMA units busy where a half's 4 kept one.
        let mut acc = [[_mm256_setzero_ps(); 4]; MR];
        for kk in 0..k {
            ahead(kk);
            let p: [__m256; 4] =
                std::array::from_fn(|j| _mm256_loadu_ps(panel.add(kk * ps + 8 * j)));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(x(r, kk));
                for j in 0..4 {
                    a[j] = _mm256_fmadd_ps(xv, p[j], a[j]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.ptr.add(r * out.ld);
            for (j, &v) in a.iter().enumerate() {
                let v = if out.add {
                    _mm256_add_ps(_mm256_loadu_ps(o.add(8 * j)), v)
                } else {
                    v
                };
                _mm256_storeu_ps(o.add(8 * j), v);
            }
        }
        return;
    }
    for half in 0..halves {
        let ph = panel.add(16 * half);
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..k {
            if half == 0 {
                ahead(kk);
            }
            let p0 = _mm256_loadu_ps(ph.add(kk * ps));
            let p1 = _mm256_loadu_ps(ph.add(kk * ps + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_set1_ps(x(r, kk));
                a[0] = _mm256_fmadd_ps(xv, p0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, p1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let o = out.ptr.add(r * out.ld + 16 * half);
            let (mut v0, mut v1) = (a[0], a[1]);
            if out.add {
                v0 = _mm256_add_ps(_mm256_loadu_ps(o), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(o.add(8)), v1);
            }
            _mm256_storeu_ps(o, v0);
            _mm256_storeu_ps(o.add(8), v1);
        }
    }
}

/// [`body`] for AVX2 (see [`fma_rows256`]).
///
/// # Safety
/// The CPU must have AVX2 and FMA (detected at run time by the caller), and `out` be
/// valid for `MR` rows. Lengths are asserted before any access.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body256<const MR: usize>(x: &[&[f32]; MR], panel: &[f32], k: usize, ps: usize, out: Dst) {
    if MR > 6 {
        return body::<MR>(x, panel, k, ps, out);
    }
    for r in x {
        assert!(r.len() >= k);
    }
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    let xp: [*const f32; MR] = std::array::from_fn(|r| x[r].as_ptr());
    // SAFETY: kk < k ≤ x[r].len() and the panel's length (asserted above).
    fma_rows256::<MR>(panel.as_ptr(), k, ps, out, |r, kk| *xp[r].add(kk), |_| {})
}

/// `blocks` whole blocks of six input rows against one panel, block `b` into `out`'s
/// rows `6·b..`: the AVX2 kernel looped in place, so that a block costs no calls,
/// slices or checks of its own (they had cost 4% of a 384 × 128 × 384 product,
/// `examples/gemm_speed`). Step `kk` of row `r` of block `b` is `x(b, r, kk)`;
/// `ahead(b)` runs before block `b` (the callers' [`TileWalk::prefetch_next`]).
///
/// # Safety
/// AVX2 and FMA must be present; `x(b, r, kk)` must be readable for every `b <
/// blocks`, `r < 6`, `kk < k`, `panel` for `(k − 1)·ps + NR` values and `out` valid
/// for `6·blocks` rows (see [`Dst::rows`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn column256(
    blocks: usize,
    panel: *const f32,
    k: usize,
    ps: usize,
    out: Dst,
    ahead: impl Fn(usize),
    x: impl Fn(usize, usize, usize) -> f32,
) {
    for b in 0..blocks {
        ahead(b);
        let o = Dst {
            ptr: out.ptr.add(b * 6 * out.ld),
            ..out
        };
        fma_rows256::<6>(panel, k, ps, o, |r, kk| x(b, r, kk), |_| {});
    }
}

/// # Safety
/// `out` must be valid for `MR` rows (see [`Dst::rows`]).
unsafe fn run<const MR: usize>(
    isa: Isa,
    x: &[&[f32]; MR],
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    match isa {
        // SAFETY: the features were detected at run time.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => body512::<MR>(x, panel, k, ps, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => body256::<MR>(x, panel, k, ps, out),
        _ => body::<MR>(x, panel, k, ps, out),
    }
}

/// `out[r][j] = Σ_kk x[kk·ld + r] · panel[kk][j]` for `MR` input rows given as
/// columns of `x` (the transposed layout: the `MR` values of one step are adjacent).
///
/// # Safety
/// `out` must be valid for `MR` rows (see [`Dst::rows`]).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r indexes both x (with an offset) and acc
unsafe fn body_t<const MR: usize>(
    x: &[f32],
    ld: usize,
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    assert!(k == 0 || x.len() >= (k - 1) * ld + MR);
    let mut acc = [[0f32; NR]; MR];
    for kk in 0..k {
        // Inputs read in place are a cache line per step, often a page apart: fetched
        // ahead, as the hardware prefetcher does not follow such strides.
        #[cfg(target_arch = "x86_64")]
        if ld >= 16 {
            // SAFETY: a prefetch reads nothing and cannot fault.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add((kk + 6) * ld) as *const i8);
                if ps >= 64 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        panel.as_ptr().wrapping_add((kk + 6) * ps) as *const i8
                    );
                    _mm_prefetch::<_MM_HINT_T0>(
                        panel.as_ptr().wrapping_add((kk + 6) * ps + 16) as *const i8
                    );
                }
            }
        }
        let p: &[f32; NR] = panel[kk * ps..kk * ps + NR].try_into().unwrap();
        for r in 0..MR {
            // SAFETY: kk·ld + r < x.len() (asserted above).
            let xv = unsafe { *x.get_unchecked(kk * ld + r) };
            for j in 0..NR {
                acc[r][j] = xv.mul_add(p[j], acc[r][j]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out.put(r, a);
    }
}

/// [`body_t`] for AVX-512 (see [`fma_rows512`]).
///
/// # Safety
/// The CPU must have AVX-512F and FMA (detected at run time by the caller), and `out`
/// be valid for `MR` rows. Lengths are asserted before any access.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn body_t512<const MR: usize>(
    x: &[f32],
    ld: usize,
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    assert!(k == 0 || x.len() >= (k - 1) * ld + MR);
    let (xp, pp) = (x.as_ptr(), panel.as_ptr());
    let ahead = |kk| prefetch_t(xp, ld, pp, ps, MR, kk);
    // SAFETY: kk·ps + NR ≤ panel.len() and kk·ld + MR ≤ x.len() (asserted above).
    fma_rows512::<MR>(pp, k, ps, out, |r, kk| *xp.add(kk * ld + r), ahead)
}

/// What step `kk + 6` of a transposed product reads, fetched ahead: as in [`body_t`],
/// the strided inputs (a block's values of a step span two lines as often as not) and,
/// for a panel read in place, its step (three lines when not 64-byte aligned).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_t(xp: *const f32, ld: usize, pp: *const f32, ps: usize, rows: usize, kk: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    if ld < 16 {
        return;
    }
    // SAFETY: a prefetch reads nothing and cannot fault (the addresses are only
    // computed, with wrapping arithmetic).
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(xp.wrapping_add((kk + 6) * ld) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(xp.wrapping_add((kk + 6) * ld + rows - 1) as *const i8);
        if ps >= 64 {
            for off in [0, 16, NR - 1] {
                _mm_prefetch::<_MM_HINT_T0>(pp.wrapping_add((kk + 6) * ps + off) as *const i8);
            }
        }
    }
}

/// [`body_t`] for AVX2 (see [`fma_rows256`]).
///
/// # Safety
/// The CPU must have AVX2 and FMA (detected at run time by the caller), and `out` be
/// valid for `MR` rows. Lengths are asserted before any access.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn body_t256<const MR: usize>(
    x: &[f32],
    ld: usize,
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    if MR > 6 {
        return body_t::<MR>(x, ld, panel, k, ps, out);
    }
    assert!(k == 0 || panel.len() >= (k - 1) * ps + NR);
    assert!(k == 0 || x.len() >= (k - 1) * ld + MR);
    let (xp, pp) = (x.as_ptr(), panel.as_ptr());
    let ahead = |kk| prefetch_t(xp, ld, pp, ps, MR, kk);
    // SAFETY: kk·ps + NR ≤ panel.len() and kk·ld + MR ≤ x.len() (asserted above).
    fma_rows256::<MR>(pp, k, ps, out, |r, kk| *xp.add(kk * ld + r), ahead)
}

/// One panel of `k` steps `ps` apart against `rows` (at most 12) transposed input rows
/// (step `kk` of row `r` at `x[kk·ld + r]`), into `out`.
///
/// # Safety
/// `out` must be valid for `rows` rows (see [`Dst::rows`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn panel_rows_t_into(
    isa: Isa,
    x: &[f32],
    ld: usize,
    rows: usize,
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    macro_rules! go {
        ($m:literal) => {{
            through_block(out, $m, |out| match isa {
                // SAFETY: the features were detected at run time.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => body_t512::<$m>(x, ld, panel, k, ps, out),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => body_t256::<$m>(x, ld, panel, k, ps, out),
                _ => body_t::<$m>(x, ld, panel, k, ps, out),
            })
        }};
    }
    by_rows!(rows, go)
}

/// A pointer that tasks write through at disjoint places.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: every use writes elements no other task touches.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so that closures capture the whole `SyncPtr`, which is
    /// `Sync`, rather than its raw-pointer field, which is not).
    #[inline(always)]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[i, r] (+)= Σ_c xt[c, i] · W[r, c]` for the `n` columns `i` of `xt [k, ld]`
/// (that is, `xtᵀ · Wᵀ` without transposing `xt`), `out` `[n, rows]`, `W` given as
/// stored panels of `k` columns; adds to `out` when `accumulate`. Over the rayon pool,
/// each task a group of blocks of columns of `xt` against every panel. With `ones`,
/// `out` has a row `n` more, to which the column sums of `W` are added (as if `xt` had
/// a column of ones).
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn(
    xt: &[f32],
    ld: usize,
    n: usize,
    rows: usize,
    k: usize,
    panels: &[f32],
    out: &mut [f32],
    accumulate: bool,
    scratch: &mut Vec<f32>,
    ones: bool,
) {
    // Short sums read xt in place; long ones pack it first (measured: in place is
    // faster at 768 steps, packing at 2048, where the block's reads spaced ld apart
    // miss cache often enough to cost more than one packing pass); see reads_in_place.
    let mb = tn_block();
    if reads_in_place(k, n) {
        let x = TnInput::InPlace(xt, ld);
        return tn_tasks(n, rows, k, (panels, NR), out, accumulate, ones, x);
    }
    let blocks = n.div_ceil(mb);
    if scratch.len() < blocks * k * mb {
        scratch.resize(blocks * k * mb, 0.0);
    }
    let pp = SyncPtr(scratch.as_mut_ptr());
    // Packed as [block][k][mb], eight blocks at a time over all steps: eight output
    // streams (blocks lie k·mb apart, a distance that would map dozens of streams onto
    // the same few L1 sets), and eight blocks' adjacent values read from each row.
    assert!(k == 0 || xt.len() >= (k - 1) * ld + n);
    (0..blocks.div_ceil(8)).into_par_iter().for_each(|bg| {
        let (b0, b1) = (bg * 8, (bg * 8 + 8).min(blocks));
        // Whole blocks of the kernel's widths: one bounds check a row and fixed-size
        // moves (a general loop spent 3.8% of an AVX2 4×128 training step here).
        if b1 * mb <= n && matches!(mb, 6 | 12) {
            // SAFETY: the blocks b0..b1 belong to this task and are whole
            // (b1·mb ≤ n); every row's span lies inside xt (asserted above).
            return unsafe {
                match mb {
                    6 => pack_whole::<6>(xt, ld, k, b0..b1, pp),
                    _ => pack_whole::<12>(xt, ld, k, b0..b1, pp),
                }
            };
        }
        for kk in 0..k {
            let row = &xt[kk * ld..kk * ld + n];
            for b in b0..b1 {
                let w = mb.min(n - b * mb);
                // SAFETY: block b belongs to this task, and (b·k + kk)·mb + w ≤
                // blocks·k·mb.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(pp.get().add((b * k + kk) * mb), w) };
                pack_step(&row[b * mb..b * mb + w], dst);
            }
        }
    });
    let x = TnInput::Packed(&scratch[..blocks * k * mb]);
    tn_tasks(n, rows, k, (panels, NR), out, accumulate, ones, x);
}

/// [`matmul_tn`] for short sums (`k` < 1024) with `W` given as its transpose, a
/// row-major `[k, rows]` array (`rows` a multiple of [`NR`]), read in place: nothing is
/// packed. `None` when the sum is too long for reading in place to pay.
#[allow(clippy::too_many_arguments)]
pub fn matmul_tn_unpacked(
    xt: &[f32],
    ld: usize,
    n: usize,
    rows: usize,
    k: usize,
    wt: &[f32],
    out: &mut [f32],
    accumulate: bool,
    ones: bool,
) -> Option<()> {
    if k >= in_place_steps() || !rows.is_multiple_of(NR) {
        return None;
    }
    tn_tasks(
        n,
        rows,
        k,
        (wt, rows),
        out,
        accumulate,
        ones,
        TnInput::InPlace(xt, ld),
    );
    Some(())
}

/// The longest sums that the transposed products read wholly in place (`W` too, in
/// [`matmul_tn_unpacked`]) rather than pack: 1024 steps, but none with AVX2, whose
/// kernel reads each step's inputs twice (once per half of the panel); packed, they are
/// one sequential stream. Weight gradients with AVX2 ran at 71–87 GFLOP/s a core in
/// place against 86–97 packed (`examples/gemm_speed.rs` 384 128 384, 384 512 128 and
/// 768 384 1152, on Zen 3, in one pass over all steps; [`reads_in_place`] has AVX2's
/// exception for `xt` alone); AVX-512 runs at 100–113 either way, in place a little
/// ahead.
fn in_place_steps() -> usize {
    match isa() {
        Isa::Avx2 => 0,
        _ => 1024,
    }
}

/// Whether [`matmul_tn`] reads `xt` (`k` steps of `n` values) in place rather than
/// packing it. AVX-512: below [`in_place_steps`]. AVX2: when it is small enough to stay
/// in L2 while the panels pass over it (at most [`AVX2_IN_PLACE_VALUES`], a GPT-2 4×128
/// shard's widest), summed in passes of [`AVX2_IN_PLACE_PASS`] steps, so that a
/// pass's slices of the panel and of `xt` stay in L1. Packing `xt` had cost about 9% of
/// those products: `examples/gemm_speed` on an Intel Xeon (Emerald Rapids, AVX2), best
/// of 200, the weight gradients of 384 128 384 ran 491 / 504 µs packed and 451 / 467 in
/// place, 384 128 128 176 / 176 → 162 / 154, 384 512 128 662 / 667 → 665 / 618, and
/// 384 128 512 663 / 671 → 614 / 679 (`[out, in]` / `[in, out]`); in place without the
/// short passes was 15–25% slower than packed. Larger inputs pack: at 1024 positions
/// reading in place was 5% faster alone for some shapes (1024 384 384, 1024 384 1152
/// `[out, in]`) but 12% slower where the output is too wide for L2 (1024 384 1536
/// `[in, out]`, 1024 1536 384 `[out, in]`), and it gained nothing in GPT-2's or Llama's
/// 6×384 training step (`ATTN_PROFILE=1 attn bench train`).
fn reads_in_place(k: usize, n: usize) -> bool {
    match isa() {
        Isa::Avx2 => k < 1024 && k * n <= AVX2_IN_PLACE_VALUES,
        _ => k < in_place_steps(),
    }
}

/// The largest `xt` (in values) that AVX2's transposed products read in place.
const AVX2_IN_PLACE_VALUES: usize = 384 * 512;

/// Steps per pass of AVX2's transposed products reading `xt` in place (see
/// [`reads_in_place`]): 32, 48, 64 and 80 measured, 64 the best overall.
const AVX2_IN_PLACE_PASS: usize = 64;

/// Rows ahead that [`pack_whole`] fetches: the weight-gradient products of GPT-2 4×128's
/// step took about 2% less time with 8 than with none (`ATTN_PROFILE=1 attn bench
/// train`, gemm_tn_acc ÷ qkv 4.15 → 4.06, seven alternations); 16 was no better.
const PACK_AHEAD: usize = 8;

/// Packs the whole blocks `blocks` (`MB` columns each) of `xt` (`k` rows, `ld` apart) as
/// `[block][k][MB]` at `out`.
///
/// # Safety
/// Every row `kk < k` must hold columns up to `blocks.end·MB` (`xt` at least
/// `(k − 1)·ld + blocks.end·MB` long), `out` must be valid for `blocks.end·k·MB` values,
/// and no other thread may touch those of these blocks meanwhile.
unsafe fn pack_whole<const MB: usize>(
    xt: &[f32],
    ld: usize,
    k: usize,
    blocks: std::ops::Range<usize>,
    out: SyncPtr,
) {
    let (b0, b1) = (blocks.start, blocks.end);
    let span = (b1 - b0) * MB;
    for kk in 0..k {
        let row = xt.as_ptr().add(kk * ld + b0 * MB);
        // The row PACK_AHEAD steps on, fetched now: the inputs were written long before
        // (a forward activation), rows are `ld` apart, and the loads of each row's first
        // line had taken most of this loop's time (`perf annotate`). The prefetch
        // cannot fault (the address is only computed).
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let ahead = row.wrapping_add(PACK_AHEAD * ld);
            for off in (0..span).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off) as *const i8);
            }
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(span - 1) as *const i8);
        }
        for j in 0..b1 - b0 {
            let dst = out.get().add(((b0 + j) * k + kk) * MB);
            std::ptr::copy_nonoverlapping(row.add(j * MB), dst, MB);
        }
    }
}

/// One step of one block of packed columns: `dst = src` (at most 12 values), as
/// fixed-size moves for a whole block rather than a call to memcpy per 24 or 48 bytes.
#[inline(always)]
fn pack_step(src: &[f32], dst: &mut [f32]) {
    if let (Ok(d), Ok(s)) = (
        <&mut [f32; 12]>::try_from(&mut *dst),
        <&[f32; 12]>::try_from(src),
    ) {
        *d = *s;
    } else if let (Ok(d), Ok(s)) = (
        <&mut [f32; 6]>::try_from(&mut *dst),
        <&[f32; 6]>::try_from(src),
    ) {
        *d = *s;
    } else {
        dst.copy_from_slice(src);
    }
}

/// Columns per block of the transposed products (the kernel's rows, at most 12).
fn tn_block() -> usize {
    product_rows(isa())
}

/// The input of [`tn_tasks`]: `xt [k, ld]` read in place, or packed as
/// `[block][k][mb]` by [`matmul_tn`].
#[derive(Clone, Copy)]
enum TnInput<'x> {
    InPlace(&'x [f32], usize),
    Packed(&'x [f32]),
}

impl<'x> TnInput<'x> {
    /// Block `b`'s values (of `mb` columns) for steps `c0..c1` of `k`, and the distance
    /// between steps.
    fn block(self, b: usize, (c0, c1): (usize, usize), k: usize, mb: usize) -> (&'x [f32], usize) {
        match self {
            TnInput::InPlace(xt, ld) => (&xt[c0 * ld + b * mb..], ld),
            TnInput::Packed(p) => (&p[(b * k + c0) * mb..(b * k + c1) * mb], mb),
        }
    }
}

/// The product of [`matmul_tn`] for columns given block by block (see [`TnInput`]).
/// `panels` is `(data, ps)`: packed (`ps` = `NR`, panel `p` at `p·k·NR`) or `Wᵀ` read in place
/// (`ps` = its row length, panel `p` at `p·NR`). Each task takes a group of blocks
/// against every panel's slice in turn; the panels (the long side) stream once per
/// task, so there are as few tasks as keep every thread busy.
#[allow(clippy::too_many_arguments)]
fn tn_tasks(
    n: usize,
    rows: usize,
    k: usize,
    (panels, ps): (&[f32], usize),
    out: &mut [f32],
    accumulate: bool,
    ones: bool,
    x: TnInput<'_>,
) {
    let isa = isa();
    let mb = tn_block();
    let blocks = n.div_ceil(mb);
    let np = rows.div_ceil(NR);
    let base = |p: usize| if ps == NR { p * k * NR } else { p * NR };
    if ps != NR {
        assert!(
            rows.is_multiple_of(NR) && panels.len() >= k * ps,
            "strided panels need whole panels"
        );
    }
    let op = SyncPtr(out.as_mut_ptr());
    assert!(out.len() >= (n + ones as usize) * rows);
    let threads = rayon::current_num_threads().max(1);
    let group = blocks_per_task(blocks, 64, threads, threads);
    let tasks = blocks.div_ceil(group).max(1);
    (0..tasks).into_par_iter().for_each(|g| {
        let walk = TileWalk {
            blocks: (g * group, ((g + 1) * group).min(blocks)),
            np,
            mb,
            n,
            rows,
        };
        let kc = match x {
            TnInput::InPlace(..) if isa == Isa::Avx2 => AVX2_IN_PLACE_PASS,
            _ => tn_pass_steps(k),
        };
        for c0 in (0..k.max(1)).step_by(kc) {
            let c1 = (c0 + kc).min(k);
            for p in 0..np {
                let panel = &panels[base(p) + c0 * ps..];
                let valid = NR.min(rows - p * NR);
                let (b0, b1) = walk.blocks;
                // Whole blocks, with AVX2, in one call (see column256): step kk of row r
                // of block b0 + b is `$x(b, r, kk)` (a closure, so that its strides stay
                // constants where they are: reading them from variables had cost 3% of
                // 384 128 384's weight gradients in place).
                #[cfg(target_arch = "x86_64")]
                let whole = if isa == Isa::Avx2 && mb == 6 && valid == NR {
                    let blocks = b1.min(n / 6).saturating_sub(b0);
                    assert!(c1 == c0 || panel.len() >= (c1 - c0 - 1) * ps + NR);
                    macro_rules! whole {
                        ($x:expr) => {
                            // SAFETY: AVX2 was detected; the blocks' steps lie inside
                            // the input (asserted in each arm) and the slice inside
                            // the panel (asserted above); rows 6·b0.. of columns p·NR..
                            // belong to this task (and lie inside out).
                            unsafe {
                                let r = ((p, b0, blocks), (c0, c1));
                                whole_blocks256(&walk, r, panel, ps, op, accumulate, $x)
                            };
                        };
                    }
                    match x {
                        TnInput::Packed(px) => {
                            assert!(blocks == 0 || ((b0 + blocks) * k) * 6 <= px.len());
                            let xp = px[(b0 * k * 6).min(px.len())..].as_ptr();
                            whole!(|b, r, kk| *xp.add((b * k + c0 + kk) * 6 + r));
                        }
                        // In place: the six values from column 6·b of row kk.
                        TnInput::InPlace(xt, ld) => {
                            assert!(
                                blocks == 0
                                    || c1 == c0
                                    || xt.len() >= (c1 - 1) * ld + (b0 + blocks) * 6
                            );
                            let xp = xt[(c0 * ld + b0 * 6).min(xt.len())..].as_ptr();
                            whole!(|b, r, kk| *xp.add(kk * ld + b * 6 + r));
                        }
                    }
                    blocks
                } else {
                    0
                };
                #[cfg(not(target_arch = "x86_64"))]
                let whole = 0;
                for b in b0 + whole..b1 {
                    let i0 = b * mb;
                    let m = mb.min(n - i0);
                    if c0 == 0 {
                        walk.prefetch_next(op.get(), b, p);
                    }
                    let (xb, step) = x.block(b, (c0, c1), k, mb);
                    // SAFETY: rows i0..i0 + m, columns p·NR..p·NR + valid belong to this
                    // task alone and lie inside out ((i0 + m − 1)·rows + p·NR + valid ≤
                    // n·rows, asserted above).
                    unsafe {
                        let at = op.get().add(i0 * rows + p * NR);
                        let dst = Dst::rows(at, rows, valid, accumulate || c0 > 0);
                        panel_rows_t_into(isa, xb, step, m, panel, c1 - c0, ps, dst);
                    }
                }
            }
        }
        if ones {
            // Row n: the column sums of W (the sums over steps of each panel), panels
            // shared out between the tasks (p ≡ g mod tasks), two at a time (a lone last
            // one summed beside itself).
            for p0 in (g..np).step_by(2 * tasks) {
                let pair = [p0, p0 + tasks];
                let live = if pair[1] < np { 2 } else { 1 };
                let sums = panel_sums(&panels[base(p0)..], &panels[base(pair[live - 1])..], k, ps);
                for (&p, sum) in pair[..live].iter().zip(&sums) {
                    let valid = NR.min(rows - p * NR);
                    // SAFETY: row n, columns p·NR.. belong to this task (p ≡ g mod tasks).
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(op.get().add(n * rows + p * NR), valid)
                    };
                    for (o, v) in o.iter_mut().zip(sum) {
                        if accumulate {
                            *o += v;
                        } else {
                            *o = *v;
                        }
                    }
                }
            }
        }
    });
}

/// `blocks` whole blocks of six columns of a transposed product's input, from block
/// `b0`, against panel `p`'s steps `c0..c1` (`panel` starting at step `c0`), with AVX2
/// in one call (see [`column256`]); step `kk` (from `c0`) of row `r` of block `b` (from
/// `b0`) is `x(b, r, kk)`. Adds to the output (rows `6·b0..`, columns `p·NR..` of the
/// `walk`'s `rows`-wide `out`) when `acc` or after the first pass.
///
/// # Safety
/// AVX2 and FMA must be present, `x(b, r, kk)` readable for every `b < blocks`, `r <
/// 6`, `kk < c1 − c0`, the panel for `(c1 − c0 − 1)·ps + NR` values, and the output's
/// rows `6·b0..6·(b0 + blocks)`, columns `p·NR..(p + 1)·NR` valid and this task's alone.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn whole_blocks256(
    walk: &TileWalk,
    ((p, b0, blocks), (c0, c1)): ((usize, usize, usize), (usize, usize)),
    panel: &[f32],
    ps: usize,
    out: SyncPtr,
    acc: bool,
    x: impl Fn(usize, usize, usize) -> f32,
) {
    let rows = walk.rows;
    let dst = Dst::rows(
        out.get().add(b0 * 6 * rows + p * NR),
        rows,
        NR,
        acc || c0 > 0,
    );
    let ahead = |b| {
        if c0 == 0 {
            walk.prefetch_next(out.get(), b0 + b, p);
        }
    };
    column256(blocks, panel.as_ptr(), c1 - c0, ps, dst, ahead, x);
}

/// The sums over `k` steps `ps` apart of two panels (`[k][NR]` from `a[0]` and `b[0]`),
/// each column summed front to back (the same sums as one at a time). Compiled for the
/// CPU's vectors, two panels in step so that eight chains of additions overlap: the
/// plain loop inside the task, in SSE, took about 1.2% of a GPT-2 4×128 training step
/// (`perf`), and the weight gradients' products with it run 2–3% faster this way
/// (`ATTN_PROFILE=1 attn bench train`, against the query/key/value product).
#[inline(always)]
fn panel_sums_body(a: &[f32], b: &[f32], k: usize, ps: usize) -> [[f32; NR]; 2] {
    assert!(k == 0 || (a.len() >= (k - 1) * ps + NR && b.len() >= (k - 1) * ps + NR));
    let mut sums = [[0f32; NR]; 2];
    for kk in 0..k {
        let sa: &[f32; NR] = a[kk * ps..kk * ps + NR].try_into().unwrap();
        let sb: &[f32; NR] = b[kk * ps..kk * ps + NR].try_into().unwrap();
        for j in 0..NR {
            sums[0][j] += sa[j];
            sums[1][j] += sb[j];
        }
    }
    sums
}
super::vmath::dispatch!(
    /// See [`panel_sums_body`].
    panel_sums = panel_sums_body, panel_sums512, panel_sums256,
    (a: &[f32], b: &[f32], k: usize, ps: usize) -> [[f32; NR]; 2]
);

/// Where the products walk their output: blocks `blocks` of `mb` rows (of `n`), each
/// against panels `0..np` of an output `rows` wide, panel by panel.
#[derive(Clone, Copy)]
struct TileWalk {
    blocks: (usize, usize),
    np: usize,
    mb: usize,
    n: usize,
    rows: usize,
}

impl TileWalk {
    /// Fetches the `NR`-wide output tile that comes after block `b` of panel `p` (the
    /// next block's, or the next panel's first block's) in `out`: a hint issued one
    /// block ahead, so that the first write of an output row that was written long
    /// ago (or never) does not stall on memory. A prefetch cannot fault.
    #[inline(always)]
    fn prefetch_next(&self, out: *const f32, b: usize, p: usize) {
        let (b0, b1) = self.blocks;
        let (nb, np) = if b + 1 < b1 { (b + 1, p) } else { (b0, p + 1) };
        if np >= self.np {
            return;
        }
        let at = out.wrapping_add(nb * self.mb * self.rows + np * NR);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch reads nothing and cannot fault.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            for r in 0..self.mb.min(self.n.saturating_sub(nb * self.mb)) {
                let a = at.wrapping_add(r * self.rows) as *const i8;
                // A tile is 128 bytes: up to three lines when not aligned.
                _mm_prefetch::<_MM_HINT_T0>(a);
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(64));
                _mm_prefetch::<_MM_HINT_T0>(a.wrapping_add(4 * NR - 4));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }
}

/// Steps of a long sum taken at a time (a 32 KiB slice of a panel).
const KC: usize = 256;

/// Steps a product of many rows sums in one pass over its output, for sums of `k`
/// steps: all of them up to 2·KC, else KC at a time (so that the panel's slice stays in
/// L1 while every block of rows passes over it). Each further pass re-reads and
/// re-writes an output that has left L2 by then (a task's 192 rows of a 2048-wide
/// product are 1.5 MB), which costs more than a slice of up to 2·KC overflowing L1:
/// Llama 6×384's gate and up product, 384 steps, ran 3–4% faster in a training step in
/// one pass than in two (`ATTN_PROFILE=1 attn bench train`).
fn pass_steps(k: usize) -> usize {
    if k <= 2 * KC {
        k.max(1)
    } else {
        KC
    }
}

/// [`pass_steps`] for the transposed products (weight gradients, summed over a shard's
/// positions): all the steps up to 8·KC in one pass, else 4·KC at a time. Their
/// input is packed ([`tn_tasks`]) and a task's output is up to 384 rows of the
/// gradient, which every further pass re-reads and re-writes; longer slices stream the
/// panel from L2 instead, which costs less. Llama 6×384's weight gradients (1024
/// positions a shard) ran about 5% faster in one pass than in four
/// (`examples/gemm_speed 1024 384 2048`, `1024 1024 384`), and the training step
/// 2–3% faster (`attn bench train --arch llama`, steps alternating between the two);
/// 4096 positions ran 10% faster in passes of 1024 than of 256, and 10% slower in one.
fn tn_pass_steps(k: usize) -> usize {
    if k <= 8 * KC {
        k.max(1)
    } else {
        4 * KC
    }
}

/// Input rows per kernel call in the matrix products: as many as the registers hold
/// accumulators for (24 of AVX-512's 32 registers).
pub(crate) fn product_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => 12,
        i => block_rows(i),
    }
}

/// Input rows per kernel call for the attention's small products (short sums, where a
/// smaller block wastes less of the causal triangle).
pub(crate) fn block_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 | Isa::Avx2 => 6,
        Isa::Portable => 2,
    }
}

/// One panel against up to `block_rows` input rows, into `out` (see [`Dst`]).
///
/// # Safety
/// `out` must be valid for `x.len()` rows (see [`Dst::rows`]).
unsafe fn panel_rows_into(isa: Isa, x: &[&[f32]], panel: &[f32], out: Dst) {
    if x.len() == 1 {
        let mut sums = [0f32; NR];
        match isa {
            // SAFETY: the features were detected at run time.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => one512(x[0], panel, &mut sums),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => one256(x[0], panel, &mut sums),
            _ => body_one(x[0], panel, &mut sums),
        };
        return out.put(0, &sums);
    }
    panel_rows_strided_into(isa, x, panel, panel.len() / NR, NR, out)
}

/// `out[i][j] = Σ_kk x[i][kk] · panel[kk·ps + j]` over `k` steps, for up to 8 input
/// rows, into `out`: a panel read in place from a row-major matrix `ps` wide (its
/// columns `j..j+NR` starting at `panel[0]`).
///
/// # Safety
/// `out` must be valid for `x.len()` rows (see [`Dst::rows`]).
pub(crate) unsafe fn panel_rows_strided_into(
    isa: Isa,
    x: &[&[f32]],
    panel: &[f32],
    k: usize,
    ps: usize,
    out: Dst,
) {
    macro_rules! go {
        ($m:literal) => {{
            let xs: &[&[f32]; $m] = x.try_into().unwrap();
            through_block(out, $m, |out| run::<$m>(isa, xs, panel, k, ps, out))
        }};
    }
    by_rows!(x.len(), go)
}

/// [`matmul`] on the calling thread, for stored panels (small products inside a task).
pub fn matmul_serial(
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    panels: &[f32],
    out: &mut [f32],
) {
    let isa = isa();
    let mb = product_rows(isa);
    let xs: Vec<&[f32]> = x.chunks(cols).take(n).collect();
    let mut part: Vec<&[f32]> = Vec::with_capacity(mb);
    let walk = TileWalk {
        blocks: (0, n.div_ceil(mb)),
        np: rows.div_ceil(NR),
        mb,
        n,
        rows,
    };
    let kc = pass_steps(cols);
    for c0 in (0..cols.max(1)).step_by(kc) {
        let c1 = (c0 + kc).min(cols);
        for p in 0..rows.div_ceil(NR) {
            let panel = &panels[p * cols * NR + c0 * NR..p * cols * NR + c1 * NR];
            let valid = NR.min(rows - p * NR);
            #[cfg(target_arch = "x86_64")]
            let whole = if isa == Isa::Avx2 && mb == 6 && valid == NR {
                let blocks = n / 6;
                let at = p * NR;
                assert!(blocks == 0 || (at + (6 * blocks - 1) * rows + NR <= out.len()));
                assert!(blocks == 0 || (6 * blocks - 1) * cols + c1 <= x.len());
                // SAFETY: AVX2 was detected; x's rows (asserted) and the panel's slice
                // (its length) hold what the blocks read; out holds their rows.
                unsafe {
                    let dst = Dst::rows(out.as_mut_ptr().add(at), rows, valid, c0 > 0);
                    let start = out.as_ptr();
                    let ahead = |b| {
                        if c0 == 0 {
                            walk.prefetch_next(start, b, p);
                        }
                    };
                    let x = x.as_ptr().add(c0);
                    column256(
                        blocks,
                        panel.as_ptr(),
                        c1 - c0,
                        NR,
                        dst,
                        ahead,
                        |b, r, kk| *x.add((6 * b + r) * cols + kk),
                    );
                }
                blocks
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let whole = 0;
            for (b, xb) in xs.chunks(mb).enumerate().skip(whole) {
                if c0 == 0 {
                    walk.prefetch_next(out.as_ptr(), b, p);
                }
                part.clear();
                part.extend(xb.iter().map(|r| &r[c0..c1]));
                let at = b * mb * rows + p * NR;
                assert!(at + (xb.len() - 1) * rows + valid <= out.len());
                // SAFETY: the block's rows, `valid` columns from p·NR, lie inside out
                // (asserted), which this call holds exclusively.
                unsafe {
                    let dst = Dst::rows(out.as_mut_ptr().add(at), rows, valid, c0 > 0);
                    panel_rows_into(isa, &part, panel, dst);
                }
            }
        }
    }
}

/// Blocks per task when `blocks` are shared out as at most `max` a task, in at least
/// `min_tasks` tasks and as many as a multiple of the `threads`, evenly: 3 tasks for 2
/// threads leave one thread idle for a third of the product (AVX2's query, key and value
/// weight gradient, 192 blocks, ran at 126-140 GFLOP/s that way and 163-177 after,
/// `examples/gemm_speed 2048 384 1152 2`; 2048 forward rows had made eleven tasks of 192
/// and one of 128).
fn blocks_per_task(blocks: usize, max: usize, min_tasks: usize, threads: usize) -> usize {
    let tasks = blocks
        .div_ceil(max)
        .max(min_tasks)
        .next_multiple_of(threads)
        .min(blocks)
        .max(1);
    blocks.div_ceil(tasks).max(1)
}

/// The first `len` values of `v` from a cache line's start (64 bytes), `v` grown as
/// needed (it only grows; see `gemm::pack_all`). The kernels load panels a register
/// (32 or 64 bytes) at a time; from a vector's own alignment (16 bytes) every other
/// AVX2 load of a panel straddled two cache lines.
pub(crate) fn aligned_front(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE: usize = 64 / std::mem::size_of::<f32>();
    if v.len() < len + LINE {
        v.resize(len + LINE, 0.0);
    }
    let at = v.as_ptr().align_offset(64).min(LINE);
    &mut v[at..at + len]
}

/// The bytes of a slice of plain numbers, for prefetching.
pub(crate) fn bytes_of<T: super::huge::Zeroed>(v: &[T]) -> &[u8] {
    // SAFETY: the element types are plain numbers without padding, whose memory may be
    // read as bytes; the length covers the same memory.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Input rows above which [`matmul`] blocks over rows instead of over panels.
const LARGE_N: usize = 256;

/// Where each panel comes from: stored, or produced on demand into a scratch buffer.
pub enum Panels<'a> {
    Stored(&'a [f32]),
    /// `fill(p, buf)` writes panel `p`; `source(p)` gives the bytes it reads (empty when
    /// unknown), which are fetched into L2 while the panel before it is multiplied.
    Fill(&'a Fill<'a>, &'a Source<'a>),
}

/// Writes panel `p` (`[cols][NR]`) into the buffer.
pub type Fill<'a> = dyn Fn(usize, &mut [f32]) + Sync + 'a;
/// The bytes panel `p` is made from.
pub type Source<'a> = dyn Fn(usize) -> &'a [u8] + Sync + 'a;

/// Fetches the `part`-th of `parts` shares of `bytes`' cache lines into L2.
#[inline]
fn prefetch_share(bytes: &[u8], part: usize, parts: usize) {
    let lines = bytes.len() / 64;
    let share = lines.div_ceil(parts.max(1));
    #[cfg(target_arch = "x86_64")]
    for l in part * share..((part + 1) * share).min(lines) {
        // SAFETY: a prefetch reads nothing and cannot fault; the address is inside
        // `bytes`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().add(64 * l) as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = share;
}

/// `out[i, r] = Σ_c x[i, c] · W[r, c]` for `n` input rows, `out` `[n, rows]`, with `W`
/// given as panels. Panels are split over the rayon pool.
pub fn matmul(x: &[f32], n: usize, rows: usize, cols: usize, panels: Panels<'_>, out: &mut [f32]) {
    matmul_then(x, n, rows, cols, panels, out, None)
}

/// Work applied to finished output rows: `(first row, rows [count · width])`.
pub type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) + Sync);

/// [`matmul`], then `epilogue` on the output rows, each block of rows while it is still
/// in cache (by the task that computed it, when the rows are many).
pub fn matmul_then(
    x: &[f32],
    n: usize,
    rows: usize,
    cols: usize,
    panels: Panels<'_>,
    out: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
) {
    let threads = rayon::current_num_threads().max(1);
    if n > LARGE_N {
        // Many input rows (training): fill every panel once, then give each task a block
        // of input rows against all panels, so the rows stay in cache while the panels
        // stream past them.
        let mut filled = Vec::new();
        let all: &[f32] = match panels {
            Panels::Stored(p) => p,
            Panels::Fill(f, _) => {
                let v = aligned_front(&mut filled, rows.div_ceil(NR) * cols * NR);
                v.par_chunks_mut(cols * NR)
                    .enumerate()
                    .for_each(|(p, buf)| f(p, buf));
                v
            }
        };
        // Tasks of at most 192 rows (whole blocks), at least four a thread.
        let mb = product_rows(isa());
        let chunk = blocks_per_task(n.div_ceil(mb), (192 / mb).max(1), threads * 4, threads) * mb;
        out.par_chunks_mut(chunk * rows)
            .enumerate()
            .for_each(|(c, o)| {
                let m = o.len() / rows;
                matmul_serial(
                    &x[c * chunk * cols..(c * chunk + m) * cols],
                    m,
                    rows,
                    cols,
                    all,
                    o,
                );
                if let Some(e) = epilogue {
                    e(c * chunk, o);
                }
            });
        return;
    }
    let isa = isa();
    let np = rows.div_ceil(NR);
    // Panels per task: several tasks per thread, fewer when each panel is much work.
    let per = (np / (threads * 4)).clamp(1, 64);
    let xs: Vec<&[f32]> = x.chunks(cols).take(n).collect();
    let mb = product_rows(isa);
    let blocks = n.div_ceil(mb);
    assert!(out.len() >= n * rows);
    let op = SyncPtr(out.as_mut_ptr());
    (0..np.div_ceil(per)).into_par_iter().for_each(|t| {
        let p0 = t * per;
        let p1 = (p0 + per).min(np);
        let mut buf = Vec::new();
        let scratch: &mut [f32] = match panels {
            Panels::Stored(_) => &mut [],
            Panels::Fill(..) => aligned_front(&mut buf, cols * NR),
        };
        let mut xk: Vec<&[f32]> = Vec::with_capacity(mb);
        // A long panel KC steps at a time, so that its slice stays in L1 while every
        // block of rows passes over it (whole, it would stream from L2 once per block).
        let kc = if n > 1 { KC } else { cols.max(1) };
        for p in p0..p1 {
            let panel: &[f32] = match panels {
                Panels::Stored(all) => &all[p * cols * NR..(p + 1) * cols * NR],
                Panels::Fill(f, _) => {
                    f(p, scratch);
                    scratch
                }
            };
            let slices = cols.max(1).div_ceil(kc);
            let valid = NR.min(rows - p * NR);
            for (s, c0) in (0..cols.max(1)).step_by(kc).enumerate() {
                let c1 = (c0 + kc).min(cols);
                let slice = &panel[c0 * NR..c1 * NR];
                // What comes next is fetched into L2 while the blocks pass over this
                // slice, a share of its lines per block: the next slice of this panel
                // or the next stored one; or, spread over the whole panel, the source of
                // the next panel to fill (the next task's first, which the same thread
                // most often takes, when this is the task's last).
                let (next, part0, parts): (&[u8], usize, usize) = match panels {
                    Panels::Stored(all) if blocks > 1 => {
                        let at = p * cols * NR + c1 * NR;
                        let end = (at + kc * NR).min(p1 * cols * NR).min(all.len());
                        (bytes_of(&all[at.min(end)..end]), 0, blocks)
                    }
                    Panels::Fill(_, source) if p + 1 < np => {
                        (source(p + 1), s * blocks, slices * blocks)
                    }
                    _ => (&[], 0, 1),
                };
                for (b, xb) in xs.chunks(mb).enumerate() {
                    prefetch_share(next, part0 + b, parts);
                    xk.clear();
                    xk.extend(xb.iter().map(|r| &r[c0..c1]));
                    // SAFETY: columns p·NR..p·NR + valid of the block's rows belong to
                    // this task (its panels) and lie inside out (asserted above).
                    unsafe {
                        let at = op.get().add(b * mb * rows + p * NR);
                        let dst = Dst::rows(at, rows, valid, c0 > 0);
                        panel_rows_into(isa, &xk, slice, dst);
                    }
                }
            }
        }
    });
    run_epilogue(&mut out[..n * rows], rows, epilogue);
}

/// `epilogue` over the finished rows of `out` (each `rows` wide), 16 rows a task.
pub(crate) fn run_epilogue(out: &mut [f32], rows: usize, epilogue: Option<Epilogue<'_>>) {
    if let Some(e) = epilogue {
        out.par_chunks_mut(16 * rows.max(1))
            .enumerate()
            .for_each(|(i, o)| e(16 * i, o));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aligned scratch starts a cache line and holds the length asked for, whatever
    /// the vector's own start (small allocations start 16 bytes apart, so some of these
    /// do not start a line), length and later growth.
    #[test]
    fn aligned_front_starts_a_line() {
        let mut keep = Vec::new();
        for start_len in 1..40usize {
            let mut v = vec![0f32; start_len];
            for len in [0usize, 1, 31, 32, 1000, 5000] {
                let got = aligned_front(&mut v, len);
                assert_eq!(got.len(), len);
                assert_eq!(got.as_ptr() as usize % 64, 0, "from {start_len}, len {len}");
                got.fill(1.0);
            }
            // Kept, so that the next vector comes from elsewhere in the heap.
            keep.push(v);
        }
    }

    /// The register transposes of every ISA this CPU has against the plain index swap,
    /// inside larger matrices (strides other than the block's side).
    #[test]
    fn register_transposes_swap_rows_and_columns() {
        #[cfg(target_arch = "x86_64")]
        for level in [Isa::Avx2, Isa::Avx512] {
            let side = transpose_side(level);
            if isa() < level {
                continue;
            }
            let (lds, ldd) = (side + 3, side + 5);
            let src: Vec<f32> = (0..side * lds).map(|i| i as f32).collect();
            let mut dst = vec![-1f32; side * ldd];
            // SAFETY: the ISA was detected; both buffers hold `side` rows of their strides.
            unsafe { transpose_block(level, src.as_ptr(), lds, dst.as_mut_ptr(), ldd) };
            for r in 0..side {
                for c in 0..side {
                    assert_eq!(dst[c * ldd + r], src[r * lds + c], "{level:?} ({r}, {c})");
                }
                assert!(dst[r * ldd + side..(r + 1) * ldd]
                    .iter()
                    .all(|&v| v == -1.0));
            }
        }
    }

    /// Both strategies of the transposed product (in place below 1024 steps, packed
    /// above; AVX2 in place only for small inputs, in passes of 64 steps), with and
    /// without the row of column sums, against the plain sum; with groups of whole
    /// blocks (48, 100 columns) and partial ones.
    #[test]
    fn transposed_products_match_the_plain_sum() {
        for (k, n, rows) in [
            (70, 13, 40),
            (70, 13, 64),
            (70, 29, 64),
            (1100, 19, 64),
            (70, 100, 64),
            (200, 48, 96),
            (1100, 48, 32),
        ] {
            let xt: Vec<f32> = (0..k * n)
                .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
                .collect();
            let w: Vec<f32> = (0..rows * k)
                .map(|i| ((i * 13) % 19) as f32 / 9.0 - 1.0)
                .collect();
            let panels = pack(&w, rows, k);
            for ones in [false, true] {
                let out_rows = n + ones as usize;
                let mut out = vec![0.25f32; out_rows * rows];
                matmul_tn(
                    &xt,
                    n,
                    n,
                    rows,
                    k,
                    &panels,
                    &mut out,
                    true,
                    &mut Vec::new(),
                    ones,
                );
                // W given unpacked, as its transpose [k, rows] (short sums, whole panels).
                let mut wt = vec![0f32; k * rows];
                for r in 0..rows {
                    for c in 0..k {
                        wt[c * rows + r] = w[r * k + c];
                    }
                }
                let mut out2 = vec![0.25f32; out_rows * rows];
                let done = matmul_tn_unpacked(&xt, n, n, rows, k, &wt, &mut out2, true, ones);
                assert_eq!(done.is_some(), k < in_place_steps() && rows % NR == 0);
                if done.is_some() {
                    for (a, b) in out.iter().zip(&out2) {
                        assert!(
                            (a - b).abs() < 1e-4 * (1.0 + a.abs()),
                            "unpacked {a} vs {b}"
                        );
                    }
                }
                for i in 0..out_rows {
                    for r in 0..rows {
                        let want: f32 = 0.25
                            + (0..k)
                                .map(|c| if i < n { xt[c * n + i] } else { 1.0 } * w[r * k + c])
                                .sum::<f32>();
                        let got = out[i * rows + r];
                        assert!(
                            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "k {k} ones {ones} [{i},{r}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_products_match_the_plain_sum() {
        // Short sums (of an odd length too: the AVX2 single-row kernel takes two steps
        // at a time), sums longer than KC (in one pass up to 2·KC in matmul_serial) and
        // longer than 2·KC (taken a slice at a time).
        for (rows, cols) in [(75, 42), (33, 43), (40, 300), (70, 600)] {
            packed_products(rows, cols);
        }
    }

    fn packed_products(rows: usize, cols: usize) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let packed = pack(&w, rows, cols);
        let mut row = vec![0f32; cols];
        let r = rows - 5;
        unpack_row(&packed, cols, r, &mut row);
        assert_eq!(row, &w[r * cols..(r + 1) * cols]);
        for n in [1, 3, 8, 11, 12, 20, 29, 300] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0)
                .collect();
            let mut out = vec![0f32; n * rows];
            matmul(&x, n, rows, cols, Panels::Stored(&packed), &mut out);
            let fill = |p: usize, buf: &mut [f32]| {
                buf.copy_from_slice(&packed[p * cols * NR..(p + 1) * cols * NR])
            };
            let mut out2 = vec![0f32; n * rows];
            matmul(&x, n, rows, cols, Panels::Fill(&fill, &|_| &[]), &mut out2);
            assert_eq!(out, out2);
            let mut out3 = vec![0f32; n * rows];
            matmul_serial(&x, n, rows, cols, &packed, &mut out3);
            // The same sums, in another order for one row (four partial sums there).
            for (a, b) in out.iter().zip(&out3) {
                assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "n={n}: {a} vs {b}");
            }
            for i in 0..n {
                for r in 0..rows {
                    let want: f32 = (0..cols).map(|c| x[i * cols + c] * w[r * cols + c]).sum();
                    let got = out[i * rows + r];
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "n={n} [{i},{r}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
