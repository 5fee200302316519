//! Model families, one file each. Configs deserialise from Hugging Face `config.json`
//! and parameters carry HF tensor names, so loading a checkpoint is a lookup.

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod marian;

use candle_core::Tensor;

use crate::nn::{KvCache, Mode};
use crate::Result;

/// What generation and perplexity need from a decoder-only language model.
pub trait CausalLm {
    /// Final hidden states `[B, T, C]` for ids `[B, T]`, continuing `cache` if given.
    fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>, mode: &mut Mode) -> Result<Tensor>;
    /// Logits `[B, T, vocab]` for hidden states `[B, T, C]`.
    fn logits(&self, h: &Tensor) -> Result<Tensor>;
    /// Logits for ids: `logits(hidden(ids))`.
    fn forward(
        &self,
        ids: &Tensor,
        cache: Option<&mut KvCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let h = self.hidden(ids, cache, mode)?;
        self.logits(&h)
    }
    /// The longest sequence the model accepts.
    fn context(&self) -> usize;
    fn vocab_size(&self) -> usize;
    fn n_layer(&self) -> usize;
    fn bos(&self) -> Option<u32>;
    fn eos(&self) -> Option<u32>;
    /// A decoding session with the model's own cache, for models that keep one outside
    /// [`KvCache`] (the CPU inference engine); `None` means "use `hidden` with a `KvCache`".
    fn native_session(&self) -> Option<Box<dyn crate::generate::Session + '_>> {
        None
    }
    /// The concrete model, for callers that need more than this trait (benchmarks).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

impl CausalLm for gpt2::Gpt2 {
    fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>, mode: &mut Mode) -> Result<Tensor> {
        gpt2::Gpt2::hidden(self, ids, cache, mode)
    }
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        gpt2::Gpt2::logits(self, h)
    }
    fn context(&self) -> usize {
        self.config.n_positions
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn n_layer(&self) -> usize {
        self.config.n_layer
    }
    fn bos(&self) -> Option<u32> {
        self.config.bos_token_id
    }
    fn eos(&self) -> Option<u32> {
        self.config.eos_token_id
    }
}

impl CausalLm for llama::Llama {
    fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>, mode: &mut Mode) -> Result<Tensor> {
        llama::Llama::hidden(self, ids, cache, mode)
    }
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        llama::Llama::logits(self, h)
    }
    fn context(&self) -> usize {
        self.config.max_position_embeddings
    }
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }
    fn n_layer(&self) -> usize {
        self.config.num_hidden_layers
    }
    fn bos(&self) -> Option<u32> {
        self.config.bos()
    }
    fn eos(&self) -> Option<u32> {
        self.config.eos()
    }
}
