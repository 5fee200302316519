//! CPU kernels of the inference engine ([`crate::engine`]): weight matrices stored for
//! the product (f32 panels, f16, or 8- and 4-bit blocks with SIMD dot products),
//! attention of one head against its cache, and vectorised row operations.

pub(crate) mod attend;
pub mod panel;
pub mod quant;
pub(crate) mod vmath;

pub use quant::{QMatrix, WeightType};

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

/// The instruction set in use, by name (for benchmarks and test logs).
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx512 => "avx512",
        Isa::Avx2 => "avx2",
        Isa::Portable => "portable",
    }
}
