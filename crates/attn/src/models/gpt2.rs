//! GPT-2 (Radford et al. 2019), as in Hugging Face's `GPT2LMHeadModel`:
//! learned token and position embeddings, pre-LayerNorm blocks of causal multi-head
//! self-attention and a 4×-wide GELU MLP with residual connections, a final LayerNorm,
//! and an output head tied to the token embedding.
//!
//! Linear layers are stored as GPT-2's `Conv1D`, weight `[in, out]`. This file holds
//! the configuration; the model runs on the engine (`engine::Decoder` for inference,
//! `train::native` for training).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f32 {
    0.1
}
fn default_init_range() -> f64 {
    0.02
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}

/// The configuration, with HF GPT-2 `config.json` field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    #[serde(serialize_with = "super::short_f32")]
    pub resid_pdrop: f32,
    #[serde(default = "default_pdrop")]
    #[serde(serialize_with = "super::short_f32")]
    pub embd_pdrop: f32,
    #[serde(default = "default_pdrop")]
    #[serde(serialize_with = "super::short_f32")]
    pub attn_pdrop: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

impl Gpt2Config {
    /// A config with GPT-2's defaults for everything but the shape.
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Gpt2Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_act(),
            resid_pdrop: default_pdrop(),
            embd_pdrop: default_pdrop(),
            attn_pdrop: default_pdrop(),
            layer_norm_epsilon: default_eps(),
            initializer_range: default_init_range(),
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    pub fn set_dropout(&mut self, p: f32) {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
    }

    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// Reject shapes that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::invalid(
                "n_head",
                format!(
                    "n_embd {} is not divisible by n_head {}",
                    self.n_embd, self.n_head
                ),
            ));
        }
        for (name, p) in [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(Error::invalid(name, format!("{p} is not in [0, 1)")));
            }
        }
        if !matches!(
            self.activation_function.as_str(),
            "gelu_new" | "gelu" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(Error::invalid(
                "activation_function",
                format!(
                    "{:?} is not supported (gelu_new, gelu, gelu_pytorch_tanh, relu)",
                    self.activation_function
                ),
            ));
        }
        if !self.tie_word_embeddings {
            return Err(Error::invalid(
                "tie_word_embeddings",
                "untied GPT-2 heads are not supported",
            ));
        }
        crate::guard::positive_finite("layer_norm_epsilon", self.layer_norm_epsilon)?;
        Ok(())
    }

    /// The HF `config.json` content, with `model_type` and `architectures`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), "gpt2".into());
        o.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        o.insert("n_ctx".into(), self.n_positions.into());
        o.insert("scale_attn_weights".into(), true.into());
        o.insert("use_cache".into(), true.into());
        v
    }
}
