//! Text generation: sampling (temperature, top-k, top-p, repetition penalty) and the
//! decoding loop over a causal model with a key/value cache.

pub mod beam;
mod sampler;

pub use sampler::{Sampler, SamplingConfig};

use crate::models::CausalLm;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Error, Result};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Length,
    Stop,
    EndOfText,
}

#[derive(Debug, Clone)]
pub struct Generation {
    pub ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    /// How many prompt tokens were dropped from the left to fit the context window.
    pub prompt_truncated: usize,
    pub prompt_tokens: usize,
}

/// One sequence being decoded: tokens go in, the next token's logits come out.
pub trait Session {
    /// Positions held.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forget every position.
    fn clear(&mut self);
    /// Append `ids` (at least one) and return the logits after the last of them.
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>>;
}

/// A decoding session for `model`.
pub fn session(model: &dyn CausalLm) -> Box<dyn Session + '_> {
    model.session()
}

/// Generate up to `max_new_tokens` ids after the prompt `ids` (which must fit the
/// context), calling `on_token` with each; it returns false to stop. Stops early at the
/// model's end-of-text id. When the context window fills up, the most recent half of the
/// sequence is kept and its cache recomputed.
pub fn generate_ids(
    model: &dyn CausalLm,
    prompt: &[u32],
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, FinishReason)> {
    sampling.validate()?;
    let ctx = model.context();
    if prompt.is_empty() || prompt.len() > ctx {
        return Err(Error::invalid(
            "prompt",
            format!(
                "has {} tokens; it needs between 1 and the context of {ctx}",
                prompt.len()
            ),
        ));
    }
    let mut sampler = Sampler::new(sampling.clone(), model.vocab_size());
    let mut cache = session(model);
    let mut logits = cache.feed(prompt)?;
    let mut history: Vec<u32> = prompt.to_vec();
    // Grown as tokens arrive: max_new_tokens is a user's bound, not a size to reserve.
    let mut generated = Vec::with_capacity(max_new_tokens.min(4096));
    let eos = if sampling.ignore_eos {
        None
    } else {
        model.eos()
    };
    while generated.len() < max_new_tokens {
        let next = sampler.sample(&mut logits, &history);
        if Some(next) == eos {
            return Ok((generated, FinishReason::EndOfText));
        }
        generated.push(next);
        history.push(next);
        if !on_token(next) {
            return Ok((generated, FinishReason::Stop));
        }
        if generated.len() == max_new_tokens {
            break;
        }
        logits = if cache.len() >= ctx {
            cache.clear();
            cache.feed(&history[history.len() - ctx / 2..])?
        } else {
            cache.feed(&[next])?
        };
    }
    Ok((generated, FinishReason::Length))
}

/// Generate up to `max_new_tokens` tokens after the text `prompt`. A prompt longer than
/// the context keeps its last `n_positions - 1` tokens (reported in
/// [`Generation::prompt_truncated`]). `on_text` receives each piece of new text as soon
/// as it is complete (held back only while it could be the start of a stop string); it
/// returns false to stop early.
pub fn generate(
    model: &dyn CausalLm,
    tokenizer: &Tokenizer,
    prompt: &str,
    max_new_tokens: usize,
    sampling: &SamplingConfig,
    stop: &[String],
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<Generation> {
    let ctx = model.context();
    let mut ids = tokenizer.encode(prompt)?;
    if ids.is_empty() {
        let start = model
            .bos()
            .or_else(|| tokenizer.encode("\n").ok().and_then(|v| v.first().copied()));
        match start {
            Some(id) => ids.push(id),
            None => {
                return Err(Error::invalid(
                    "prompt",
                    "is empty and the model has no start token",
                ))
            }
        }
    }
    let prompt_truncated = ids.len().saturating_sub(ctx.saturating_sub(1).max(1));
    ids.drain(..prompt_truncated);
    let sampling = &SamplingConfig {
        vocab_limit: Some(tokenizer.vocab_size()),
        ..sampling.clone()
    };
    let mut decoder = StreamDecoder::new(tokenizer);
    let mut text = String::new();
    let mut emitted = 0usize;
    let mut stopped = false;
    let mut error = None;
    let (generated, mut finish) = generate_ids(model, &ids, max_new_tokens, sampling, &mut |id| {
        match decoder.push(id) {
            Ok(piece) => text.push_str(&piece),
            Err(e) => {
                error = Some(e);
                return false;
            }
        }
        if let Some(pos) = stop
            .iter()
            .filter_map(|s| text[emitted..].find(s.as_str()).map(|p| p + emitted))
            .min()
        {
            text.truncate(pos);
            stopped = true;
            return false;
        }
        let safe = safe_prefix_len(&text, emitted, stop);
        if safe > emitted {
            let go_on = on_text(&text[emitted..safe]);
            emitted = safe;
            return go_on;
        }
        true
    })?;
    if let Some(e) = error {
        return Err(e);
    }
    if stopped {
        finish = FinishReason::Stop;
    }
    if emitted < text.len() {
        on_text(&text[emitted..]);
    }
    Ok(Generation {
        ids: generated,
        text,
        finish,
        prompt_truncated,
        prompt_tokens: ids.len(),
    })
}

/// The end of the part of `text` that can be shown: everything except a suffix that is
/// the beginning of some stop string.
fn safe_prefix_len(text: &str, from: usize, stop: &[String]) -> usize {
    let mut safe = text.len();
    for s in stop {
        for (i, _) in text[from..].char_indices() {
            let start = from + i;
            let tail = &text[start..];
            if tail.len() < s.len() && s.starts_with(tail) {
                safe = safe.min(start);
                break;
            }
        }
    }
    safe
}

/// Logits `[T, vocab]` (row-major) of a whole sequence in one pass, without a cache
/// (for checks).
pub fn full_logits(model: &dyn CausalLm, ids: &[u32]) -> Result<Vec<f32>> {
    Ok(model.logits_all(&[ids])?.remove(0))
}

/// Index of the largest value (greedy choice; the first of equal ones).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_possible_stop_prefix() {
        let stop = vec!["END".to_string()];
        assert_eq!(safe_prefix_len("abcEN", 0, &stop), 3);
        assert_eq!(safe_prefix_len("abcE", 0, &stop), 3);
        assert_eq!(safe_prefix_len("abcx", 0, &stop), 4);
        assert_eq!(safe_prefix_len("abc", 0, &[]), 3);
    }
}
