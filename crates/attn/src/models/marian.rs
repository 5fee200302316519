//! Marian / the original Transformer (Vaswani et al. 2017), as Hugging Face's
//! `MarianMTModel`: its configuration. The model runs on the engine
//! (`engine::seq2seq` for decoding, `train::seq2seq` for training): shared
//! source/target embeddings scaled by √d, sinusoidal positions, post-LayerNorm encoder
//! and decoder blocks (the decoder's with cross-attention), and an output head tied to
//! the embedding plus `final_logits_bias`.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "swish".into()
}
fn default_drop() -> f32 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarianConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "default_true")]
    pub share_encoder_decoder_embeddings: bool,
    #[serde(default)]
    pub normalize_before: bool,
    #[serde(default = "default_drop")]
    #[serde(serialize_with = "super::short_f32")]
    pub dropout: f32,
    #[serde(default)]
    #[serde(serialize_with = "super::short_f32")]
    pub attention_dropout: f32,
    #[serde(default)]
    #[serde(serialize_with = "super::short_f32")]
    pub activation_dropout: f32,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
}

impl MarianConfig {
    /// A Transformer ("Attention Is All You Need" layout, post-LN) with Marian's
    /// conventions: shared vocabulary, decoder starting from the pad token.
    #[allow(clippy::too_many_arguments)]
    pub fn transformer(
        vocab_size: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        ffn: usize,
        max_positions: usize,
        pad: u32,
        eos: u32,
    ) -> Self {
        MarianConfig {
            vocab_size,
            d_model,
            encoder_layers: layers,
            decoder_layers: layers,
            encoder_attention_heads: heads,
            decoder_attention_heads: heads,
            encoder_ffn_dim: ffn,
            decoder_ffn_dim: ffn,
            max_position_embeddings: max_positions,
            activation_function: "relu".into(),
            scale_embedding: true,
            share_encoder_decoder_embeddings: true,
            normalize_before: false,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            pad_token_id: pad,
            eos_token_id: eos,
            decoder_start_token_id: pad,
            decoder_vocab_size: Some(vocab_size),
        }
    }

    /// The HF `config.json` content of a `MarianMTModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), "marian".into());
        o.insert("architectures".into(), serde_json::json!(["MarianMTModel"]));
        o.insert("tie_word_embeddings".into(), true.into());
        o.insert("forced_eos_token_id".into(), self.eos_token_id.into());
        o.insert("is_encoder_decoder".into(), true.into());
        v
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        for (name, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if !self.d_model.is_multiple_of(heads) {
                return Err(Error::invalid(
                    name,
                    format!("d_model {} is not divisible by {heads}", self.d_model),
                ));
            }
        }
        if !self.d_model.is_multiple_of(2) {
            return Err(Error::invalid(
                "d_model",
                "must be even for sinusoidal positions",
            ));
        }
        if !self.share_encoder_decoder_embeddings
            || self
                .decoder_vocab_size
                .is_some_and(|v| v != self.vocab_size)
        {
            return Err(Error::invalid(
                "share_encoder_decoder_embeddings",
                "separate source and target vocabularies are not supported yet",
            ));
        }
        if self.normalize_before {
            return Err(Error::invalid(
                "normalize_before",
                "pre-LayerNorm Marian models are not supported",
            ));
        }
        if !matches!(
            self.activation_function.as_str(),
            "swish" | "silu" | "gelu" | "gelu_new" | "relu"
        ) {
            return Err(Error::invalid(
                "activation_function",
                format!("{:?} is not supported", self.activation_function),
            ));
        }
        special_ids_in_vocabulary(
            self.vocab_size,
            [
                ("pad_token_id", self.pad_token_id),
                ("eos_token_id", self.eos_token_id),
                ("decoder_start_token_id", self.decoder_start_token_id),
            ],
        )?;
        crate::guard::probability("dropout", self.dropout as f64)?;
        crate::guard::probability("attention_dropout", self.attention_dropout as f64)?;
        crate::guard::probability("activation_dropout", self.activation_dropout as f64)?;
        Ok(())
    }
}

/// An encoder-decoder's special ids (by config field) lie inside its vocabulary.
pub(crate) fn special_ids_in_vocabulary<const N: usize>(
    vocab_size: usize,
    ids: [(&str, u32); N],
) -> Result<()> {
    for (name, id) in ids {
        if id as usize >= vocab_size {
            return Err(Error::invalid(
                name,
                format!("{id} is outside the vocabulary of {vocab_size}"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Special ids outside the vocabulary are refused, naming the field (the decoder
    /// start is embedded without a lookup check in training).
    #[test]
    fn special_ids_must_be_in_the_vocabulary() {
        let ok = MarianConfig::transformer(10, 8, 1, 2, 16, 16, 9, 8);
        ok.validate().unwrap();
        for field in ["pad_token_id", "eos_token_id", "decoder_start_token_id"] {
            let mut c = ok.clone();
            match field {
                "pad_token_id" => c.pad_token_id = 10,
                "eos_token_id" => c.eos_token_id = 10,
                _ => c.decoder_start_token_id = 10,
            }
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(field) && e.contains("10"), "{e}");
        }
    }
}
