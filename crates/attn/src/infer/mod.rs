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
mod vmath;

pub use gpt2::{Gpt2Engine, Gpt2State, Want};
pub use quant::{QMatrix, WeightType};
