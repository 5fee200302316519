//! The model side of the server: one forward pass for new prompts (prefill) and one
//! decode step for many sequences at once, on the library's decoder engine
//! ([`attn::engine::Decoder`], any family it runs: GPT-2, Llama). Prompts arriving
//! together, and the running sequences' next tokens, each go through the model as one
//! ragged batch: every matrix is read once for all of them; only attention is per
//! sequence. The server holds no model code of its own.

use attn::engine::{Decoder, DecoderState, Want};
use attn::Result;

/// Per-sequence model state: its key/value cache.
pub type SeqCache = DecoderState;

/// Attention weights of one forward pass: per layer `[H, T, T]` (row = query position).
pub type AttentionMaps = attn::engine::decoder::AttentionMaps;

pub struct Backend {
    engine: Decoder,
    /// `false` (`--no-batch`) runs the sequences one at a time (for comparison).
    batched: bool,
}

impl Backend {
    pub fn new(engine: Decoder, batched: bool) -> Self {
        Backend { engine, batched }
    }

    pub fn is_batched(&self) -> bool {
        self.batched
    }

    pub fn context(&self) -> usize {
        self.engine.context()
    }

    pub fn vocab_size(&self) -> usize {
        self.engine.vocab_size()
    }

    pub fn eos(&self) -> Option<u32> {
        self.engine.spec.eos
    }

    pub fn bos(&self) -> Option<u32> {
        self.engine.spec.bos
    }

    /// Run a whole prompt; returns its cache and the logits of the last position.
    pub fn prefill(&self, ids: &[u32]) -> Result<(SeqCache, Vec<f32>)> {
        let mut st = self.engine.new_state();
        let logits = self
            .engine
            .forward(&mut [&mut st], &[ids], Want::Last)?
            .remove(0);
        Ok((st, logits))
    }

    /// Run several prompts (of any lengths): batched, one ragged forward pass; else one
    /// after another. Returns each prompt's cache and last-position logits.
    pub fn prefill_many(&self, prompts: &[&[u32]]) -> Result<Vec<(SeqCache, Vec<f32>)>> {
        if !self.batched || prompts.len() < 2 {
            return prompts.iter().map(|p| self.prefill(p)).collect();
        }
        let mut states: Vec<SeqCache> = prompts.iter().map(|_| self.engine.new_state()).collect();
        let mut refs: Vec<&mut SeqCache> = states.iter_mut().collect();
        let logits = self.engine.forward(&mut refs, prompts, Want::Last)?;
        Ok(states.into_iter().zip(logits).collect())
    }

    /// One new token for each sequence; returns each sequence's next logits.
    pub fn step(&self, rows: &mut [(&mut SeqCache, u32)]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<[u32; 1]> = rows.iter().map(|(_, id)| [*id]).collect();
        let toks: Vec<&[u32]> = ids.iter().map(|i| i.as_slice()).collect();
        let mut states: Vec<&mut SeqCache> = rows.iter_mut().map(|(c, _)| &mut **c).collect();
        if self.batched {
            return self.engine.forward(&mut states, &toks, Want::Last);
        }
        let mut out = Vec::with_capacity(toks.len());
        for (st, t) in states.iter_mut().zip(&toks) {
            out.push(
                self.engine
                    .forward(&mut [&mut **st], &[t], Want::Last)?
                    .remove(0),
            );
        }
        Ok(out)
    }

    /// Attention weights of every layer and head for `ids`.
    pub fn attention(&self, ids: &[u32]) -> Result<AttentionMaps> {
        self.engine.attention_maps(ids)
    }
}
