//! Every training hyperparameter in one struct, and the named presets.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The decoder family trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Learned positions, LayerNorm, a 4×-wide GELU MLP with biases, tied head.
    #[default]
    Gpt2,
    /// Rotary positions, RMSNorm, a SwiGLU MLP, grouped key/value heads, no biases,
    /// untied head (`LlamaForCausalLM`).
    Llama,
    /// Llama's stack with biases on the query, key and value projections
    /// (`Qwen2ForCausalLM`).
    Qwen2,
    /// Llama's stack without biases, with an optional sliding attention window in
    /// every layer (`MistralForCausalLM`).
    Mistral,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "gpt2" => Ok(Arch::Gpt2),
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            "mistral" => Ok(Arch::Mistral),
            other => Err(Error::invalid(
                "arch",
                format!("{other:?} is not gpt2, llama, qwen2 or mistral"),
            )),
        }
    }

    /// The Hugging Face `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Mistral => "mistral",
        }
    }

    /// Rotary positions, RMSNorm and SwiGLU: every family but GPT-2.
    pub fn is_llama_like(self) -> bool {
        self != Arch::Gpt2
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    // Model shape.
    /// The family (checkpoints of older runs, without the field, are GPT-2).
    #[serde(default)]
    pub arch: Arch,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Key/value heads (Llama; they must divide `n_head`); default `n_head`.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// A sliding attention window in every layer (Qwen2 and Mistral).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Width of the MLP's hidden layer; default 4·n_embd (GPT-2), or for Llama
    /// 8/3·n_embd rounded up to a multiple of 32 (the SwiGLU width with about the
    /// parameters of a 4× GELU MLP).
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    /// Context length: the model's n_positions and the training window.
    pub block_size: usize,
    pub dropout: f32,
    /// `char`, `bpe:N` (byte-level BPE with N tokens) or a path to a tokenizer.json.
    pub tokenizer: String,
    // Optimisation.
    pub batch_size: usize,
    pub grad_accum: usize,
    pub max_iters: usize,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_iters: usize,
    pub lr_decay_iters: usize,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub grad_clip: f64,
    // Evaluation and bookkeeping.
    pub eval_interval: usize,
    pub eval_iters: usize,
    pub log_interval: usize,
    pub val_fraction: f64,
    pub seed: u64,
}

/// Names accepted by [`TrainConfig::preset`].
pub const PRESETS: &[&str] = &["shakespeare-char-cpu", "shakespeare-char", "gpt2-small"];

impl Default for TrainConfig {
    fn default() -> Self {
        Self::preset("shakespeare-char-cpu").unwrap()
    }
}

impl TrainConfig {
    /// A named recipe.
    /// * `shakespeare-char-cpu`: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide,
    ///   context 64, batch 12, 2000 iterations, lr 1e-3 → 1e-4, dropout 0, β2 0.99).
    /// * `shakespeare-char`: nanoGPT's GPU recipe (6 × 6 × 384, context 256, batch 64,
    ///   dropout 0.2, 5000 iterations).
    /// * `gpt2-small`: GPT-2's 124M shape (12 × 12 × 768, context 1024, BPE 50257).
    pub fn preset(name: &str) -> Result<Self> {
        let base = TrainConfig {
            arch: Arch::Gpt2,
            n_kv_head: None,
            sliding_window: None,
            intermediate_size: None,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            block_size: 64,
            dropout: 0.0,
            tokenizer: "char".into(),
            batch_size: 12,
            grad_accum: 1,
            max_iters: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_iters: 100,
            lr_decay_iters: 2000,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            grad_clip: 1.0,
            eval_interval: 250,
            eval_iters: 20,
            log_interval: 10,
            val_fraction: 0.1,
            seed: 1337,
        };
        match name {
            "shakespeare-char-cpu" => Ok(base),
            "shakespeare-char" => Ok(TrainConfig {
                n_layer: 6,
                n_head: 6,
                n_embd: 384,
                block_size: 256,
                dropout: 0.2,
                batch_size: 64,
                max_iters: 5000,
                lr_decay_iters: 5000,
                eval_iters: 200,
                ..base
            }),
            "gpt2-small" => Ok(TrainConfig {
                n_layer: 12,
                n_head: 12,
                n_embd: 768,
                block_size: 1024,
                dropout: 0.0,
                tokenizer: "bpe:50257".into(),
                batch_size: 8,
                lr: 6e-4,
                min_lr: 6e-5,
                beta2: 0.95,
                warmup_iters: 2000,
                max_iters: 600_000,
                lr_decay_iters: 600_000,
                eval_interval: 1000,
                eval_iters: 50,
                ..base
            }),
            _ => Err(Error::invalid(
                "preset",
                format!("unknown preset {name:?} (known: {})", PRESETS.join(", ")),
            )),
        }
    }

    /// Reject values that make no sense, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("n-layer", self.n_layer),
            ("n-head", self.n_head),
            ("n-embd", self.n_embd),
            ("block-size", self.block_size),
            ("batch-size", self.batch_size),
            ("grad-accum", self.grad_accum),
            ("eval-iters", self.eval_iters),
            ("eval-interval", self.eval_interval),
            ("log-interval", self.log_interval),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::invalid(
                "n-head",
                format!(
                    "n-embd {} is not divisible by n-head {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        if let Some(kv) = self.n_kv_head {
            if kv == 0 || !self.n_head.is_multiple_of(kv) {
                return Err(Error::invalid(
                    "n-kv-head",
                    format!("{kv} does not divide n-head {}", self.n_head),
                ));
            }
            if !self.arch.is_llama_like() && kv != self.n_head {
                return Err(Error::invalid(
                    "n-kv-head",
                    "grouped key/value heads need --arch llama, qwen2 or mistral",
                ));
            }
        }
        match self.sliding_window {
            Some(0) => return Err(Error::invalid("sliding-window", "must be at least 1")),
            Some(_) if !matches!(self.arch, Arch::Qwen2 | Arch::Mistral) => {
                return Err(Error::invalid(
                    "sliding-window",
                    "a sliding window needs --arch qwen2 or mistral",
                ))
            }
            _ => {}
        }
        if self.arch.is_llama_like() && !(self.n_embd / self.n_head).is_multiple_of(2) {
            return Err(Error::invalid(
                "n-head",
                format!(
                    "the head width n-embd / n-head = {} must be even for rotary positions",
                    self.n_embd / self.n_head
                ),
            ));
        }
        if self.intermediate_size == Some(0) {
            return Err(Error::invalid("intermediate-size", "must be at least 1"));
        }
        let finite_pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    name,
                    format!("{v} must be a positive number"),
                ))
            }
        };
        finite_pos("lr", self.lr)?;
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return Err(Error::invalid(
                "min-lr",
                format!("{} must be in [0, lr]", self.min_lr),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "weight-decay",
                format!("{} must be ≥ 0", self.weight_decay),
            ));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::invalid(name, format!("{b} is not in [0, 1)")));
            }
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return Err(Error::invalid(
                "grad-clip",
                format!("{} must be ≥ 0 (0 disables)", self.grad_clip),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::invalid(
                "dropout",
                format!("{} is not in [0, 1)", self.dropout),
            ));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::invalid(
                "val-fraction",
                format!("{} is not in [0, 1)", self.val_fraction),
            ));
        }
        if let Some(n) = self.tokenizer.strip_prefix("bpe:") {
            crate::train::check_bpe_size("--tokenizer", n)?;
        }
        // The vocabulary is known once the tokenizer exists; until then, bpe:N's N or
        // a char vocabulary's usual size.
        let vocab = self
            .tokenizer
            .strip_prefix("bpe:")
            .and_then(|n| n.parse().ok())
            .unwrap_or(256);
        self.check_memory(vocab)
    }

    /// Refuse a run whose model, optimiser state and activations need more memory than
    /// there is, naming the flags behind the largest part (checked before anything is
    /// allocated; again with the real vocabulary once the tokenizer is built).
    pub fn check_memory(&self, vocab_size: usize) -> Result<()> {
        let (v, t, c, l) = (
            vocab_size as f64,
            self.block_size as f64,
            self.n_embd as f64,
            self.n_layer as f64,
        );
        let (b, h) = (self.batch_size as f64, self.n_head as f64);
        // Weights, gradients, two AdamW moments, and the copies the trainer keeps for
        // evaluation and saving: about 8 floats per parameter. Activations: a lower
        // bound of what the backward pass keeps (15 values per position, layer and
        // unit, the attention probabilities, the logits and their gradient), so that
        // a run that fits is never refused; the point is to stop absurd ones.
        let per_param = 8.0 * 4.0;
        let parts = [
            (
                "--n-embd × the vocabulary size (the token embeddings)",
                per_param * v * c,
            ),
            (
                "--block-size × --n-embd (the position embeddings)",
                per_param * t * c,
            ),
            (
                "--n-layer × --n-embd² (the transformer blocks)",
                per_param * l * (4.0 * c * c + 3.0 * c * self.inner() as f64 + 13.0 * c),
            ),
            (
                "--batch-size × --block-size × --n-layer (one batch's activations)",
                4.0 * b * t * (l * (15.0 * c + h * t) + 2.0 * v),
            ),
        ];
        let total: f64 = parts.iter().map(|p| p.1).sum();
        let (what, _) = parts
            .iter()
            .copied()
            .fold(("", f64::MIN), |a, p| if p.1 > a.1 { p } else { a });
        crate::guard::check_memory(what, total)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// Width of the MLP's hidden layer.
    pub fn inner(&self) -> usize {
        self.intermediate_size.unwrap_or(match self.arch {
            Arch::Gpt2 => 4 * self.n_embd,
            Arch::Llama | Arch::Qwen2 | Arch::Mistral => {
                (8 * self.n_embd).div_ceil(3).next_multiple_of(32)
            }
        })
    }

    /// Tokens processed by one optimiser step.
    pub fn tokens_per_step(&self) -> usize {
        self.batch_size * self.block_size * self.grad_accum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_are_valid_and_nonsense_is_named() {
        for p in PRESETS {
            TrainConfig::preset(p).unwrap().validate().unwrap();
        }
        assert!(TrainConfig::preset("nope")
            .unwrap_err()
            .to_string()
            .contains("shakespeare-char-cpu"));
        let bad = TrainConfig {
            lr: -1.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("lr"));
        let bad = TrainConfig {
            n_layer: 0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("n-layer"));
    }
}
