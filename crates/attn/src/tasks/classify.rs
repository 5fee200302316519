//! Text classification with a BERT-style encoder and a linear head on the pooled
//! output: training from scratch (with a tokenizer trained on the training text),
//! fine-tuning a pretrained HF BERT fully or with LoRA adapters, prediction and
//! evaluation. Texts are batched by length, padded, and masked, so padding never
//! changes a text's logits.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_json, read_weights, write_json, write_safetensors};
use crate::data::labelled::Example;
use crate::metrics::{classification_report, ClassificationReport};
use crate::models::bert::{Bert, BertConfig, LoraConfig, LORA_TARGETS};
use crate::nn::{Mode, ParamBuilder, Params};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::encoder::NativeEncoder;
use crate::train::optimizer::AdamWConfig;
use crate::{Error, Result};

pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Fraction of the steps spent warming the learning rate up (then linear decay to 0).
    pub warmup_ratio: f64,
    pub grad_clip: f64,
    /// Longest input in tokens (special tokens included); longer texts are truncated.
    pub max_len: usize,
    pub seed: u64,
    /// LoRA adapters instead of full fine-tuning (pretrained models only).
    pub lora: Option<LoraConfig>,
    /// Save LoRA adapters merged into the weights (an ordinary HF folder), or beside them.
    pub merge_lora: bool,
    /// From-scratch encoder shape and tokenizer.
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    /// `bpe:N` or `char` for a tokenizer trained on the training texts.
    pub tokenizer: String,
    pub dropout: f32,
}

impl Default for ClassifyConfig {
    fn default() -> Self {
        ClassifyConfig {
            epochs: 3,
            batch_size: 32,
            lr: 5e-5,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            grad_clip: 1.0,
            max_len: 128,
            seed: 42,
            lora: None,
            merge_lora: true,
            hidden: 256,
            layers: 4,
            heads: 4,
            tokenizer: "bpe:8000".into(),
            dropout: 0.1,
        }
    }
}

impl ClassifyConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("epochs", self.epochs),
            ("batch-size", self.batch_size),
            ("max-len", self.max_len),
            ("hidden", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "lr",
                format!("{} must be a positive number", self.lr),
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(Error::invalid(
                "warmup-ratio",
                format!("{} is not in [0, 1)", self.warmup_ratio),
            ));
        }
        if let Some(l) = &self.lora {
            if l.r == 0 {
                return Err(Error::invalid("lora-rank", "must be at least 1"));
            }
        }
        if self.hidden % self.heads != 0 {
            return Err(Error::invalid(
                "heads",
                format!("hidden {} is not divisible by {}", self.hidden, self.heads),
            ));
        }
        crate::guard::probability("--dropout", self.dropout as f64)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::invalid(
                "--weight-decay",
                format!("{} must be a finite number ≥ 0", self.weight_decay),
            ));
        }
        if let Some(l) = &self.lora {
            if !(l.lora_alpha.is_finite() && l.lora_alpha > 0.0) {
                return Err(Error::invalid(
                    "--lora-alpha",
                    format!("{} must be a finite number above 0", l.lora_alpha),
                ));
            }
        }
        if let Some(n) = self.tokenizer.strip_prefix("bpe:") {
            crate::train::check_bpe_size("--tokenizer", n)?;
        }
        // Estimates before anything is allocated: a from-scratch model's position table
        // (weights, gradient and two AdamW moments) and one batch's activations (about
        // 16 values per position, layer and hidden unit, plus the attention scores).
        let (h, t, b, l) = (
            self.hidden as f64,
            self.max_len as f64,
            self.batch_size as f64,
            self.layers as f64,
        );
        crate::guard::check_memory("--max-len (the position embeddings)", 16.0 * t * h)?;
        crate::guard::check_memory(
            "--batch-size × --max-len (one batch's activations)",
            4.0 * b * t * l * (16.0 * h + 2.0 * self.heads as f64 * t),
        )?;
        Ok(())
    }
}

/// What prediction does with a text longer than the classifier's `max_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LongTexts {
    /// Keep its first `max_len` tokens (what training saw).
    Truncate,
    /// Score consecutive windows of `max_len` tokens and average them.
    Windows,
}

/// A trained classifier: encoder with head, tokenizer, label names.
pub struct Classifier {
    pub model: Bert,
    pub params: Params,
    pub tokenizer: Tokenizer,
    pub labels: Vec<String>,
    pub max_len: usize,
    pad: u32,
    /// The checkpoint's name prefix for encoder tensors (`"bert."` or `""`).
    prefix: String,
    lora: Option<LoraConfig>,
}

fn is_lora(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

fn is_head(name: &str) -> bool {
    name.starts_with("classifier.")
}

/// Fold `<module>.lora_A/B.weight` pairs into `<module>.weight` (W + scale·B·A) and
/// drop them.
fn merge_adapters(tensors: &mut BTreeMap<String, Tensor>, scale: f64) -> Result<()> {
    let modules: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_A.weight").map(str::to_string))
        .collect();
    for m in modules {
        let a = tensors.remove(&format!("{m}.lora_A.weight")).unwrap();
        let b = tensors
            .remove(&format!("{m}.lora_B.weight"))
            .ok_or_else(|| Error::Model(format!("adapter {m} has lora_A but no lora_B")))?;
        let w = tensors
            .get(&format!("{m}.weight"))
            .ok_or_else(|| Error::Model(format!("adapter {m} has no base weight {m}.weight")))?;
        let merged = (w + (b.matmul(&a)? * scale)?)?;
        tensors.insert(format!("{m}.weight"), merged);
    }
    Ok(())
}

/// Probabilities of logits.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

impl Classifier {
    /// Load a classifier folder written by [`train`] (or any HF
    /// `BertForSequenceClassification` folder); LoRA adapters saved beside the weights
    /// are merged in.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join(checkpoint::CONFIG);
        let config: BertConfig = serde_json::from_value(checkpoint::read_config(dir)?)
            .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid BERT config: {e}")))?;
        if !config.is_classifier() {
            return Err(Error::bad_file(
                &cfg_path,
                "not a sequence classifier (architectures lacks BertForSequenceClassification)",
            ));
        }
        let mut tensors: BTreeMap<String, Tensor> =
            read_weights(dir, device)?.into_iter().collect();
        let adapter = dir.join(ADAPTER_WEIGHTS);
        if adapter.is_file() {
            let lora: LoraConfig = serde_json::from_value(read_json(&dir.join(ADAPTER_CONFIG))?)
                .map_err(|e| {
                    Error::bad_file(
                        dir.join(ADAPTER_CONFIG),
                        format!("not a valid adapter config: {e}"),
                    )
                })?;
            tensors.extend(checkpoint::read_safetensors(&adapter, device)?);
            merge_adapters(&mut tensors, lora.scale())?;
        }
        let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        config
            .validate()
            .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
        let labels = config.label_names();
        let mut pb = ParamBuilder::load(tensors.into_iter().collect(), device);
        let model = Bert::new(config, &mut pb, prefix, true, Some(labels.len()))?;
        let params = pb
            .finish()
            .map_err(|e| Error::bad_file(dir.join(checkpoint::WEIGHTS), e.to_string()))?;
        let tokenizer = Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
        let max_len = read_json(&dir.join("attn_classifier.json"))
            .ok()
            .and_then(|v| v["max_len"].as_u64())
            .map(|v| v as usize)
            .unwrap_or(model.config.max_position_embeddings)
            .min(model.config.max_position_embeddings);
        let pad = model.config.pad_token_id.unwrap_or(0);
        Ok(Classifier {
            model,
            params,
            tokenizer,
            labels,
            max_len,
            pad,
            prefix: prefix.into(),
            lora: None,
        })
    }

    /// Token ids of each text, truncated to `max_len`.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| self.tokenizer.encode_for_model(t, self.max_len))
            .collect()
    }

    /// Logits `[n, labels]` for encoded texts, padded to the longest with a mask.
    pub fn logits(&self, batch: &[&[u32]], mode: &mut Mode) -> Result<Tensor> {
        let dev = Device::Cpu;
        let t = batch.iter().map(|e| e.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(batch.len() * t);
        let mut mask = Vec::with_capacity(batch.len() * t);
        for e in batch {
            ids.extend(e.iter().copied().chain(std::iter::repeat(self.pad)).take(t));
            mask.extend((0..t).map(|i| u32::from(i < e.len())));
        }
        let ids = Tensor::from_vec(ids, (batch.len(), t), &dev)?;
        let mask = Tensor::from_vec(mask, (batch.len(), t), &dev)?;
        let out = self.model.forward(&ids, &mask, None, mode)?;
        self.model.classify(&out, mode)
    }

    /// Class probabilities for each text, batched by length (texts longer than
    /// `max_len` are truncated).
    pub fn predict(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        Ok(self.predict_long(texts, batch_size, LongTexts::Truncate)?.0)
    }

    /// Use up to `max_len` tokens per text (at most the model's position limit).
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        let limit = self.model.config.max_position_embeddings;
        if max_len < 2 || max_len > limit {
            return Err(Error::invalid(
                "--max-len",
                format!("{max_len} is not between 2 and the model's position limit {limit}"),
            ));
        }
        self.max_len = max_len;
        Ok(())
    }

    /// Class probabilities for each text, and how many texts were longer than
    /// `max_len`: those are truncated, or with [`LongTexts::Windows`] cut into
    /// consecutive windows of `max_len` tokens whose probabilities are averaged,
    /// weighted by each window's length in tokens.
    pub fn predict_long(
        &self,
        texts: &[String],
        batch_size: usize,
        long: LongTexts,
    ) -> Result<(Vec<Vec<f32>>, usize)> {
        let mut long_count = 0;
        // (text index, ids) for every window of every text.
        let mut inputs: Vec<(usize, Vec<u32>)> = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            if self.tokenizer.model_len(t)? > self.max_len {
                long_count += 1;
            }
            match long {
                LongTexts::Truncate => {
                    inputs.push((i, self.tokenizer.encode_for_model(t, self.max_len)?))
                }
                LongTexts::Windows => inputs.extend(
                    self.tokenizer
                        .encode_windows(t, self.max_len)?
                        .into_iter()
                        .map(|w| (i, w)),
                ),
            }
        }
        // Inference runs on the engine, laid out from the current parameters (adapters
        // folded in): batches are ragged, so no padding is computed.
        let engine = crate::engine::Encoder::from_params(
            self.model.config.clone(),
            &self.params,
            self.lora.map(|l| l.scale()),
        )?;
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].1.len());
        let mut sums = vec![vec![0f64; self.labels.len()]; texts.len()];
        let mut weights = vec![0f64; texts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i].1.as_slice()).collect();
            let probs = engine
                .classify(&batch, None)?
                .into_iter()
                .map(|l| softmax(&l));
            for (&k, p) in chunk.iter().zip(probs) {
                let (text, ids) = (&inputs[k].0, &inputs[k].1);
                let w = ids.len() as f64;
                weights[*text] += w;
                for (s, v) in sums[*text].iter_mut().zip(p) {
                    *s += w * v;
                }
            }
        }
        let out = sums
            .into_iter()
            .zip(weights)
            .map(|(s, w)| s.into_iter().map(|v| (v / w.max(1.0)) as f32).collect())
            .collect();
        Ok((out, long_count))
    }

    /// The most probable label of each text.
    pub fn predict_labels(&self, texts: &[String], batch_size: usize) -> Result<Vec<String>> {
        Ok(self
            .predict(texts, batch_size)?
            .iter()
            .map(|p| self.best_label(p))
            .collect())
    }

    /// Score labelled examples; a gold label the model never saw is an error.
    pub fn evaluate(
        &self,
        examples: &[Example],
        batch_size: usize,
    ) -> Result<ClassificationReport> {
        Ok(self
            .evaluate_long(examples, batch_size, LongTexts::Truncate)?
            .0)
    }

    /// [`Classifier::evaluate`] with a choice for long texts (see
    /// [`Classifier::predict_long`]); also returns how many texts were long.
    pub fn evaluate_long(
        &self,
        examples: &[Example],
        batch_size: usize,
        long: LongTexts,
    ) -> Result<(ClassificationReport, usize)> {
        for (i, e) in examples.iter().enumerate() {
            if !self.labels.contains(&e.label) {
                return Err(Error::invalid(
                    "data",
                    format!(
                        "example {}: label {:?} was never seen in training (the model knows {})",
                        i + 1,
                        e.label,
                        self.labels.join(", ")
                    ),
                ));
            }
        }
        let texts: Vec<String> = examples.iter().map(|e| e.text.clone()).collect();
        let gold: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
        let (probs, long_count) = self.predict_long(&texts, batch_size, long)?;
        let pred: Vec<String> = probs.iter().map(|p| self.best_label(p)).collect();
        Ok((classification_report(&gold, &pred)?, long_count))
    }

    /// The label of the highest probability.
    pub fn best_label(&self, p: &[f32]) -> String {
        let best = (0..p.len())
            .max_by(|&a, &b| p[a].total_cmp(&p[b]))
            .unwrap_or(0);
        self.labels[best].clone()
    }

    /// Save as an HF `BertForSequenceClassification` folder (encoder names under
    /// `bert.`). LoRA adapters are merged, or written to `adapter_model.safetensors`
    /// with `adapter_config.json` when `merge` is false.
    pub fn save(&self, dir: &Path, merge: bool) -> Result<()> {
        let mut tensors = BTreeMap::new();
        for (name, t) in self.params.tensors() {
            let name = if is_head(&name) || self.prefix == "bert." {
                name
            } else {
                format!("bert.{name}")
            };
            tensors.insert(name, t);
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match self.lora {
            Some(l) if !merge => {
                let adapters: BTreeMap<String, Tensor> = tensors
                    .iter()
                    .filter(|(k, _)| is_lora(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                tensors.retain(|k, _| !is_lora(k));
                write_safetensors(&dir.join(ADAPTER_WEIGHTS), &adapters)?;
                let mut cfg = serde_json::to_value(l).unwrap();
                cfg["target_modules"] = serde_json::json!(LORA_TARGETS);
                write_json(&dir.join(ADAPTER_CONFIG), &cfg)?;
            }
            Some(l) => merge_adapters(&mut tensors, l.scale())?,
            None => {}
        }
        write_safetensors(&dir.join(checkpoint::WEIGHTS), &tensors)?;
        self.tokenizer.save(&dir.join(checkpoint::TOKENIZER))?;
        write_json(
            &dir.join("attn_classifier.json"),
            &serde_json::json!({ "max_len": self.max_len }),
        )?;
        let mut config = self.model.config.clone().with_labels(&self.labels);
        config.pad_token_id = Some(self.pad);
        write_json(&dir.join(checkpoint::CONFIG), &config.to_hf_json())
    }
}

/// Where a classifier starts.
pub enum Start {
    /// A small encoder and a tokenizer trained on the training texts.
    Scratch,
    /// A pretrained HF BERT folder (e.g. all-MiniLM-L6-v2).
    Pretrained(PathBuf),
}

#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    pub seconds: f64,
    pub best: bool,
}

pub enum ClassifyEvent<'a> {
    Step {
        step: usize,
        total: usize,
        loss: f64,
    },
    Epoch(&'a EpochReport),
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassifySummary {
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub total_params: usize,
    pub trainable_params: usize,
    pub train_seconds: f64,
    pub epochs: Vec<EpochReport>,
}

/// Sorted distinct labels of the training set.
pub fn label_set(train: &[Example]) -> Vec<String> {
    let mut labels: Vec<String> = train.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

fn build(
    cfg: &ClassifyConfig,
    start: &Start,
    train: &[Example],
    labels: &[String],
    device: &Device,
) -> Result<Classifier> {
    let mut rng = Rng::new(cfg.seed);
    match start {
        Start::Scratch => {
            if cfg.lora.is_some() {
                return Err(Error::invalid(
                    "lora-rank",
                    "LoRA adapts a pretrained --model; a model trained from scratch trains fully",
                ));
            }
            let corpus: String = train.iter().map(|e| format!("{}\n", e.text)).collect();
            // A classifier meets characters its training text lacked: unknown, not an error.
            let mut tokenizer = if cfg.tokenizer == "char" {
                Tokenizer::train_char_with_unk(&corpus)?
            } else {
                crate::train::build_tokenizer(&cfg.tokenizer, &corpus)?
            };
            let pad = tokenizer.add_classifier_specials()?;
            let mut config = BertConfig::classifier(
                tokenizer.vocab_size(),
                cfg.hidden,
                cfg.layers,
                cfg.heads,
                cfg.max_len,
                labels,
            );
            config.hidden_dropout_prob = cfg.dropout;
            config.attention_probs_dropout_prob = cfg.dropout;
            config.pad_token_id = Some(pad);
            let mut pb = ParamBuilder::init(rng.fork(), device);
            let model = Bert::new(config, &mut pb, "bert.", true, Some(labels.len()))?;
            Ok(Classifier {
                model,
                params: pb.finish()?,
                tokenizer,
                labels: labels.to_vec(),
                max_len: cfg.max_len,
                pad,
                prefix: "bert.".into(),
                lora: None,
            })
        }
        Start::Pretrained(dir) => {
            let cfg_path = dir.join(checkpoint::CONFIG);
            let value = checkpoint::read_config(dir)?;
            if value.get("model_type").and_then(|v| v.as_str()) != Some("bert") {
                return Err(Error::bad_file(
                    &cfg_path,
                    "fine-tuning needs a BERT model (model_type \"bert\")",
                ));
            }
            let mut config: BertConfig = serde_json::from_value(value)
                .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid BERT config: {e}")))?;
            config = config.with_labels(labels);
            config
                .validate()
                .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
            let tensors = read_weights(dir, device)?;
            let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
                "bert."
            } else {
                ""
            };
            // A new head (and adapters) on top of the pretrained encoder; any head the
            // checkpoint had is replaced because the labels are new.
            let mut tensors = tensors;
            tensors.retain(|k, _| !is_head(k));
            let lora = cfg.lora;
            let mut pb = ParamBuilder::load(tensors, device).init_missing(rng.fork(), move |n| {
                is_head(n) || is_lora(n) || n.contains("pooler.")
            });
            if lora.is_some() {
                pb = pb.freeze(|n| !(is_lora(n) || is_head(n)));
            }
            let model = Bert::with_lora(config, &mut pb, prefix, true, Some(labels.len()), lora)?;
            let params = pb
                .finish()
                .map_err(|e| Error::bad_file(dir.join(checkpoint::WEIGHTS), e.to_string()))?;
            let mut tokenizer = Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
            let max_len = cfg.max_len.min(model.config.max_position_embeddings);
            let pad = model.config.pad_token_id.unwrap_or(0);
            if tokenizer.encode_for_model("x", max_len)?.len() < 2 {
                // No [CLS]/[SEP] post-processor in this tokenizer: add ours.
                tokenizer.add_classifier_specials()?;
            }
            Ok(Classifier {
                model,
                params,
                tokenizer,
                labels: labels.to_vec(),
                max_len,
                pad,
                prefix: prefix.into(),
                lora,
            })
        }
    }
}

/// Train a classifier on `train`, choosing the epoch with the best validation accuracy
/// (saved to `out`).
pub fn train(
    cfg: &ClassifyConfig,
    start: &Start,
    train: &[Example],
    val: &[Example],
    out: &Path,
    device: &Device,
    on_event: &mut dyn FnMut(ClassifyEvent),
) -> Result<ClassifySummary> {
    cfg.validate()?;
    if train.is_empty() || val.is_empty() {
        return Err(Error::invalid(
            "data",
            "training and validation sets must both be non-empty",
        ));
    }
    let labels = label_set(train);
    if labels.len() < 2 {
        return Err(Error::invalid(
            "data",
            format!(
                "only one label ({:?}) in the training data: nothing to classify",
                labels[0]
            ),
        ));
    }
    let clf = build(cfg, start, train, &labels, device)?;
    // Trainable: everything for full training; adapters and head for LoRA.
    let trainable_params = if cfg.lora.is_some() {
        clf.params.filter(|n| is_lora(n) || is_head(n)).count()
    } else {
        clf.params.count()
    };
    // The steps run on the engine's encoder (forward, backward, AdamW in flat buffers);
    // the graph model keeps the weights for evaluation and saving, written from the
    // engine's at the end of each epoch.
    let mut native = NativeEncoder::from_params(clf.model.config.clone(), &clf.params, cfg.lora)?;
    let opt = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: cfg.weight_decay,
    };
    let label_id: HashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i as u32))
        .collect();
    let train_texts: Vec<String> = train.iter().map(|e| e.text.clone()).collect();
    let encoded = clf.encode(&train_texts)?;
    let targets: Vec<u32> = train.iter().map(|e| label_id[e.label.as_str()]).collect();
    let lengths: Vec<usize> = encoded.iter().map(|e| e.len()).collect();
    for (i, e) in val.iter().enumerate() {
        if !label_id.contains_key(e.label.as_str()) {
            return Err(Error::invalid(
                "valid",
                format!(
                    "validation example {}: label {:?} does not occur in the training data",
                    i + 1,
                    e.label
                ),
            ));
        }
    }
    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let warmup = (total as f64 * cfg.warmup_ratio).round() as usize;
    let lr_at = |s: usize| -> f64 {
        if s < warmup {
            cfg.lr * (s + 1) as f64 / warmup as f64
        } else {
            cfg.lr * (total - s) as f64 / (total - warmup).max(1) as f64
        }
    };
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let metrics_path = out.join("metrics.jsonl");
    let mut metrics =
        std::fs::File::create(&metrics_path).map_err(|e| Error::io(&metrics_path, e))?;
    let mut step = 0;
    let mut reports = vec![];
    let mut best: Option<(usize, f64)> = None;
    let mut train_seconds = 0.0;
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut loss_sum = 0.0;
        let batches = super::length_batches(&lengths, cfg.batch_size, &mut rng);
        for b in &batches {
            let ids: Vec<&[u32]> = b.iter().map(|&i| encoded[i].as_slice()).collect();
            let y: Vec<u32> = b.iter().map(|&i| targets[i]).collect();
            native.zero_grads();
            let l = native.forward_backward(&ids, None, &y, Some(rng.next_u64()))?;
            if !l.is_finite() {
                return Err(Error::invalid(
                    "training",
                    format!("the loss became {l} at step {step}; lower --lr"),
                ));
            }
            loss_sum += l;
            // Clipped to a global norm of grad_clip.
            let norm = native.grad_norm();
            let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
                cfg.grad_clip / (norm + 1e-6)
            } else {
                1.0
            };
            native.adamw_step(&opt, lr_at(step), scale);
            step += 1;
            on_event(ClassifyEvent::Step {
                step,
                total,
                loss: l,
            });
        }
        train_seconds += t0.elapsed().as_secs_f64();
        native.write_into(&clf.params)?;
        let report = clf.evaluate(val, 64)?;
        let is_best = best.is_none_or(|(_, acc)| report.accuracy > acc);
        if is_best {
            best = Some((epoch, report.accuracy));
            clf.save(out, cfg.merge_lora)?;
        }
        let r = EpochReport {
            epoch,
            train_loss: loss_sum / batches.len() as f64,
            val_accuracy: report.accuracy,
            val_macro_f1: report.macro_avg.f1,
            seconds: t0.elapsed().as_secs_f64(),
            best: is_best,
        };
        writeln!(metrics, "{}", serde_json::to_string(&r).unwrap())
            .map_err(|e| Error::io(&metrics_path, e))?;
        on_event(ClassifyEvent::Epoch(&r));
        reports.push(r);
    }
    let (best_epoch, best_val_accuracy) = best.unwrap();
    Ok(ClassifySummary {
        best_epoch,
        best_val_accuracy,
        total_params: clf.params.count(),
        trainable_params,
        train_seconds,
        epochs: reports,
    })
}
