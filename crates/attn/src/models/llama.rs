//! Llama-style decoders, as in Hugging Face's `LlamaForCausalLM`: token embedding,
//! pre-RMSNorm blocks of rotary-position attention with grouped key/value heads and a
//! SwiGLU MLP, a final RMSNorm and an output head (tied to the embedding or not). Linear
//! weights are `[out, in]` (PyTorch `nn.Linear`).
//!
//! Three `model_type`s share these tensor names and this arithmetic, and differ only in
//! configuration, read here:
//! - `llama`: optional biases (`attention_bias` on the four attention projections,
//!   `mlp_bias` on the MLP's), `head_dim` of its own, and rotary scaling (`rope_scaling`,
//!   or transformers 5's `rope_parameters`) of type `linear`, `dynamic` or `llama3`;
//! - `mistral`: no biases, and a sliding attention window (`sliding_window`) in every
//!   layer;
//! - `qwen2`: biases on the query, key and value projections only, and a sliding window
//!   (when `use_sliding_window`) in the layers from `max_window_layers` on, or as
//!   `layer_types` lists them.
//!
//! This file holds the configuration; the model runs on the engine, as GPT-2 does.

use serde::Deserialize;

use crate::kernels::cpu::{Rope, RopeScaling};
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
/// `sliding_window` absent from a config: transformers' default for Mistral and Qwen2.
fn absent_window() -> Option<usize> {
    Some(4096)
}
fn default_type() -> String {
    "llama".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    #[serde(default = "default_type")]
    pub model_type: String,
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
    /// Mistral and Qwen2: the attention window. Absent, it is transformers' default
    /// of 4096; `null` means none.
    #[serde(default = "absent_window")]
    pub sliding_window: Option<usize>,
    /// Qwen2: whether the window is used at all (transformers' default: no).
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Qwen2: layers below this one attend to every earlier position.
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Qwen2 (transformers 5): `full_attention` or `sliding_attention` per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
}

/// The rotary scaling types the engine computes.
const ROPE_TYPES: &str = "default, linear, dynamic, llama3";

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
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(Error::invalid(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    self.kv_heads(),
                    self.num_attention_heads
                ),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(Error::invalid(
                "head_dim",
                format!("{} must be even for rotary positions", self.head_dim()),
            ));
        }
        self.rope()?;
        self.windows()?;
        if !matches!(self.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(Error::invalid(
                "model_type",
                format!("{:?} is not llama, mistral or qwen2", self.model_type),
            ));
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

    /// The rotary parameters as written: transformers 5's `rope_parameters`, else the
    /// older `rope_scaling` (with `rope_theta` beside it), else none.
    fn rope_params(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        [&self.rope_parameters, &self.rope_scaling]
            .into_iter()
            .find_map(|p| p.as_ref().and_then(|v| v.as_object()))
    }

    /// The rotary base and scaling; an error names a type the engine does not compute
    /// or a missing or unusable parameter.
    pub fn rope(&self) -> Result<Rope> {
        let p = self.rope_params();
        let get = |k: &str| p.and_then(|p| p.get(k)).filter(|v| !v.is_null());
        let theta = get("rope_theta")
            .and_then(|v| v.as_f64())
            .or(self.rope_theta)
            .unwrap_or_else(default_theta);
        crate::guard::positive_finite("rope_theta", theta)?;
        let kind = get("rope_type")
            .or_else(|| get("type"))
            .map(|v| v.as_str().unwrap_or("?"))
            .unwrap_or("default");
        let num = |k: &str| -> Result<f64> {
            let what = format!("rope_parameters.{k}");
            let v = get(k).and_then(|v| v.as_f64()).ok_or_else(|| {
                Error::invalid(&what, format!("a number is needed for rope type {kind:?}"))
            })?;
            crate::guard::positive_finite(&what, v)?;
            Ok(v)
        };
        let original = |k: &str| -> Result<usize> {
            match get(k) {
                None => Ok(self.max_position_embeddings),
                Some(v) => v
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        Error::invalid(
                            format!("rope_parameters.{k}"),
                            format!("{v} is not a positive integer"),
                        )
                    }),
            }
        };
        let scaling = match kind {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: num("factor")?,
            },
            "dynamic" => RopeScaling::Dynamic {
                factor: num("factor")?,
                original: self.max_position_embeddings,
            },
            "llama3" => {
                let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                if high <= low {
                    return Err(Error::invalid(
                        "rope_parameters.high_freq_factor",
                        format!("{high} must exceed low_freq_factor {low}"),
                    ));
                }
                RopeScaling::Llama3 {
                    factor: num("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original: original("original_max_position_embeddings")?,
                }
            }
            other => {
                return Err(Error::invalid(
                    "rope_parameters.rope_type",
                    format!("{other:?} is not supported (supported: {ROPE_TYPES})"),
                ))
            }
        };
        Ok(Rope { theta, scaling })
    }

    /// The longest sequence: `max_position_embeddings`, stretched by the factor of
    /// dynamic NTK scaling (which exists to run past it).
    pub fn context(&self) -> usize {
        match self.rope().map(|r| r.scaling) {
            Ok(RopeScaling::Dynamic { factor, .. }) if factor > 1.0 => {
                (self.max_position_embeddings as f64 * factor).floor() as usize
            }
            _ => self.max_position_embeddings,
        }
    }

    /// Biases on the query, key and value projections.
    pub fn qkv_bias(&self) -> bool {
        match self.model_type.as_str() {
            "qwen2" => true,
            "mistral" => false,
            _ => self.attention_bias,
        }
    }

    /// A bias on the attention's output projection.
    pub fn proj_bias(&self) -> bool {
        self.model_type == "llama" && self.attention_bias
    }

    /// Biases on the MLP's matrices.
    pub fn mlp_bias(&self) -> bool {
        self.model_type == "llama" && self.mlp_bias
    }

    /// Each layer's attention window, as transformers reads the config.
    pub fn windows(&self) -> Result<Vec<Option<usize>>> {
        let n = self.num_hidden_layers;
        let window = match self.sliding_window {
            Some(0) => return Err(Error::invalid("sliding_window", "must be at least 1")),
            w => w,
        };
        Ok(match self.model_type.as_str() {
            "mistral" => vec![window; n],
            "qwen2" => {
                let window = window.filter(|_| self.use_sliding_window);
                match &self.layer_types {
                    Some(types) => {
                        if types.len() != n {
                            return Err(Error::invalid(
                                "layer_types",
                                format!("{} entries for {n} layers", types.len()),
                            ));
                        }
                        types
                            .iter()
                            .map(|t| match t.as_str() {
                                "full_attention" => Ok(None),
                                "sliding_attention" => Ok(window),
                                other => Err(Error::invalid(
                                    "layer_types",
                                    format!("{other:?} is not full_attention or sliding_attention"),
                                )),
                            })
                            .collect::<Result<_>>()?
                    }
                    None => {
                        let from = self.max_window_layers.unwrap_or(28);
                        (0..n).map(|l| window.filter(|_| l >= from)).collect()
                    }
                }
            }
            _ => vec![None; n],
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: serde_json::Value) -> LlamaConfig {
        let mut v = serde_json::json!({
            "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 3, "num_attention_heads": 2, "max_position_embeddings": 32,
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    /// The windows transformers reads from each kind of config: Mistral's absent
    /// `sliding_window` is its default 4096 and `null` none; Qwen2's window needs
    /// `use_sliding_window` and starts at `max_window_layers`, or follows `layer_types`;
    /// Llama has none.
    #[test]
    fn windows_follow_transformers_defaults() {
        let w = |extra| config(extra).windows().unwrap();
        use serde_json::json;
        assert_eq!(w(json!({"model_type": "mistral"})), vec![Some(4096); 3]);
        assert_eq!(
            w(json!({"model_type": "mistral", "sliding_window": null})),
            vec![None; 3]
        );
        assert_eq!(
            w(json!({"model_type": "mistral", "sliding_window": 5})),
            vec![Some(5); 3]
        );
        assert_eq!(
            w(json!({"model_type": "qwen2", "sliding_window": 5})),
            vec![None; 3]
        );
        assert_eq!(
            w(json!({"model_type": "qwen2", "use_sliding_window": true, "max_window_layers": 1})),
            vec![None, Some(4096), Some(4096)]
        );
        assert_eq!(
            w(
                json!({"model_type": "qwen2", "use_sliding_window": true, "sliding_window": 7,
                      "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]})
            ),
            vec![Some(7), None, Some(7)]
        );
        assert_eq!(
            w(json!({"model_type": "llama", "sliding_window": 5})),
            vec![None; 3]
        );
        assert!(
            config(json!({"model_type": "mistral", "sliding_window": 0}))
                .windows()
                .is_err()
        );
    }
}
