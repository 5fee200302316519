//! BERT (Devlin et al. 2019), as Hugging Face's `BertModel` and
//! `BertForSequenceClassification`: word + position + token-type embeddings with a
//! LayerNorm, post-LayerNorm encoder blocks of bidirectional self-attention (padding
//! masked out) and a GELU MLP, the tanh pooler over the first token, and a linear
//! classification head. Linear weights are `[out, in]`.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::nn::{
    dropout, layer_norm, linear, masked_attention, padding_mask, Init, Mode, ParamBuilder,
};
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

struct Lora {
    a: Tensor,
    b: Tensor,
    scale: f64,
}

impl Lora {
    fn apply(&self, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let d = linear(&linear(x, &self.a, None)?, &self.b, None)?;
        Ok((y + (d * self.scale)?)?)
    }
}

struct Layer {
    lora_q: Option<Lora>,
    lora_v: Option<Lora>,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    attn_out: (Tensor, Tensor),
    attn_ln: (Tensor, Tensor),
    inter: (Tensor, Tensor),
    out: (Tensor, Tensor),
    out_ln: (Tensor, Tensor),
}

pub struct Bert {
    pub config: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    emb_ln: (Tensor, Tensor),
    layers: Vec<Layer>,
    pooler: Option<(Tensor, Tensor)>,
    classifier: Option<(Tensor, Tensor)>,
}

/// Outputs of a forward pass.
pub struct BertOutput {
    /// `[B, T, H]`.
    pub last_hidden_state: Tensor,
    /// Every layer's input and the final output: `num_hidden_layers + 1` tensors.
    pub hidden_states: Vec<Tensor>,
    /// `[B, H]`, when the model has a pooler.
    pub pooled: Option<Tensor>,
}

impl Bert {
    /// `prefix` is `"bert."` for task checkpoints (`BertForSequenceClassification`) and
    /// `""` for bare `BertModel` checkpoints. `with_pooler` and `num_labels` choose the
    /// heads to build.
    pub fn new(
        config: BertConfig,
        pb: &mut ParamBuilder,
        prefix: &str,
        with_pooler: bool,
        num_labels: Option<usize>,
    ) -> Result<Self> {
        Self::with_lora(config, pb, prefix, with_pooler, num_labels, None)
    }

    /// As [`Bert::new`], with LoRA adapters on every layer's query and value
    /// projections (parameters `<module>.lora_A.weight` and `<module>.lora_B.weight`).
    pub fn with_lora(
        config: BertConfig,
        pb: &mut ParamBuilder,
        prefix: &str,
        with_pooler: bool,
        num_labels: Option<usize>,
        lora: Option<LoraConfig>,
    ) -> Result<Self> {
        config.validate()?;
        let h = config.hidden_size;
        let normal = Init::Normal { std: 0.02 };
        let p = |s: &str| format!("{prefix}{s}");
        let ln = |pb: &mut ParamBuilder, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                pb.get(&format!("{name}.weight"), &[h], Init::Ones)?,
                pb.get(&format!("{name}.bias"), &[h], Init::Zeros)?,
            ))
        };
        let lin =
            |pb: &mut ParamBuilder, name: &str, o: usize, i: usize| -> Result<(Tensor, Tensor)> {
                Ok((
                    pb.get(&format!("{name}.weight"), &[o, i], normal)?,
                    pb.get(&format!("{name}.bias"), &[o], Init::Zeros)?,
                ))
            };
        let word = pb.get(
            &p("embeddings.word_embeddings.weight"),
            &[config.vocab_size, h],
            normal,
        )?;
        let position = pb.get(
            &p("embeddings.position_embeddings.weight"),
            &[config.max_position_embeddings, h],
            normal,
        )?;
        let token_type = pb.get(
            &p("embeddings.token_type_embeddings.weight"),
            &[config.type_vocab_size, h],
            normal,
        )?;
        let emb_ln = ln(pb, &p("embeddings.LayerNorm"))?;
        pb.ignore(&p("embeddings.position_ids"));
        pb.ignore(&p("embeddings.token_type_ids"));
        let mut layers = vec![];
        for l in 0..config.num_hidden_layers {
            let q = p(&format!("encoder.layer.{l}"));
            let adapter = |pb: &mut ParamBuilder, module: &str| -> Result<Option<Lora>> {
                let Some(cfg) = lora else { return Ok(None) };
                let name = format!("{q}.{module}");
                let a = pb.get(
                    &format!("{name}.lora_A.weight"),
                    &[cfg.r, h],
                    Init::Normal {
                        std: 1.0 / (h as f64).sqrt(),
                    },
                )?;
                let b = pb.get(&format!("{name}.lora_B.weight"), &[h, cfg.r], Init::Zeros)?;
                Ok(Some(Lora {
                    a,
                    b,
                    scale: cfg.scale(),
                }))
            };
            let lora_q = adapter(pb, LORA_TARGETS[0])?;
            let lora_v = adapter(pb, LORA_TARGETS[1])?;
            layers.push(Layer {
                lora_q,
                lora_v,
                q: lin(pb, &format!("{q}.attention.self.query"), h, h)?,
                k: lin(pb, &format!("{q}.attention.self.key"), h, h)?,
                v: lin(pb, &format!("{q}.attention.self.value"), h, h)?,
                attn_out: lin(pb, &format!("{q}.attention.output.dense"), h, h)?,
                attn_ln: ln(pb, &format!("{q}.attention.output.LayerNorm"))?,
                inter: lin(
                    pb,
                    &format!("{q}.intermediate.dense"),
                    config.intermediate_size,
                    h,
                )?,
                out: lin(
                    pb,
                    &format!("{q}.output.dense"),
                    h,
                    config.intermediate_size,
                )?,
                out_ln: ln(pb, &format!("{q}.output.LayerNorm"))?,
            });
        }
        let pooler = if with_pooler {
            Some(lin(pb, &p("pooler.dense"), h, h)?)
        } else {
            None
        };
        let classifier = match num_labels {
            Some(n) => Some(lin(pb, "classifier", n, h)?),
            None => None,
        };
        Ok(Bert {
            config,
            word,
            position,
            token_type,
            emb_ln,
            layers,
            pooler,
            classifier,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.hidden_act.as_str() {
            "gelu" => x.gelu_erf()?,
            "relu" => x.relu()?,
            _ => crate::nn::gelu_tanh(x)?,
        })
    }

    /// Encode ids `[B, T]` with `attention_mask` `[B, T]` (1 = token, 0 = padding) and
    /// optional token types.
    pub fn forward(
        &self,
        ids: &Tensor,
        attention_mask: &Tensor,
        token_type_ids: Option<&Tensor>,
        mode: &mut Mode,
    ) -> Result<BertOutput> {
        let cfg = &self.config;
        let (b, t) = ids.dims2()?;
        crate::nn::check_positions(t, cfg.max_position_embeddings)?;
        let h = cfg.hidden_size;
        let (nh, hd) = (cfg.num_attention_heads, h / cfg.num_attention_heads);
        let dev = ids.device();
        let pos = Tensor::arange(0u32, t as u32, dev)?;
        let types = match token_type_ids {
            Some(tt) => tt.clone(),
            None => Tensor::zeros((b, t), DType::U32, dev)?,
        };
        let x = self
            .word
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, h))?;
        let x = x.broadcast_add(&self.position.embedding(&pos)?)?;
        let x = (x + self
            .token_type
            .embedding(&types.flatten_all()?)?
            .reshape((b, t, h))?)?;
        let x = layer_norm(&x, &self.emb_ln.0, &self.emb_ln.1, cfg.layer_norm_eps, mode)?;
        let mut x = dropout(&x, cfg.hidden_dropout_prob, mode)?;
        let mask = padding_mask(attention_mask, x.dtype())?;
        let mut hidden_states = vec![x.clone()];
        for layer in &self.layers {
            let heads = |p: &(Tensor, Tensor), lora: &Option<Lora>| -> Result<Tensor> {
                let mut y = linear(&x, &p.0, Some(&p.1))?;
                if let Some(l) = lora {
                    y = l.apply(&x, y)?;
                }
                Ok(y.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let (q, k, v) = (
                heads(&layer.q, &layer.lora_q)?,
                heads(&layer.k, &None)?,
                heads(&layer.v, &layer.lora_v)?,
            );
            let y = masked_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                cfg.attention_probs_dropout_prob,
                mode,
            )?;
            let y = y.transpose(1, 2)?.reshape((b, t, h))?;
            let y = dropout(
                &linear(&y, &layer.attn_out.0, Some(&layer.attn_out.1))?,
                cfg.hidden_dropout_prob,
                mode,
            )?;
            let a = layer_norm(
                &(y + &x)?,
                &layer.attn_ln.0,
                &layer.attn_ln.1,
                cfg.layer_norm_eps,
                mode,
            )?;
            let m = self.act(&linear(&a, &layer.inter.0, Some(&layer.inter.1))?)?;
            let m = dropout(
                &linear(&m, &layer.out.0, Some(&layer.out.1))?,
                cfg.hidden_dropout_prob,
                mode,
            )?;
            x = layer_norm(
                &(m + &a)?,
                &layer.out_ln.0,
                &layer.out_ln.1,
                cfg.layer_norm_eps,
                mode,
            )?;
            hidden_states.push(x.clone());
        }
        let pooled = match &self.pooler {
            Some((w, bias)) => {
                let first = x.narrow(1, 0, 1)?.squeeze(1)?;
                Some(linear(&first, w, Some(bias))?.tanh()?)
            }
            None => None,
        };
        Ok(BertOutput {
            last_hidden_state: x,
            hidden_states,
            pooled,
        })
    }

    /// Classification logits `[B, num_labels]` from the pooled output.
    pub fn classify(&self, out: &BertOutput, mode: &mut Mode) -> Result<Tensor> {
        let (Some(pooled), Some((w, b))) = (&out.pooled, &self.classifier) else {
            return Err(Error::Model(
                "this BERT model has no pooler and classification head".into(),
            ));
        };
        let pooled = dropout(pooled, self.config.hidden_dropout_prob, mode)?;
        linear(&pooled, w, Some(b))
    }
}

/// Mean of the token vectors `[B, T, H]` over positions where `mask` `[B, T]` is 1
/// (sentence-transformers' mean pooling).
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    Ok(sum.broadcast_div(&count)?)
}

/// Scale rows `[B, H]` to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}
