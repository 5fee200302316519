//! The model side of the server: one forward pass for new prompts (prefill) and one
//! decode step for many sequences at once.
//!
//! Two back ends:
//! - a GPT-2 (f32, f16 or an `attn quantize` folder) runs on the library's inference
//!   engine, [`attn::infer::Gpt2Engine`]: prompts arriving together and the running
//!   sequences' next tokens each go through the model as one ragged batch (every matrix
//!   is read once for all of them; only attention is per sequence);
//! - any other causal model (Llama) goes through the library's tensor-graph forward pass
//!   and key/value cache, one sequence after the other in each step.

use attn::infer::{Gpt2Engine, Gpt2State, Want};
use attn::models::CausalLm;
use attn::nn::{KvCache, Mode};
use attn::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// Per-sequence model state.
pub enum SeqCache {
    Lib(KvCache),
    Engine(Gpt2State),
}

impl SeqCache {
    pub fn len(&self) -> usize {
        match self {
            SeqCache::Lib(c) => c.len(),
            SeqCache::Engine(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attention weights of one forward pass: per layer `[H, T, T]` (row = query position).
pub type AttentionMaps = Vec<Vec<Vec<Vec<f32>>>>;

pub enum Backend {
    /// A GPT-2 on the inference engine; `batched: false` runs requests one at a time.
    Engine {
        engine: Gpt2Engine,
        batched: bool,
    },
    Interleaved(Box<dyn CausalLm>),
}

impl Backend {
    pub fn gpt2(engine: Gpt2Engine, batched: bool) -> Self {
        Backend::Engine { engine, batched }
    }

    pub fn interleaved(model: Box<dyn CausalLm>) -> Self {
        Backend::Interleaved(model)
    }

    pub fn is_batched(&self) -> bool {
        matches!(self, Backend::Engine { batched: true, .. })
    }

    fn lm(&self) -> &dyn CausalLm {
        match self {
            Backend::Engine { engine, .. } => engine,
            Backend::Interleaved(m) => m.as_ref(),
        }
    }

    pub fn context(&self) -> usize {
        self.lm().context()
    }

    pub fn vocab_size(&self) -> usize {
        self.lm().vocab_size()
    }

    pub fn eos(&self) -> Option<u32> {
        self.lm().eos()
    }

    pub fn bos(&self) -> Option<u32> {
        self.lm().bos()
    }

    /// Run a whole prompt; returns its cache and the logits of the last position.
    pub fn prefill(&self, ids: &[u32]) -> Result<(SeqCache, Vec<f32>)> {
        match self {
            Backend::Engine { engine, .. } => {
                let mut st = engine.new_state();
                let logits = engine
                    .forward(&mut [&mut st], &[ids], Want::Last)?
                    .remove(0);
                Ok((SeqCache::Engine(st), logits))
            }
            Backend::Interleaved(model) => {
                let mut cache = KvCache::new(model.n_layer());
                let logits = last_logits(model.as_ref(), ids, &mut cache)?;
                Ok((SeqCache::Lib(cache), logits))
            }
        }
    }

    /// Run several prompts (of any lengths): batched, one ragged forward pass; else one
    /// after another. Returns each prompt's cache and last-position logits.
    pub fn prefill_many(&self, prompts: &[&[u32]]) -> Result<Vec<(SeqCache, Vec<f32>)>> {
        match self {
            Backend::Engine {
                engine,
                batched: true,
            } if prompts.len() > 1 => {
                let mut states: Vec<Gpt2State> =
                    prompts.iter().map(|_| engine.new_state()).collect();
                let mut refs: Vec<&mut Gpt2State> = states.iter_mut().collect();
                let logits = engine.forward(&mut refs, prompts, Want::Last)?;
                Ok(states
                    .into_iter()
                    .map(SeqCache::Engine)
                    .zip(logits)
                    .collect())
            }
            _ => prompts.iter().map(|p| self.prefill(p)).collect(),
        }
    }

    /// One new token for each sequence; returns each sequence's next logits.
    pub fn step(&self, rows: &mut [(&mut SeqCache, u32)]) -> Result<Vec<Vec<f32>>> {
        match self {
            Backend::Engine { engine, batched } => {
                let mut states = Vec::with_capacity(rows.len());
                let mut ids = Vec::with_capacity(rows.len());
                for (cache, id) in rows.iter_mut() {
                    match &mut **cache {
                        SeqCache::Engine(st) => states.push(st),
                        SeqCache::Lib(_) => {
                            return Err(Error::invalid(
                                "cache",
                                "a tensor-graph cache in the engine path",
                            ))
                        }
                    }
                    ids.push([*id]);
                }
                let toks: Vec<&[u32]> = ids.iter().map(|i| i.as_slice()).collect();
                if *batched {
                    engine.forward(&mut states, &toks, Want::Last)
                } else {
                    let mut out = Vec::with_capacity(toks.len());
                    for (st, t) in states.iter_mut().zip(&toks) {
                        out.push(
                            engine
                                .forward(&mut [&mut **st], &[t], Want::Last)?
                                .remove(0),
                        );
                    }
                    Ok(out)
                }
            }
            Backend::Interleaved(model) => {
                let mut out = Vec::with_capacity(rows.len());
                for (cache, id) in rows.iter_mut() {
                    match cache {
                        SeqCache::Lib(c) => out.push(last_logits(model.as_ref(), &[*id], c)?),
                        SeqCache::Engine(_) => {
                            return Err(Error::invalid(
                                "cache",
                                "an engine cache in the tensor-graph path",
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }

    /// Attention weights of every layer and head for `ids` (GPT-2 models only).
    pub fn attention(&self, ids: &[u32]) -> Result<AttentionMaps> {
        match self {
            Backend::Engine { engine, .. } => engine.attention_maps(ids),
            Backend::Interleaved(_) => Err(Error::invalid(
                "model",
                "attention maps are available for GPT-2 models only",
            )),
        }
    }
}

/// Logits after the last of `ids`, continuing `cache`, through the tensor graph.
fn last_logits(model: &dyn CausalLm, ids: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu)?.unsqueeze(0)?;
    let h = model.hidden(&x, Some(cache), &mut Mode::Eval)?;
    let last = h.narrow(1, h.dim(1)? - 1, 1)?;
    let logits = model.logits(&last)?.flatten_all()?;
    Ok(logits.to_dtype(DType::F32)?.to_vec1()?)
}
