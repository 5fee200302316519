//! Target `model_folder`: a model folder's `config.json` and `model.safetensors`.
//!
//! An input is `CONFIG 0xFF WEIGHTS`: the bytes before the first 0xFF byte are written
//! as `config.json` (a byte that never occurs in UTF-8 text, so a real config never
//! holds it), the rest as `model.safetensors`; an input without 0xFF is a config with an
//! empty weights file. The folder also holds a fixed 4-token character tokenizer.
//!
//! The folder goes through every loader the CLI and the server use for its model type
//! (`export`, `load_causal_lm` — the inference engine —, `load_bert`
//! and the BERT training step, the Marian engine and training step), and a model that
//! loads runs one short forward pass: a config that loads must describe a model that
//! can run.

use std::path::Path;

use attn::checkpoint;
use attn::train::encdec::PairTrainer;

use crate::scratch::Scratch;

/// The byte between the config and the weights.
pub const SPLIT: u8 = 0xFF;

/// The tokenizer of every fuzzed folder: characters `a`..`d`, ids 0..4.
pub const TOKENIZER_TEXT: &str = "abcd";

pub struct Target {
    scratch: Scratch,
}

/// `(config, weights)` of an input.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == SPLIT) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// The input for a config and a weights file (the inverse of [`split`]).
pub fn join(config: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut v = config.to_vec();
    v.push(SPLIT);
    v.extend_from_slice(weights);
    v
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}

impl Target {
    pub fn new() -> Target {
        let scratch = Scratch::new("model");
        attn::tokenizer::Tokenizer::train_char(TOKENIZER_TEXT)
            .and_then(|t| t.save(&scratch.path().join(checkpoint::TOKENIZER)))
            .expect("write the fixed tokenizer");
        Target { scratch }
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// Feed one input; returns how many loaders accepted the folder (for the smoke
    /// test's tally and the seeds' check).
    pub fn run(&self, data: &[u8]) -> usize {
        let (config, weights) = split(data);
        self.scratch.write(checkpoint::CONFIG, config);
        self.scratch.write(checkpoint::WEIGHTS, weights);
        let dir = self.scratch.path();
        let model_type = serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v.get("model_type")?.as_str().map(str::to_string));
        let mut ok = 0;
        let mut count = |loaded: bool| ok += usize::from(loaded);
        // Each loader once for its own model type (they read every file again, and the
        // fuzzer's speed counts); an unknown type goes through all of them.
        let any = !matches!(
            model_type.as_deref(),
            Some("gpt2" | "llama" | "mistral" | "bert" | "marian" | "t5")
        );
        let is = |names: &[&str]| any || names.contains(&model_type.as_deref().unwrap_or(""));
        // Export writes beside the input (a folder the next input's export replaces).
        if checkpoint::export(dir, &dir.join("exported"), checkpoint::FloatType::F16).is_ok() {
            count(true);
        }
        if is(&["gpt2", "llama", "mistral"]) {
            if let Ok(lm) = checkpoint::load_causal_lm(dir) {
                run_lm(lm.model.as_ref());
                count(true);
            }
        }
        if is(&["bert"]) {
            if let Ok(b) = checkpoint::load_bert(dir) {
                run_bert(&b);
                count(true);
            }
            if let Ok(mut m) = attn::train::encoder::NativeEncoder::load(dir) {
                let ids = two_ids(m.config.vocab_size);
                let _ = m.forward_backward(&[&ids[..]], None, &[0], Some(1));
                count(true);
            }
        }
        if is(&["marian"]) {
            if let Ok(m) = attn::engine::Seq2Seq::load(dir) {
                run_marian(&m);
                count(true);
            }
            if let Ok(mut m) = attn::train::seq2seq::NativeSeq2Seq::load(dir) {
                let src = [0, m.config.eos_token_id];
                let _ = m.forward_backward(&[(&src[..], &src[..])], 0.1, Some(1));
                count(true);
            }
        }
        if is(&["t5"]) {
            if let Ok(m) = attn::engine::Seq2Seq::load(dir) {
                run_marian(&m);
                count(true);
            }
            if let Ok(mut m) = attn::train::t5::NativeT5::load(dir) {
                let src = [0, m.config.eos_token_id];
                let _ = m.forward_backward(&[(&src[..], &src[..])], 0.1, Some(1));
                count(true);
            }
        }
        ok
    }
}

/// Ids `0, 1` clipped to a vocabulary of `n`.
fn two_ids(n: usize) -> [u32; 2] {
    let last = n.saturating_sub(1).min(u32::MAX as usize) as u32;
    [0, 1.min(last)]
}

fn run_lm(m: &dyn attn::models::CausalLm) {
    let ids = two_ids(m.vocab_size());
    let _ = m.logits_all(&[&ids[..]]);
    let mut s = m.session();
    let _ = s.feed(&ids[..1]);
    let _ = s.feed(&ids[1..]);
}

fn run_bert(b: &checkpoint::LoadedBert) {
    let ids = two_ids(b.encoder.config.vocab_size);
    let _ = b
        .encoder
        .embed(&[&ids[..], &ids[..1]], attn::engine::Pooling::Mean, true);
    if b.encoder.has_classifier() {
        let _ = b.encoder.classify(&[&ids[..]], None);
    }
    if let Ok(ids) = b.tokenizer.encode_for_model("abcd", b.max_len) {
        let _ = ids.len();
    }
}

/// Marian and T5.
fn run_marian(m: &attn::engine::Seq2Seq) {
    let c = &m.spec;
    let src = [0, c.eos];
    if let Ok(mems) = m.memories(&[&src[..]]) {
        let mut st = m.new_state();
        let start = [c.decoder_start];
        let _ = m.decode(
            &[&mems[0]],
            &mut [&mut st],
            &[&start[..]],
            attn::engine::Want::Last,
        );
    }
    let beam = attn::generate::beam::BeamConfig {
        num_beams: 2,
        max_new_tokens: 3,
        ..Default::default()
    };
    let _ = attn::generate::beam::translate_batch(m, &[&src[..]], &beam);
}
