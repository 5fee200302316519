//! BERT (Devlin et al. 2019), as Hugging Face's `BertModel` and
//! `BertForSequenceClassification`: word + position + token-type embeddings with a
//! LayerNorm, post-LayerNorm encoder blocks of bidirectional self-attention (padding
//! masked out) and a GELU MLP, the tanh pooler over the first token, and a linear
//! classification head. Linear weights are `[out, in]`. This file holds the
//! configuration and LoRA's; the model runs on the engine (`engine::Encoder` for
//! inference, `train::encoder` for training).
//!
//! RoBERTa, XLM-RoBERTa and DistilBERT are the same stack in other words, so they are
//! read into BERT's names ([`EncoderFamily::canonical`]) and written back in their
//! own ([`EncoderFamily::hf_name`]); what differs is configuration:
//! - RoBERTa / XLM-RoBERTa: positions start past the padding id (`pad_token_id + 1`),
//!   one token type; the classification head `classifier.dense` → tanh →
//!   `classifier.out_proj` is BERT's pooler and classifier under other names, with a
//!   dropout before its first matrix as well; a base model's `pooler` is not used.
//! - DistilBERT: its own config names (`dim`, `n_layers`, …) and tensor names
//!   (`q_lin`, `sa_layer_norm`, `ffn.lin1`, …), no token types, and a head
//!   `pre_classifier` → ReLU → `classifier`.

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

/// The encoder families that run as BERT's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderFamily {
    #[default]
    Bert,
    Roberta,
    XlmRoberta,
    DistilBert,
}

/// The encoder `model_type`s attn runs.
pub const ENCODER_TYPES: [&str; 4] = ["bert", "roberta", "xlm-roberta", "distilbert"];

/// DistilBERT's config keys and BERT's for the same setting.
const DISTILBERT_KEYS: [(&str, &str); 6] = [
    ("dim", "hidden_size"),
    ("n_layers", "num_hidden_layers"),
    ("n_heads", "num_attention_heads"),
    ("hidden_dim", "intermediate_size"),
    ("activation", "hidden_act"),
    ("dropout", "hidden_dropout_prob"),
];

/// DistilBERT's names inside a layer, and BERT's.
const DISTILBERT_LAYER: [(&str, &str); 8] = [
    ("attention.q_lin", "attention.self.query"),
    ("attention.k_lin", "attention.self.key"),
    ("attention.v_lin", "attention.self.value"),
    ("attention.out_lin", "attention.output.dense"),
    ("sa_layer_norm", "attention.output.LayerNorm"),
    ("ffn.lin1", "intermediate.dense"),
    ("ffn.lin2", "output.dense"),
    ("output_layer_norm", "output.LayerNorm"),
];

impl EncoderFamily {
    pub fn of_model_type(t: &str) -> Option<Self> {
        match t {
            "bert" => Some(Self::Bert),
            "roberta" => Some(Self::Roberta),
            "xlm-roberta" => Some(Self::XlmRoberta),
            "distilbert" => Some(Self::DistilBert),
            _ => None,
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta => "roberta",
            Self::XlmRoberta => "xlm-roberta",
            Self::DistilBert => "distilbert",
        }
    }

    /// transformers' sequence-classification class.
    pub fn classifier_class(self) -> &'static str {
        match self {
            Self::Bert => "BertForSequenceClassification",
            Self::Roberta => "RobertaForSequenceClassification",
            Self::XlmRoberta => "XLMRobertaForSequenceClassification",
            Self::DistilBert => "DistilBertForSequenceClassification",
        }
    }

    /// The prefix of the encoder's tensors in a task checkpoint.
    fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert.",
            Self::Roberta | Self::XlmRoberta => "roberta.",
            Self::DistilBert => "distilbert.",
        }
    }

    fn is_roberta(self) -> bool {
        matches!(self, Self::Roberta | Self::XlmRoberta)
    }

    /// The head applies a dropout to the first token's vector before its first matrix
    /// (RoBERTa's `classifier.dense`; BERT's pooler has none).
    pub fn drops_before_head(self) -> bool {
        self.is_roberta()
    }

    /// The head's activation after its first matrix, in place: ReLU (DistilBERT) or
    /// tanh (BERT's pooler, RoBERTa's `classifier.dense`).
    pub fn head_activation(self, v: &mut [f32]) {
        if self == Self::DistilBert {
            v.iter_mut().for_each(|x| *x = x.max(0.0));
        } else {
            v.iter_mut().for_each(|x| *x = x.tanh());
        }
    }

    /// The backward of [`Self::head_activation`]: `d` (the gradient of its outputs
    /// `y`) becomes the gradient of its inputs.
    pub fn head_activation_backward(self, d: &mut [f32], y: &[f32]) {
        if self == Self::DistilBert {
            d.iter_mut()
                .zip(y)
                .for_each(|(d, y)| *d = if *y > 0.0 { *d } else { 0.0 });
        } else {
            d.iter_mut().zip(y).for_each(|(d, y)| *d *= 1.0 - y * y);
        }
    }

    /// A checkpoint tensor's name in BERT's words (without `bert.`), or `None` for a
    /// tensor the encoder and its classification head do not use (masked-LM heads, a
    /// RoBERTa base model's pooler).
    pub fn canonical(self, name: &str) -> Option<String> {
        let bare = name.strip_prefix(self.prefix()).unwrap_or(name);
        let unused = [
            "cls.",
            "lm_head.",
            "vocab_transform.",
            "vocab_layer_norm.",
            "vocab_projector.",
        ];
        if unused.iter().any(|u| bare.starts_with(u)) {
            return None;
        }
        match self {
            Self::Bert => Some(bare.to_string()),
            Self::Roberta | Self::XlmRoberta => {
                if bare.starts_with("pooler.") {
                    None
                } else if let Some(rest) = bare.strip_prefix("classifier.dense.") {
                    Some(format!("pooler.dense.{rest}"))
                } else if let Some(rest) = bare.strip_prefix("classifier.out_proj.") {
                    Some(format!("classifier.{rest}"))
                } else {
                    Some(bare.to_string())
                }
            }
            Self::DistilBert => {
                if let Some(rest) = bare.strip_prefix("pre_classifier.") {
                    return Some(format!("pooler.dense.{rest}"));
                }
                if let Some(rest) = bare.strip_prefix("transformer.layer.") {
                    let (l, tail) = rest.split_once('.')?;
                    for (theirs, ours) in DISTILBERT_LAYER {
                        if let Some(end) = tail.strip_prefix(theirs) {
                            return Some(format!("encoder.layer.{l}.{ours}{end}"));
                        }
                    }
                }
                Some(bare.to_string())
            }
        }
    }

    /// The family's checkpoint name of a canonical tensor name, as its
    /// `…ForSequenceClassification` class names it.
    pub fn hf_name(self, canonical: &str) -> String {
        let head = |rest: &str| canonical.strip_prefix(rest);
        match self {
            Self::Bert => {
                if canonical.starts_with("classifier.") {
                    canonical.to_string()
                } else {
                    format!("bert.{canonical}")
                }
            }
            Self::Roberta | Self::XlmRoberta => {
                if let Some(rest) = head("pooler.dense.") {
                    format!("classifier.dense.{rest}")
                } else if let Some(rest) = head("classifier.") {
                    format!("classifier.out_proj.{rest}")
                } else {
                    format!("roberta.{canonical}")
                }
            }
            Self::DistilBert => {
                if let Some(rest) = head("pooler.dense.") {
                    return format!("pre_classifier.{rest}");
                }
                if canonical.starts_with("classifier.") {
                    return canonical.to_string();
                }
                if let Some(rest) = head("encoder.layer.") {
                    if let Some((l, tail)) = rest.split_once('.') {
                        for (theirs, ours) in DISTILBERT_LAYER {
                            if let Some(end) = tail.strip_prefix(ours) {
                                return format!("distilbert.transformer.layer.{l}.{theirs}{end}");
                            }
                        }
                    }
                }
                format!("distilbert.{canonical}")
            }
        }
    }

    /// The module names LoRA adapts, as the family names them (PEFT's
    /// `target_modules`).
    pub fn lora_modules(self) -> [&'static str; 2] {
        match self {
            Self::DistilBert => ["q_lin", "v_lin"],
            _ => ["query", "value"],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Which family's names and conventions (read from `model_type`).
    #[serde(skip)]
    pub family: EncoderFamily,
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
    #[serde(serialize_with = "super::short_f32")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "default_drop")]
    #[serde(serialize_with = "super::short_f32")]
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
    /// The config's other settings, written back as they were read.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
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
            family: EncoderFamily::Bert,
            extra: serde_json::Map::new(),
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
        self.architectures = Some(vec![self.family.classifier_class().into()]);
        // What attn trains and writes: one label per text (cross-entropy), f32 weights.
        self.extra
            .insert("problem_type".into(), "single_label_classification".into());
        self.extra.remove("dtype");
        self.extra.insert("torch_dtype".into(), "float32".into());
        self
    }

    /// Read a Hugging Face encoder config of any [`EncoderFamily`] (DistilBERT's keys
    /// renamed to BERT's).
    pub fn from_hf(value: &serde_json::Value) -> Result<Self> {
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let family = EncoderFamily::of_model_type(model_type).ok_or_else(|| {
            Error::invalid(
                "model_type",
                format!(
                    "{model_type:?} is not an encoder attn runs (supported: {})",
                    ENCODER_TYPES.join(", ")
                ),
            )
        })?;
        let mut v = value.clone();
        let o = v
            .as_object_mut()
            .ok_or_else(|| Error::invalid("config", "not a JSON object"))?;
        if family == EncoderFamily::DistilBert {
            for (theirs, ours) in DISTILBERT_KEYS {
                if let Some(x) = o.remove(theirs) {
                    o.insert(ours.into(), x);
                }
            }
            if let Some(x) = o.remove("attention_dropout") {
                o.insert("attention_probs_dropout_prob".into(), x);
            }
            o.insert("type_vocab_size".into(), 0.into());
            if o.get("sinusoidal_pos_embds").and_then(|x| x.as_bool()) == Some(true) {
                return Err(Error::invalid(
                    "sinusoidal_pos_embds",
                    "DistilBERT with fixed sinusoidal positions is not supported",
                ));
            }
        }
        o.remove("model_type");
        o.remove("label2id");
        if family.is_roberta() && o.get("pad_token_id").is_none_or(|v| v.is_null()) {
            o.insert("pad_token_id".into(), 1.into()); // RobertaConfig's default
        }
        let mut config: BertConfig = serde_json::from_value(v).map_err(|e| {
            Error::invalid("config", format!("not a valid {model_type} config: {e}"))
        })?;
        config.family = family;
        Ok(config)
    }

    /// The dropout rate of the classification head: DistilBERT's `seq_classif_dropout`
    /// (transformers' default 0.2), else `classifier_dropout` when set, else the hidden
    /// states' rate.
    pub fn head_dropout(&self) -> f32 {
        let get = |k: &str| self.extra.get(k).and_then(|v| v.as_f64()).map(|v| v as f32);
        match self.family {
            EncoderFamily::DistilBert => get("seq_classif_dropout").unwrap_or(0.2),
            _ => get("classifier_dropout").unwrap_or(self.hidden_dropout_prob),
        }
    }

    /// The position id of each token of a sequence, as transformers numbers them: BERT
    /// and DistilBERT count from 0; RoBERTa counts the tokens that are not the padding
    /// id from `pad_token_id + 1`, and gives a padding id the position `pad_token_id`.
    pub fn position_ids(&self, ids: &[u32]) -> Vec<usize> {
        match (self.family.is_roberta(), self.pad_token_id) {
            (true, Some(pad)) => {
                let mut seen = 0;
                ids.iter()
                    .map(|&id| {
                        if id == pad {
                            pad as usize
                        } else {
                            seen += 1;
                            pad as usize + seen
                        }
                    })
                    .collect()
            }
            _ => (0..ids.len()).collect(),
        }
    }

    /// The longest sequence: the position table less the ids RoBERTa skips.
    pub fn max_len(&self) -> usize {
        self.max_position_embeddings - self.position_offset()
    }

    /// The first position id of a sequence: RoBERTa counts from past the padding id.
    pub fn position_offset(&self) -> usize {
        if self.family.is_roberta() {
            self.pad_token_id.map_or(0, |p| p as usize + 1)
        } else {
            0
        }
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

    /// The HF `config.json` content, in the family's own keys.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), self.family.model_type().into());
        if let Some(m) = &self.id2label {
            let l2i: serde_json::Map<String, serde_json::Value> = m
                .iter()
                .map(|(i, l)| (l.clone(), i.parse::<u64>().unwrap_or(0).into()))
                .collect();
            o.insert("label2id".into(), l2i.into());
        }
        if self.family == EncoderFamily::DistilBert {
            o.remove("type_vocab_size");
            for (theirs, ours) in DISTILBERT_KEYS {
                if let Some(x) = o.remove(ours) {
                    o.insert(theirs.into(), x);
                }
            }
            if let Some(x) = o.remove("attention_probs_dropout_prob") {
                o.insert("attention_dropout".into(), x);
            }
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
        if self.type_vocab_size == 0 && self.family != EncoderFamily::DistilBert {
            return Err(Error::invalid("type_vocab_size", "must be at least 1"));
        }
        if self.position_offset() >= self.max_position_embeddings {
            return Err(Error::invalid(
                "pad_token_id",
                format!(
                    "positions start at {} (past the padding id), beyond max_position_embeddings {}",
                    self.position_offset(),
                    self.max_position_embeddings
                ),
            ));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
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
