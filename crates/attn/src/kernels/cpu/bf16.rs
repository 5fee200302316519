//! Prompt products of 8- and 4-bit weights in bf16, on AMD CPUs with AVX-512 BF16 (Zen 4
//! and later; Intel's with it run these prompts faster on f32 panels, see [`available`]):
//! each panel of weight rows is expanded to bf16 pairs instead of f32, and the inputs are
//! rounded to bf16, so that one `vdpbf16ps` does the multiply-adds of two f32 FMAs; sums
//! stay in f32.
//!
//! Why only for those weights, and only for prompts: a quantized weight already carries
//! an error of up to half a step of its block's scale (1/254 of the block's largest value
//! for 8 bits, 1/16 for 4), above bf16's rounding (at most 1/512 of the value), and the
//! single-token path already rounds its inputs to 8 bits per block for the integer dot
//! products. f32 and f16 weights keep exact f32 products.
//!
//! Layout: panel `p` holds weight rows `32p..32p+32` as `[cols/2][32]` 32-bit words, word
//! `(kp, j)` the bf16 pair (row `j`'s values at steps `2kp`, `2kp + 1`), which is what
//! `vdpbf16ps` multiplies with one broadcast pair of input values.

use rayon::prelude::*;

use super::panel::{Epilogue, SyncPtr, NR};
use super::quant::QMatrix;

/// Input rows per kernel call (24 of the 32 registers hold accumulators).
const MB: usize = 12;
/// Pairs of steps per slice of a panel (16 KiB, kept in L1 while the row blocks pass).
const KP: usize = 128;

/// Whether this CPU can run the bf16 products (and `ATTN_ISA` does not cap it below
/// AVX-512).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            super::isa() == super::Isa::Avx512
                && std::is_x86_feature_detected!("avx512bf16")
                && std::is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether prompts' 8- and 4-bit products take the bf16 path here: where the CPU runs
/// it ([`supported`]) and it is the faster one, which is on AMD's cores only. Zen 4
/// executes `vdpbf16ps` as fast as an FMA, so it does twice the multiply-adds; on an
/// Intel Xeon of the Emerald Rapids generation (family 6 model 207) the same prompts ran
/// 1.6–1.7 times as fast on the f32 panels (`examples/prefill`, the 125M Llama and GPT-2
/// shapes at 8 and 4 bits, 128 tokens, 2 threads: Llama q8 896–900 tokens/s in bf16
/// against 1497–1528 in f32, GPT-2 q4 775–790 against 1233–1322).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return supported() && super::vendor_is_amd();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `out[i, r] = Σ_c x[i, c] · W[r, c]` for the `n` rows of `x`, with the weights and the
/// inputs rounded to bf16 and f32 sums; then `epilogue` on the output rows.
///
/// # Panics
/// Unless [`supported`] and `W` has a whole number of 32-column blocks a row.
pub(crate) fn matmul_then(
    x: &[f32],
    n: usize,
    w: &QMatrix,
    out: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
) {
    assert!(supported(), "bf16 products need AVX-512 BF16");
    let (rows, cols) = (w.rows, w.cols);
    assert!(cols.is_multiple_of(32) && x.len() >= n * cols && out.len() >= n * rows);
    let half = cols / 2;
    let mut xb = vec![0u32; n * half];
    xb.par_chunks_mut(16 * half)
        .zip(x[..n * cols].par_chunks(16 * cols))
        // SAFETY: AVX-512 BF16 was detected (asserted above); whole 32-value groups.
        .for_each(|(o, i)| unsafe { to_pairs(i, o) });
    let threads = rayon::current_num_threads().max(1);
    let np = rows.div_ceil(NR);
    let per = (np / (threads * 4)).clamp(1, 64);
    let op = SyncPtr(out.as_mut_ptr());
    let xb = &xb;
    (0..np.div_ceil(per)).into_par_iter().for_each(|t| {
        let mut panel = vec![0u32; half * NR];
        let mut acc = [[0f32; NR]; MB];
        for p in t * per..((t + 1) * per).min(np) {
            // SAFETY: as above; the panel holds `half · NR` words.
            unsafe { fill_pairs(w, p, &mut panel) };
            let valid = NR.min(rows - p * NR);
            for k0 in (0..half).step_by(KP) {
                let k1 = (k0 + KP).min(half);
                for b0 in (0..n).step_by(MB) {
                    let m = MB.min(n - b0);
                    let acc = &mut acc[..m];
                    // The block's input rows (the last repeated past `m`, unused).
                    let xs: [&[u32]; MB] = std::array::from_fn(|r| {
                        let i = b0 + r.min(m - 1);
                        &xb[i * half + k0..i * half + k1]
                    });
                    rows_kernel(&xs[..m], &panel[k0 * NR..k1 * NR], acc);
                    for (i, a) in acc.iter().enumerate() {
                        // SAFETY: columns p·NR.. of every row belong to this task (its
                        // panels), and row (b0 + i) < n lies inside `out` (asserted).
                        let o = unsafe {
                            std::slice::from_raw_parts_mut(
                                op.get().add((b0 + i) * rows + p * NR),
                                valid,
                            )
                        };
                        if k0 == 0 {
                            o.copy_from_slice(&a[..valid]);
                        } else {
                            o.iter_mut().zip(a).for_each(|(o, a)| *o += a);
                        }
                    }
                }
            }
        }
    });
    super::panel::run_epilogue(&mut out[..n * rows], rows, epilogue);
}

/// Up to [`MB`] input rows (bf16 pairs) against a slice of a panel.
fn rows_kernel(x: &[&[u32]], panel: &[u32], out: &mut [[f32; NR]]) {
    let kp = panel.len() / NR;
    for r in x {
        assert!(r.len() >= kp);
    }
    macro_rules! go {
        ($m:literal) => {{
            let xp: [*const u32; $m] = std::array::from_fn(|r| x[r].as_ptr());
            let o: &mut [[f32; NR]; $m] = out.try_into().unwrap();
            // SAFETY: AVX-512 BF16 was detected by the caller; every input row holds
            // `kp` pairs and the panel `kp · NR` words (asserted above).
            #[cfg(target_arch = "x86_64")]
            unsafe {
                dot_rows::<$m>(&xp, panel.as_ptr(), kp, o)
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = (xp, o);
        }};
    }
    super::panel::by_rows!(x.len(), go)
}

/// `out[r][j] = Σ_k bf16 dot of x_r's pair k with panel word (k, j)`.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be present; each `x[r]` must hold `kp` words and
/// `panel` `kp · NR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot_rows<const MR: usize>(
    x: &[*const u32; MR],
    panel: *const u32,
    kp: usize,
    out: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for k in 0..kp {
        let p0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(k * NR).cast()));
        let p1: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(k * NR + 16).cast()));
        for (r, a) in acc.iter_mut().enumerate() {
            let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*x[r].add(k) as i32));
            a[0] = _mm512_dpbf16_ps(a[0], xv, p0);
            a[1] = _mm512_dpbf16_ps(a[1], xv, p1);
        }
    }
    for (o, a) in out.iter_mut().zip(&acc) {
        _mm512_storeu_ps(o.as_mut_ptr(), a[0]);
        _mm512_storeu_ps(o.as_mut_ptr().add(16), a[1]);
    }
}

/// `x` (a whole number of 32-value groups) rounded to bf16 (to nearest, ties to even),
/// as pairs in 32-bit words: word `i` holds values `2i` (low half) and `2i + 1`.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_pairs(x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    for (src, dst) in x.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        let lo = _mm512_loadu_ps(src.as_ptr());
        let hi = _mm512_loadu_ps(src.as_ptr().add(16));
        // The second operand's values come first.
        let b: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(dst.as_mut_ptr().cast(), b);
    }
}

/// Panel `p` of `w` as bf16 pairs (see the module's layout; zeros past the last row):
/// 32 × 32 tiles expanded to f32 row by row, rounded to pairs, then transposed as
/// 32-bit words in registers.
///
/// # Safety
/// AVX-512F and AVX-512 BF16 must be present; `panel` must hold `cols/2 · NR` words and
/// `w.cols` be a multiple of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn fill_pairs(w: &QMatrix, p: usize, panel: &mut [u32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert!(panel.len() >= cols / 2 * NR);
    let r0 = p * NR;
    let valid = NR.min(rows - r0);
    let mut tile = [0f32; 32];
    let mut pairs = [[0u32; 16]; NR];
    for c0 in (0..cols).step_by(32) {
        for (j, pr) in pairs.iter_mut().enumerate() {
            if j < valid {
                w.tile_row(r0 + j, c0, &mut tile);
                to_pairs(&tile, pr);
            } else {
                *pr = [0; 16];
            }
        }
        for j0 in [0, 16] {
            // Words (j0 + r, kp) → (c0/2 + kp, j0 + r): a 16 × 16 block of 32-bit words,
            // moved as the same bits.
            super::panel::transpose_block(
                super::Isa::Avx512,
                pairs[j0].as_ptr().cast::<f32>(),
                16,
                panel.as_mut_ptr().add(c0 / 2 * NR + j0).cast::<f32>(),
                NR,
            );
        }
    }
}

/// Never called off x86-64 ([`available`] is false there).
///
/// # Safety
/// None needed; it only panics.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_pairs(_: &[f32], _: &mut [u32]) {
    unreachable!("bf16 products need AVX-512 BF16")
}

/// Never called off x86-64 ([`available`] is false there).
///
/// # Safety
/// None needed; it only panics.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn fill_pairs(_: &QMatrix, _: usize, _: &mut [u32]) {
    unreachable!("bf16 products need AVX-512 BF16")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::quant::WeightType;

    /// f32 → bf16 → f32, rounding to nearest with ties to even (what `vcvtne2ps2bf16`
    /// does for finite values).
    fn round_bf16(v: f32) -> f32 {
        let b = v.to_bits();
        let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
        f32::from_bits(r & 0xffff_0000)
    }

    /// The choice of the bf16 path: only where the kernel runs, and only on AMD, whose
    /// vendor string CPUID read as the kernel (Linux) reports it.
    #[test]
    fn bf16_prompts_only_on_amd_cores_that_run_them() {
        assert!(!available() || supported());
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                available(),
                supported() && crate::kernels::cpu::vendor_is_amd()
            );
            if let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") {
                let vendor = info
                    .lines()
                    .find_map(|l| l.strip_prefix("vendor_id"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string());
                if let Some(v) = vendor {
                    assert_eq!(
                        crate::kernels::cpu::vendor_is_amd(),
                        v == "AuthenticAMD",
                        "{v}"
                    );
                }
            }
        }
    }

    /// Against sums in f64 of the bf16-rounded inputs and dequantized weights: shapes
    /// with a last partial panel, a partial row block and several slices of a panel.
    #[test]
    fn bf16_products_match_the_rounded_operands() {
        // The kernel itself, wherever it runs (also where prompts do not take it).
        if !supported() {
            eprintln!("skipped: no AVX-512 BF16 here");
            return;
        }
        let data = |n: usize, seed: usize| crate::kernels::cpu::test_data(n, seed);
        for (n, rows, cols) in [(13, 37, 96), (25, 70, 320), (8, 32, 32)] {
            let w = data(rows * cols, 3);
            let x = data(n * cols, 4);
            for ty in [WeightType::Q8, WeightType::Q4] {
                let q = QMatrix::from_f32(&w, rows, cols, ty).unwrap();
                let deq = q.to_f32();
                let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.01).collect();
                let add = |_: usize, out: &mut [f32]| {
                    for o in out.chunks_mut(rows) {
                        o.iter_mut().zip(&bias).for_each(|(o, b)| *o += b);
                    }
                };
                let mut out = vec![f32::NAN; n * rows];
                matmul_then(&x, n, &q, &mut out, Some(&add));
                for i in 0..n {
                    for r in 0..rows {
                        let want: f64 = (0..cols)
                            .map(|c| {
                                round_bf16(x[i * cols + c]) as f64
                                    * round_bf16(deq[r * cols + c]) as f64
                            })
                            .sum::<f64>()
                            + bias[r] as f64;
                        let got = out[i * rows + r] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{ty:?} {n}x{rows}x{cols} ({i}, {r}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
