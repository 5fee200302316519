//! Model families, one file each. Configs deserialise from Hugging Face `config.json`
//! and parameters carry HF tensor names, so loading a checkpoint is a lookup.

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod marian;
pub mod t5;

use crate::generate::Session;
use crate::Result;

/// What generation and perplexity need from a decoder-only language model.
pub trait CausalLm {
    /// Logits `[len, vocab]` (row-major) at every position of each sequence, each read
    /// from its start.
    fn logits_all(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>>;
    /// A decoding session: tokens go in, the next token's logits come out.
    fn session(&self) -> Box<dyn Session + '_>;
    /// The longest sequence the model accepts.
    fn context(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn n_layer(&self) -> usize;
    fn bos(&self) -> Option<u32>;
    fn eos(&self) -> Option<u32>;
}
