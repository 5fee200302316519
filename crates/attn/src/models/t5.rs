//! T5 (Raffel et al. 2020) as Hugging Face's `T5ForConditionalGeneration`: its
//! configuration and its relative-position buckets. The model runs on the engine's
//! encoder-decoder stack (`engine::seq2seq` for decoding, `train::t5` for training):
//! pre-norm blocks with a scale-only RMS norm, no biases, attention scores left
//! unscaled, and a learned bias per head and relative-position bucket added to the
//! scores (held by the first layer of each stack, read by all of them); a ReLU MLP
//! (v1.0) or a gated GELU one (v1.1, Flan-T5); the embedding shared by both stacks and,
//! when tied, by the head, whose input is then scaled by d_model^-0.5.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_drop() -> f32 {
    0.1
}
fn default_ffn() -> String {
    "relu".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of one head.
    pub d_kv: usize,
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Decoder layers (`num_layers` when absent).
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_drop")]
    #[serde(serialize_with = "super::short_f32")]
    pub dropout_rate: f32,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu`, `gelu`, `gated-gelu`, `gated-silu`, ...
    #[serde(default = "default_ffn")]
    pub feed_forward_proj: String,
    /// Absent means tied (T5 v1.0); v1.1 and Flan-T5 say `false` and have `lm_head.weight`.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// transformers 5 writes this beside `tie_word_embeddings` (which it then always sets
    /// true): whether the head's input is scaled by d_model^-0.5.
    #[serde(default)]
    pub scale_decoder_outputs: Option<bool>,
    #[serde(default)]
    pub pad_token_id: u32,
    #[serde(default = "one")]
    pub eos_token_id: u32,
    #[serde(default)]
    pub decoder_start_token_id: u32,
    /// The longest input the published models were trained on (T5: 512); relative
    /// positions accept any length.
    #[serde(default)]
    pub n_positions: Option<usize>,
    /// Keys attn does not read, kept and written back.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// The MLP of a T5 block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Ffn {
    /// `wo(act(wi(x)))`.
    Plain(T5Act),
    /// `wo(act(wi_0(x)) · wi_1(x))`.
    Gated(T5Act),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T5Act {
    Relu,
    /// `gelu_new`, the tanh approximation (what "gated-gelu" means in transformers).
    GeluTanh,
    GeluErf,
    Silu,
}

impl T5Config {
    /// A T5 v1.1-style model (gated GELU, untied head) for training from scratch.
    pub fn v1_1(
        vocab_size: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        d_ff: usize,
    ) -> Self {
        T5Config {
            vocab_size,
            d_model,
            d_kv: d_model / heads.max(1),
            d_ff,
            num_layers: layers,
            num_decoder_layers: Some(layers),
            num_heads: heads,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            tie_word_embeddings: Some(false),
            scale_decoder_outputs: None,
            pad_token_id: 0,
            eos_token_id: 1,
            decoder_start_token_id: 0,
            n_positions: None,
            extra: Default::default(),
        }
    }

    pub fn decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Query/key/value width: heads × d_kv (not always d_model).
    pub fn inner(&self) -> usize {
        self.num_heads * self.d_kv
    }

    /// The head is the shared embedding.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
    }

    /// The head's input is scaled by d_model^-0.5 (as transformers decides it: the
    /// explicit field, else a tied head).
    pub fn scales_output(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tied())
    }

    pub fn ffn(&self) -> Result<T5Ffn> {
        let (gated, act) = match self.feed_forward_proj.split_once('-') {
            Some(("gated", act)) => (true, act),
            // "fancy-relu": only "gated-" may prefix an activation.
            Some(_) => (false, ""),
            None => (false, self.feed_forward_proj.as_str()),
        };
        let act = match (gated, act) {
            (_, "relu") => T5Act::Relu,
            // transformers reads "gated-gelu" as the tanh GELU (gelu_new), plain "gelu"
            // as the exact one.
            (true, "gelu") | (_, "gelu_new") | (_, "gelu_pytorch_tanh") => T5Act::GeluTanh,
            (false, "gelu") => T5Act::GeluErf,
            (_, "silu") | (_, "swish") => T5Act::Silu,
            _ => {
                return Err(Error::invalid(
                    "feed_forward_proj",
                    format!(
                    "{:?} is not supported (relu, gelu, gelu_new, silu, or gated-<one of them>)",
                    self.feed_forward_proj
                ),
                ))
            }
        };
        Ok(if gated {
            T5Ffn::Gated(act)
        } else {
            T5Ffn::Plain(act)
        })
    }

    /// The HF `config.json` content of a `T5ForConditionalGeneration`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.retain(|_, x| !x.is_null());
        o.insert("model_type".into(), "t5".into());
        o.insert(
            "architectures".into(),
            serde_json::json!(["T5ForConditionalGeneration"]),
        );
        o.insert("tie_word_embeddings".into(), self.tied().into());
        o.insert("scale_decoder_outputs".into(), self.scales_output().into());
        o.insert("num_decoder_layers".into(), self.decoder_layers().into());
        o.insert("is_encoder_decoder".into(), true.into());
        v
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_heads", self.num_heads),
            (
                "relative_attention_num_buckets",
                self.relative_attention_num_buckets,
            ),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        for (name, v) in [
            ("num_heads × d_kv", self.num_heads.checked_mul(self.d_kv)),
            (
                "d_model × vocab_size",
                self.d_model.checked_mul(self.vocab_size),
            ),
        ] {
            if v.is_none_or(|v| v > 1 << 40) {
                return Err(Error::invalid(name, "is too large"));
            }
        }
        if self.relative_attention_num_buckets < 4 {
            // Half the buckets per direction, half of those exact: fewer than 4 leaves
            // a direction without an exact bucket (transformers divides by zero).
            return Err(Error::invalid(
                "relative_attention_num_buckets",
                "must be at least 4",
            ));
        }
        if self.relative_attention_max_distance < self.relative_attention_num_buckets {
            return Err(Error::invalid(
                "relative_attention_max_distance",
                format!(
                    "{} is less than relative_attention_num_buckets {}",
                    self.relative_attention_max_distance, self.relative_attention_num_buckets
                ),
            ));
        }
        if !(self.layer_norm_epsilon.is_finite() && self.layer_norm_epsilon > 0.0) {
            return Err(Error::invalid(
                "layer_norm_epsilon",
                "must be a positive number",
            ));
        }
        self.ffn()?;
        super::marian::special_ids_in_vocabulary(
            self.vocab_size,
            [
                ("pad_token_id", self.pad_token_id),
                ("eos_token_id", self.eos_token_id),
                ("decoder_start_token_id", self.decoder_start_token_id),
            ],
        )?;
        crate::guard::probability("dropout_rate", self.dropout_rate as f64)?;
        Ok(())
    }
}

/// T5's bucket of a relative position `rel` = key position − query position: with
/// `bidirectional` (the encoder) half the buckets are for keys after the query; in each
/// direction the first half of the buckets are single distances and the rest grow
/// logarithmically up to `max_distance`, beyond which all distances share the last
/// bucket. Without `bidirectional` (the decoder) keys after the query fall in bucket 0.
/// Computed in f32 as transformers does, so the boundaries fall where they fall there.
pub fn relative_bucket(
    rel: i64,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
) -> usize {
    let mut nb = buckets as i64;
    let mut base = 0i64;
    let dist = if bidirectional {
        nb /= 2;
        if rel > 0 {
            base = nb;
        }
        rel.abs()
    } else {
        (-rel).max(0)
    };
    let exact = nb / 2;
    if dist < exact {
        return (base + dist) as usize;
    }
    let ratio = (dist as f32 / exact as f32).ln();
    let span = (max_distance as f64 / exact as f64).ln() as f32;
    let large = exact + ((ratio / span) * (nb - exact) as f32) as i64;
    (base + large.min(nb - 1)) as usize
}

/// The bucket of every (query, key) pair of `tq` queries at positions `q0..` against
/// `tk` keys at positions `0..tk`, row-major `[tq, tk]`.
pub fn bucket_grid(
    q0: usize,
    tq: usize,
    tk: usize,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
) -> Vec<u32> {
    let mut out = Vec::with_capacity(tq * tk);
    for i in 0..tq {
        for j in 0..tk {
            let rel = j as i64 - (q0 + i) as i64;
            out.push(relative_bucket(rel, bidirectional, buckets, max_distance) as u32);
        }
    }
    out
}

/// One head's relative-position bias `[tq, tk]` from a stack's `[buckets, heads]`
/// table and the pairs' buckets ([`bucket_grid`]).
pub fn head_bias(table: &[f32], grid: &[u32], heads: usize, h: usize) -> Vec<f32> {
    grid.iter()
        .map(|&b| table[b as usize * heads + h])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_exact_near_and_logarithmic_far() {
        // 32 buckets, bidirectional: 16 per direction, 8 exact.
        assert_eq!(relative_bucket(0, true, 32, 128), 0);
        assert_eq!(relative_bucket(-7, true, 32, 128), 7);
        assert_eq!(relative_bucket(7, true, 32, 128), 23);
        assert_eq!(relative_bucket(-1000, true, 32, 128), 15);
        assert_eq!(relative_bucket(1000, true, 32, 128), 31);
        // Causal: later keys all in bucket 0.
        assert_eq!(relative_bucket(5, false, 32, 128), 0);
        assert_eq!(relative_bucket(-5, false, 32, 128), 5);
        assert_eq!(relative_bucket(-1000, false, 32, 128), 31);
    }

    #[test]
    fn feed_forward_names() {
        let mut c = T5Config::v1_1(10, 8, 1, 2, 16);
        assert_eq!(c.ffn().unwrap(), T5Ffn::Gated(T5Act::GeluTanh));
        c.feed_forward_proj = "relu".into();
        assert_eq!(c.ffn().unwrap(), T5Ffn::Plain(T5Act::Relu));
        c.feed_forward_proj = "gated-tanh".into();
        assert!(c.validate().unwrap_err().to_string().contains("gated-tanh"));
        c.feed_forward_proj = "fancy-relu".into();
        assert!(c.ffn().is_err());
    }
}
