//! Model families, one file each. Configs deserialise from Hugging Face `config.json`
//! and parameters carry HF tensor names, so loading a checkpoint is a lookup.

pub mod bert;
pub mod gpt2;
pub mod llama;
pub mod marian;

use candle_core::Tensor;

use crate::generate::Session;
use crate::nn::{KvCache, Mode};
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
    /// The concrete model, for callers that need more than this trait (benchmarks).
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The tensor-graph models' passes (kept for the tests that compare them until the
/// graph goes).
trait Graph {
    fn hidden(&self, ids: &Tensor, cache: Option<&mut KvCache>, mode: &mut Mode) -> Result<Tensor>;
    fn logits(&self, h: &Tensor) -> Result<Tensor>;
}

/// A session over a graph model through its `hidden` pass and a [`KvCache`].
struct GraphSession<'a, G: Graph> {
    model: &'a G,
    cache: KvCache,
}

impl<G: Graph> Session for GraphSession<'_, G> {
    fn len(&self) -> usize {
        self.cache.len()
    }
    fn clear(&mut self) {
        self.cache.clear();
    }
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let x = Tensor::new(ids, &candle_core::Device::Cpu)?.unsqueeze(0)?;
        let h = self
            .model
            .hidden(&x, Some(&mut self.cache), &mut Mode::Eval)?;
        let last = h.narrow(1, h.dim(1)? - 1, 1)?;
        let logits = self.model.logits(&last)?.squeeze(0)?.squeeze(0)?;
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec1()?)
    }
}

fn graph_logits_all<G: Graph>(model: &G, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
    seqs.iter()
        .map(|s| {
            let x = Tensor::new(*s, &candle_core::Device::Cpu)?.unsqueeze(0)?;
            let h = model.hidden(&x, None, &mut Mode::Eval)?;
            Ok(model
                .logits(&h)?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        })
        .collect()
}

macro_rules! graph_lm {
    ($t:ty, $ctx:expr, $vocab:expr, $layers:expr, $bos:expr, $eos:expr) => {
        impl Graph for $t {
            fn hidden(
                &self,
                ids: &Tensor,
                cache: Option<&mut KvCache>,
                mode: &mut Mode,
            ) -> Result<Tensor> {
                <$t>::hidden(self, ids, cache, mode)
            }
            fn logits(&self, h: &Tensor) -> Result<Tensor> {
                <$t>::logits(self, h)
            }
        }
        impl CausalLm for $t {
            fn logits_all(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
                graph_logits_all(self, seqs)
            }
            fn session(&self) -> Box<dyn Session + '_> {
                Box::new(GraphSession {
                    model: self,
                    cache: KvCache::new(CausalLm::n_layer(self)),
                })
            }
            fn context(&self) -> usize {
                $ctx(self)
            }
            fn vocab_size(&self) -> usize {
                $vocab(self)
            }
            fn n_layer(&self) -> usize {
                $layers(self)
            }
            fn bos(&self) -> Option<u32> {
                $bos(self)
            }
            fn eos(&self) -> Option<u32> {
                $eos(self)
            }
        }
    };
}

graph_lm!(
    gpt2::Gpt2,
    |m: &gpt2::Gpt2| m.config.n_positions,
    |m: &gpt2::Gpt2| m.config.vocab_size,
    |m: &gpt2::Gpt2| m.config.n_layer,
    |m: &gpt2::Gpt2| m.config.bos_token_id,
    |m: &gpt2::Gpt2| m.config.eos_token_id
);
graph_lm!(
    llama::Llama,
    |m: &llama::Llama| m.config.max_position_embeddings,
    |m: &llama::Llama| m.config.vocab_size,
    |m: &llama::Llama| m.config.num_hidden_layers,
    |m: &llama::Llama| m.config.bos(),
    |m: &llama::Llama| m.config.eos()
);
