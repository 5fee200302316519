//! f16 weights kept in the f32 panels' layout ([`super::panel`]): each panel of [`NR`]
//! rows stored `[cols][NR]` as f16 bits, the last panel padded with zeros.
//!
//! Why panels rather than rows: a prompt's product expands each panel to f32 once for
//! all its input rows, and from this layout that is one conversion pass; from rows it
//! was a conversion and a transpose of every 32 × 32 tile (about a tenth of an AVX2
//! prompt's time, enough to leave f16 prompts behind f32 ones). Decoding streams each
//! panel front to back, converting as it goes: one sequential read per task, the same
//! shape as the f32 panels' batch-1 product.

use half::f16;
use rayon::prelude::*;

use super::huge::HugeVec;
use super::panel::{packed_len, NR};
use super::{isa, Isa};

/// f16 panels of row-major `values` `[rows, cols]` (rounded to nearest).
pub(crate) fn pack(values: &[f32], rows: usize, cols: usize) -> HugeVec<u16> {
    assert_eq!(values.len(), rows * cols, "f16 panels: values");
    let mut out = HugeVec::<u16>::zeroed(packed_len(rows, cols));
    out.par_chunks_mut(cols.max(1) * NR)
        .enumerate()
        .for_each(|(p, panel)| {
            let valid = NR.min(rows - p * NR);
            for j in 0..valid {
                let row = &values[(p * NR + j) * cols..(p * NR + j + 1) * cols];
                for (c, &v) in row.iter().enumerate() {
                    panel[c * NR + j] = f16::from_f32(v).to_bits();
                }
            }
        });
    out
}

/// Elements `c0..c0 + out.len()` of row `r` of f16 panels `cols` wide, as f32.
pub(crate) fn unpack_range(panels: &[u16], cols: usize, r: usize, c0: usize, out: &mut [f32]) {
    let panel = &panels[(r / NR) * cols * NR..][..cols * NR];
    for (i, o) in out.iter_mut().enumerate() {
        *o = f16::from_bits(panel[(c0 + i) * NR + r % NR]).to_f32();
    }
}

/// One panel (`[cols][NR]` f16 bits) as f32 into `out` (at least as long).
pub(crate) fn expand(panel: &[u16], out: &mut [f32]) {
    let out = &mut out[..panel.len()];
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx2 if std::is_x86_feature_detected!("f16c") => {
            // SAFETY: AVX2 and F16C are present (the ISA and the check above); the
            // kernel reads and writes within the two equal-length slices.
            unsafe { x86::expand(panel, out) }
        }
        _ => {
            use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
            let src: &[f16] = panel.reinterpret_cast();
            src.convert_to_f32_slice(out);
        }
    }
}

/// `out[r] = Σ_c x[c] · W[r, c]` for one input row `x` (`cols` long) and f16 panels of
/// `W` `[rows, cols]`: each task streams a run of whole panels.
pub(crate) fn matvec(x: &[f32], panels: &[u16], rows: usize, cols: usize, out: &mut [f32]) {
    assert_eq!(x.len(), cols, "f16 product: input length");
    assert_eq!(out.len(), rows, "f16 product: output length");
    assert!(
        panels.len() >= packed_len(rows, cols),
        "f16 product: panels"
    );
    let np = rows.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let per = (np / (threads * 4)).clamp(1, 64);
    let level = isa();
    out.par_chunks_mut(per * NR).enumerate().for_each(|(t, o)| {
        for (i, o) in o.chunks_mut(NR).enumerate() {
            let p = t * per + i;
            let panel = &panels[p * cols * NR..(p + 1) * cols * NR];
            let mut acc = [0f32; NR];
            one(level, x, panel, &mut acc);
            o.copy_from_slice(&acc[..o.len()]);
        }
    });
}

/// One panel against one input row.
fn one(level: Isa, x: &[f32], panel: &[u16], out: &mut [f32; NR]) {
    assert!(x.len() >= panel.len() / NR);
    match level {
        // SAFETY: the features were detected (ISA plus F16C); the kernels read
        // panel.len() / NR steps of x (asserted above) and of the panel.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if std::is_x86_feature_detected!("f16c") => unsafe {
            x86::one512(x, panel, out)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if std::is_x86_feature_detected!("f16c") => unsafe { x86::one256(x, panel, out) },
        _ => one_portable(x, panel, out),
    }
}

/// The reference the vector kernels are tested against.
fn one_portable(x: &[f32], panel: &[u16], out: &mut [f32; NR]) {
    let mut acc = [0f32; NR];
    for (kk, w) in panel.chunks_exact(NR).enumerate() {
        let xv = x[kk];
        for j in 0..NR {
            acc[j] = xv.mul_add(f16::from_bits(w[j]).to_f32(), acc[j]);
        }
    }
    *out = acc;
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX2 and F16C must be present; `out` as long as `panel`, a multiple of 8.
    #[target_feature(enable = "avx2,f16c")]
    pub(super) unsafe fn expand(panel: &[u16], out: &mut [f32]) {
        assert!(out.len() == panel.len() && panel.len().is_multiple_of(8));
        let (s, d) = (panel.as_ptr(), out.as_mut_ptr());
        for i in (0..panel.len()).step_by(8) {
            let h = _mm_loadu_si128(s.add(i) as *const __m128i);
            _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(h));
        }
    }

    /// Two sets of four sums over alternating steps (eight independent chains: the
    /// additions do not wait on the FMA latency). No software prefetch: a task reads
    /// one sequential stream, which the hardware prefetcher follows.
    ///
    /// # Safety
    /// AVX2, FMA and F16C must be present; `x` must hold `panel.len() / NR` values.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn one256(x: &[f32], panel: &[u16], out: &mut [f32; NR]) {
        let k = panel.len() / NR;
        let (px, pw) = (x.as_ptr(), panel.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 4]; 2];
        let step = |acc: &mut [__m256; 4], kk: usize| {
            let xv = _mm256_set1_ps(*px.add(kk));
            for (q, a) in acc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(pw.add(kk * NR + 8 * q) as *const __m128i);
                *a = _mm256_fmadd_ps(xv, _mm256_cvtph_ps(h), *a);
            }
        };
        let mut kk = 0;
        while kk + 2 <= k {
            step(&mut acc[0], kk);
            step(&mut acc[1], kk + 1);
            kk += 2;
        }
        if kk < k {
            step(&mut acc[0], kk);
        }
        for (q, (a, b)) in acc[0].iter().zip(&acc[1]).enumerate() {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * q), _mm256_add_ps(*a, *b));
        }
    }

    /// [`one256`] with 16 lanes: four sets of two sums.
    ///
    /// # Safety
    /// AVX-512F, FMA and F16C must be present; `x` must hold `panel.len() / NR` values.
    #[target_feature(enable = "avx512f,fma,f16c")]
    pub(super) unsafe fn one512(x: &[f32], panel: &[u16], out: &mut [f32; NR]) {
        let k = panel.len() / NR;
        let (px, pw) = (x.as_ptr(), panel.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; 4];
        let step = |acc: &mut [__m512; 2], kk: usize| {
            let xv = _mm512_set1_ps(*px.add(kk));
            for (q, a) in acc.iter_mut().enumerate() {
                let h = _mm256_loadu_si256(pw.add(kk * NR + 16 * q) as *const __m256i);
                *a = _mm512_fmadd_ps(xv, _mm512_cvtph_ps(h), *a);
            }
        };
        let mut kk = 0;
        while kk + 4 <= k {
            for (u, a) in acc.iter_mut().enumerate() {
                step(a, kk + u);
            }
            kk += 4;
        }
        while kk < k {
            step(&mut acc[0], kk);
            kk += 1;
        }
        for q in 0..2 {
            let [a, b, c, d] = acc.map(|a| a[q]);
            let s = _mm512_add_ps(_mm512_add_ps(a, b), _mm512_add_ps(c, d));
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * q), s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], rows: usize, cols: usize) -> Vec<f64> {
        (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| x[c] as f64 * f16::from_f32(w[r * cols + c]).to_f32() as f64)
                    .sum()
            })
            .collect()
    }

    /// Every instruction set's batch-1 product against f64 sums of the rounded weights,
    /// over shapes with a partial last panel and odd step counts; and the expansion and
    /// row gather against the rounded values.
    #[test]
    fn panels_round_trip_and_products_match() {
        for (rows, cols) in [(1, 1), (33, 7), (64, 96), (70, 129)] {
            let w = super::super::test_data(rows * cols, rows + cols);
            let x = super::super::test_data(cols, 3);
            let h = pack(&w, rows, cols);
            let want = reference(&x, &w, rows, cols);
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                unpack_range(&h, cols, r, 0, &mut row);
                for c in 0..cols {
                    assert_eq!(row[c], f16::from_f32(w[r * cols + c]).to_f32(), "{r},{c}");
                }
            }
            let mut panel = vec![0f32; cols * NR];
            for p in 0..rows.div_ceil(NR) {
                expand(&h[p * cols * NR..(p + 1) * cols * NR], &mut panel);
                for j in 0..NR {
                    for c in 0..cols {
                        let r = p * NR + j;
                        let v = if r < rows {
                            f16::from_f32(w[r * cols + c]).to_f32()
                        } else {
                            0.0
                        };
                        assert_eq!(panel[c * NR + j], v, "panel {p} row {j} column {c}");
                    }
                }
            }
            let levels = [Isa::Portable, Isa::Avx2, Isa::Avx512];
            for level in levels.into_iter().filter(|&l| l <= isa()) {
                let mut got = vec![0f32; rows];
                for (p, o) in got.chunks_mut(NR).enumerate() {
                    let mut acc = [0f32; NR];
                    one(level, &x, &h[p * cols * NR..(p + 1) * cols * NR], &mut acc);
                    o.copy_from_slice(&acc[..o.len()]);
                }
                for (r, (&g, &e)) in got.iter().zip(&want).enumerate() {
                    let scale: f64 = (0..cols)
                        .map(|c| (x[c] * w[r * cols + c]).abs() as f64)
                        .sum();
                    assert!(
                        (g as f64 - e).abs() <= 1e-6 * (1.0 + scale),
                        "{level:?} {rows}×{cols} row {r}: {g} vs {e}"
                    );
                }
            }
            let mut all = vec![0f32; rows];
            matvec(&x, &h, rows, cols, &mut all);
            for (r, (&g, &e)) in all.iter().zip(&want).enumerate() {
                assert!(
                    (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
                    "matvec row {r}"
                );
            }
        }
    }
}
