//! The CPU backend: every operation of the engine as a function over `f32` slices, each
//! inner loop compiled for AVX-512, AVX2 + FMA and portably and picked once at run time
//! ([`isa`]; the [`vmath::dispatch`] macro, or an explicit match for the hand-written
//! intrinsics). Each operation's backward sits beside its forward in the same file.
//!
//! | file | operations |
//! |---|---|
//! | [`panel`] | f32 matrix products over weights packed in column panels (the GEMM engine: decode, prefill, training products) |
//! | [`quant`] | f16, 8-bit and 4-bit weight matrices and their products |
//! | [`half`] | f16 weights in the panels' layout: packing, expansion, the batch-1 product |
//! | [`gemm`] | the training products with their fused epilogues (bias, residual + dropout + next norm, GELU and its derivative), and `xᵀ·dy` |
//! | [`norm`] | LayerNorm and RMSNorm, forward and backward |
//! | [`attention`] | causal attention over whole sequences with grouped key/value heads, forward and backward |
//! | [`attend`] | one query against a KV cache (decoding) |
//! | [`rope`] | rotary position tables and rotation (its inverse is the backward) |
//! | [`swiglu`] | SwiGLU, forward and backward |
//! | [`loss`] | softmax cross-entropy with its gradient |
//! | [`optim`] | AdamW and the gradient norm |
//! | [`dropout`] | counter-based inverted dropout (the mask recomputed, not stored) |
//! | [`vmath`] | row operations: exp, softmax, norms of one row, GELU, SiLU |

pub(crate) mod attend;
pub mod attention;
pub(crate) mod bf16;
pub mod dropout;
pub mod gemm;
pub(crate) mod half;
pub mod huge;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod panel;
pub mod quant;
pub mod rope;
pub mod swiglu;
pub(crate) mod vmath;

pub use attention::{attention, attention_backward, Heads};
pub use dropout::{dropout_into, Dropout};
pub use gemm::{
    add_and_clear, gemm, gemm_bias, gemm_bias_gelu, gemm_bias_residual, gemm_gelu_grad,
    gemm_tn_acc, NormOut, Rhs,
};
pub use loss::{cross_entropy, smoothed_cross_entropy};
pub use norm::{layer_norm, layer_norm_backward};
pub use optim::{adamw, chunk_squares, sum_squares, AdamWStep};
pub use rope::{rope, Rope, RopeScaling, RopeTable};
pub use swiglu::{swiglu, swiglu_backward};

/// Run `f` on a thread of the rayon pool, so that the many parallel loops inside it
/// start from a worker (cheap) instead of each waking the pool from outside and putting
/// the caller to sleep until it finishes.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The widest vector instructions the engine's kernels use, detected once. It can be
/// capped for testing and for comparing instruction sets on one machine:
/// `ATTN_ISA=avx2` or `ATTN_ISA=portable` (plain Rust, no
/// explicit vector code); a cap above what the CPU has is ignored.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub(crate) enum Isa {
    Portable,
    Avx2,
    Avx512,
}
pub(crate) fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let cap = match std::env::var("ATTN_ISA").as_deref() {
            Ok("portable") => Isa::Portable,
            Ok("avx2") => Isa::Avx2,
            _ => Isa::Avx512,
        };
        detected().min(cap)
    })
}

/// What the CPU has, uncapped.
fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let fma = std::is_x86_feature_detected!("fma");
        if fma && std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if fma && std::is_x86_feature_detected!("avx2") {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// Whether the CPU is AMD's (its CPUID vendor string is "AuthenticAMD"): where the same
/// instructions run at different speeds on AMD's and Intel's cores, and a kernel choice
/// depends on it (see `bf16::available`). Public for the command's tests, which check
/// the choice it makes.
#[cfg(target_arch = "x86_64")]
pub fn vendor_is_amd() -> bool {
    use std::sync::OnceLock;
    static AMD: OnceLock<bool> = OnceLock::new();
    *AMD.get_or_init(|| {
        #[allow(unused_unsafe)]
        // SAFETY: leaf 0 of CPUID exists on every x86-64 CPU.
        let id = unsafe { std::arch::x86_64::__cpuid(0) };
        // The twelve bytes of the vendor string, in the order EBX, EDX, ECX.
        let mut vendor = [0u8; 12];
        vendor[..4].copy_from_slice(&id.ebx.to_le_bytes());
        vendor[4..8].copy_from_slice(&id.edx.to_le_bytes());
        vendor[8..].copy_from_slice(&id.ecx.to_le_bytes());
        &vendor == b"AuthenticAMD"
    })
}

/// The instruction set in use, by name (for benchmarks and test logs).
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}

/// Rows per parallel task for rows of `row` elements: about 16K elements each.
pub(crate) fn rows_per_task(rows: usize, row: usize) -> usize {
    (16384 / row.max(1)).clamp(1, rows.max(1))
}

/// Run `f(first_row, rows)` over `out`, split into groups of whole rows of `row`
/// elements (one group, on the calling thread, when the job is small).
pub(crate) fn for_rows<T: Send>(
    out: &mut [T],
    row: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    use rayon::prelude::*;
    let rows = out.len() / row.max(1);
    let per = rows_per_task(rows, row);
    if per >= rows {
        f(0, out);
        return;
    }
    out.par_chunks_mut(per * row)
        .enumerate()
        .for_each(|(i, chunk)| f(i * per, chunk));
}

/// Deterministic test values in [−1, 1) for the kernels' tests.
#[cfg(test)]
pub(crate) fn test_data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0)
        .collect()
}
