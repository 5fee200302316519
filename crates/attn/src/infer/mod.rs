//! Inference on the CPU outside the tensor graph, for speed: weight matrices stored for
//! the product (f32, f16, or 8- and 4-bit blocks with SIMD dot products) and a GPT-2
//! forward pass over ragged batches with a per-sequence key/value cache.
//!
//! Training and the gradient checks use [`crate::models`]; this module reads the same
//! Hugging Face folders and gives the same logits (to rounding), faster.

mod attend;
pub mod gpt2;
pub mod panel;
pub mod quant;
pub(crate) mod vmath;

pub use gpt2::{Gpt2Engine, Gpt2State, Want};
pub use quant::{QMatrix, WeightType};

/// The widest vector instructions the engine's plain-Rust kernels are compiled for,
/// detected once (`ATTN_NO_AVX512=1` caps it at AVX2).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

pub(crate) fn isa() -> Isa {
    use std::sync::OnceLock;
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let fma = std::is_x86_feature_detected!("fma");
            if fma
                && std::is_x86_feature_detected!("avx512f")
                && std::env::var("ATTN_NO_AVX512").is_err()
            {
                return Isa::Avx512;
            }
            if fma && std::is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}
