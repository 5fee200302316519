//! Llama-style decoders (Llama 2/3, Mistral-like shapes), as in Hugging Face's
//! `LlamaForCausalLM`: token embedding, pre-RMSNorm blocks of rotary-position attention
//! with grouped key/value heads and a SwiGLU MLP, a final RMSNorm and an output head
//! (tied to the embedding or not). Linear weights are `[out, in]` (PyTorch `nn.Linear`).
//! This file holds the configuration; the model runs on the engine, as GPT-2 does.

use serde::Deserialize;

use crate::{Error, Result};

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_act() -> String {
    "silu".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Older configs: `rope_theta` and `rope_scaling` at the top level.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers ≥ 5: `{"rope_theta": …, "rope_type": "default", …}`.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if self.kv_heads() == 0 || self.num_attention_heads % self.kv_heads() != 0 {
            return Err(Error::invalid(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(Error::invalid(
                "head_dim",
                format!("{} must be even for rotary positions", self.head_dim()),
            ));
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                return Err(Error::invalid(
                    "rope_scaling",
                    format!("{s} is not supported yet"),
                ));
            }
        }
        if let Some(kind) = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_type"))
            .and_then(|v| v.as_str())
        {
            if kind != "default" {
                return Err(Error::invalid(
                    "rope_parameters.rope_type",
                    format!("{kind:?} is not supported yet (default)"),
                ));
            }
        }
        if self.hidden_act != "silu" {
            return Err(Error::invalid(
                "hidden_act",
                format!("{:?} is not supported (silu)", self.hidden_act),
            ));
        }
        crate::guard::positive_finite("rms_norm_eps", self.rms_norm_eps)?;
        if let Some(t) = self.rope_theta {
            crate::guard::positive_finite("rope_theta", t)?;
        }
        Ok(())
    }

    /// The rotary base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or_else(default_theta)
    }

    /// The first end-of-sequence id (`eos_token_id` may be a number or a list).
    pub fn eos(&self) -> Option<u32> {
        first_id(&self.eos_token_id)
    }

    pub fn bos(&self) -> Option<u32> {
        first_id(&self.bos_token_id)
    }
}

pub(crate) fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}
