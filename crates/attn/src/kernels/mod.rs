//! The kernel layer: every numeric operation the engine runs, in one place.
//!
//! Model code ([`crate::engine`] for inference, [`crate::train::native`] for training)
//! is written against the operations listed in [`cpu`]'s table: matrix products (f32
//! panels and f16/8-bit/4-bit weights) with fused epilogues, norms, activations,
//! attention, rotary positions, cross-entropy, AdamW and dropout, each with its backward
//! beside its forward. `cpu` is today's only backend; its inner loops are compiled for
//! AVX-512, AVX2 + FMA and portably, and one detection ([`cpu::isa`]) picks among them.
//!
//! The seam for another backend (CUDA) is the operation set itself: an accelerator
//! backend implements the same operations with the same shapes and layouts (row-major
//! `[rows, cols]` activations, weights `[in, out]`, fused q/k/v rows of query then key
//! then value heads, attention weights `[b, heads, t, t]`), over its own buffers, as a
//! sibling module of `cpu`; model code chooses the backend once, not per operation.

pub mod cpu;
pub mod cuda;

pub use cpu::quant::{QMatrix, WeightType};
pub use cpu::{in_pool, isa_name};
