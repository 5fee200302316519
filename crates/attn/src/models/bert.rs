//! BERT (Devlin et al. 2019), as Hugging Face's `BertModel` and
//! `BertForSequenceClassification`: word + position + token-type embeddings with a
//! LayerNorm, post-LayerNorm encoder blocks of bidirectional self-attention (padding
//! masked out) and a GELU MLP, the tanh pooler over the first token, and a linear
//! classification head. Linear weights are `[out, in]`. This file holds the
//! configuration and LoRA's; the model runs on the engine (`engine::Encoder` for
//! inference, `train::encoder` for training).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_drop() -> f32 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_drop")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_drop")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    /// Labels of a sequence-classification head, by id.
    #[serde(default)]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
}

impl BertConfig {
    /// A classifier config with BERT's defaults for everything but the shape.
    pub fn classifier(
        vocab_size: usize,
        hidden: usize,
        layers: usize,
        heads: usize,
        max_len: usize,
        labels: &[String],
    ) -> Self {
        BertConfig {
            vocab_size,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: 4 * hidden,
            max_position_embeddings: max_len,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            pad_token_id: Some(0),
            position_embedding_type: Some("absolute".into()),
            id2label: None,
            num_labels: None,
            architectures: None,
        }
        .with_labels(labels)
    }

    /// Set the label names (HF's `id2label`, `num_labels`) and mark the config as a
    /// sequence classifier.
    pub fn with_labels(mut self, labels: &[String]) -> Self {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.num_labels = Some(labels.len());
        self.architectures = Some(vec!["BertForSequenceClassification".into()]);
        self
    }

    /// Label names in id order.
    pub fn label_names(&self) -> Vec<String> {
        let n = self.labels();
        (0..n)
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    /// The HF `config.json` content.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), "bert".into());
        if let Some(m) = &self.id2label {
            let l2i: serde_json::Map<String, serde_json::Value> = m
                .iter()
                .map(|(i, l)| (l.clone(), i.parse::<u64>().unwrap_or(0).into()))
                .collect();
            o.insert("label2id".into(), l2i.into());
        }
        o.retain(|_, v| !v.is_null());
        v
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::invalid(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not divisible by {}",
                    self.hidden_size, self.num_attention_heads
                ),
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(Error::invalid(
                    "position_embedding_type",
                    format!("{p:?} is not supported (absolute)"),
                ));
            }
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh" | "relu"
        ) {
            return Err(Error::invalid(
                "hidden_act",
                format!("{:?} is not supported", self.hidden_act),
            ));
        }
        crate::guard::positive_finite("layer_norm_eps", self.layer_norm_eps)?;
        crate::guard::probability("hidden_dropout_prob", self.hidden_dropout_prob as f64)?;
        crate::guard::probability(
            "attention_probs_dropout_prob",
            self.attention_probs_dropout_prob as f64,
        )?;
        Ok(())
    }

    /// Number of classes of the classification head: `num_labels`, else the size of
    /// `id2label`, for a checkpoint whose architecture is a sequence classifier.
    pub fn labels(&self) -> usize {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len()))
            .unwrap_or(2)
    }

    pub fn is_classifier(&self) -> bool {
        self.architectures
            .as_ref()
            .is_some_and(|a| a.iter().any(|s| s.ends_with("ForSequenceClassification")))
    }
}

/// Low-rank adapters on the query and value projections (Hu et al. 2021): the layer
/// computes `W x + (α/r) B A x` with `A` `[r, in]` and `B` `[out, r]`; B starts at zero
/// so training starts from the pretrained function.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f64,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }
}

/// The projections LoRA adapts, as HF module names inside a layer.
pub const LORA_TARGETS: [&str; 2] = ["attention.self.query", "attention.self.value"];
