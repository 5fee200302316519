//! Text classification with a BERT-style encoder and a linear head on the pooled
//! output: training from scratch (with a tokenizer trained on the training text),
//! fine-tuning a pretrained HF BERT fully or with LoRA adapters, prediction and
//! evaluation. Texts are batched by length, padded, and masked, so padding never
//! changes a text's logits.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_json, write_json};
use crate::data::labelled::Example;
use crate::engine::encoder::{fold_adapters, read_bert};
use crate::engine::io::{read_plain, write_plain, Plain};
use crate::engine::Encoder;
use crate::metrics::{classification_report, ClassificationReport};
use crate::models::bert::{BertConfig, EncoderFamily, LoraConfig};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::encoder::NativeEncoder;
use crate::train::fit::{Event, ExamplesState, Job, Passes, Plan, Run, Trainable};
use crate::train::optimizer::AdamWConfig;
use crate::{Error, Result};

pub use crate::train::fit::Begin;

pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The classifier's own settings (its length limit).
const CLASSIFIER_FILE: &str = "attn_classifier.json";

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
        if !self.hidden.is_multiple_of(self.heads) {
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
    pub model: Encoder,
    pub tokenizer: Tokenizer,
    pub labels: Vec<String>,
    pub max_len: usize,
}

fn is_lora(name: &str) -> bool {
    name.contains(".lora_A.") || name.contains(".lora_B.")
}

/// Probabilities of logits.
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
    let e: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// The LoRA config saved beside a folder's adapters, if it has any.
fn read_adapter_config(dir: &Path) -> Result<Option<LoraConfig>> {
    if !dir.join(ADAPTER_WEIGHTS).is_file() {
        return Ok(None);
    }
    let path = dir.join(ADAPTER_CONFIG);
    serde_json::from_value(read_json(&path)?)
        .map(Some)
        .map_err(|e| Error::bad_file(&path, format!("not a valid adapter config: {e}")))
}

/// A folder's adapters (canonical names, BERT's without `bert.`).
pub(crate) fn read_adapters(dir: &Path, family: EncoderFamily) -> Result<Plain> {
    Ok(read_plain(&dir.join(ADAPTER_WEIGHTS))?
        .into_iter()
        .filter_map(|(k, v)| Some((family.canonical(&k)?, v)))
        .collect())
}

impl Classifier {
    /// Load a classifier folder written by [`train`] (or any HF
    /// `BertForSequenceClassification` folder); LoRA adapters saved beside the weights
    /// are folded in.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(checkpoint::CONFIG);
        let (config, mut tensors) = read_bert(dir, |_| true)?;
        if !config.is_classifier() {
            return Err(Error::bad_file(
                &cfg_path,
                "not a sequence classifier (architectures lacks a …ForSequenceClassification)",
            ));
        }
        if let Some(lora) = read_adapter_config(dir)? {
            tensors.extend(read_adapters(dir, config.family)?);
            fold_adapters(&mut tensors, lora.scale())
                .map_err(|e| Error::bad_file(dir.join(ADAPTER_WEIGHTS), e.to_string()))?;
        }
        let model = Encoder::from_plain(config, &dir.join(checkpoint::WEIGHTS), tensors)?;
        if !model.has_classifier() {
            return Err(Error::bad_file(
                dir.join(checkpoint::WEIGHTS),
                "no pooler and classification head (pooler.dense, classifier)",
            ));
        }
        let tokenizer = Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
        let limit = model.config.max_len();
        let max_len = read_json(&dir.join(CLASSIFIER_FILE))
            .ok()
            .and_then(|v| v["max_len"].as_u64())
            .map_or(limit, |v| v as usize)
            .min(limit);
        Ok(Classifier {
            labels: model.config.label_names(),
            model,
            tokenizer,
            max_len,
        })
    }

    /// Token ids of each text, truncated to `max_len`.
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts
            .iter()
            .map(|t| self.tokenizer.encode_for_model(t, self.max_len))
            .collect()
    }

    /// Logits `[labels]` of each encoded text (a ragged batch: no padding is computed).
    pub fn logits(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.model.classify(batch, None)
    }

    /// Class probabilities for each text, batched by length (texts longer than
    /// `max_len` are truncated).
    pub fn predict(&self, texts: &[String], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        Ok(self.predict_long(texts, batch_size, LongTexts::Truncate)?.0)
    }

    /// Use up to `max_len` tokens per text (at most the model's position limit).
    pub fn set_max_len(&mut self, max_len: usize) -> Result<()> {
        let limit = self.model.config.max_len();
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
        // Batches are ragged: no padding is computed.
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| inputs[i].1.len());
        let mut sums = vec![vec![0f64; self.labels.len()]; texts.len()];
        let mut weights = vec![0f64; texts.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| inputs[i].1.as_slice()).collect();
            let probs = self.logits(&batch)?.into_iter().map(|l| softmax(&l));
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
}

/// Where a classifier starts.
pub enum Start {
    /// A small encoder and a tokenizer trained on the training texts.
    Scratch,
    /// A pretrained HF BERT folder (e.g. all-MiniLM-L6-v2).
    Pretrained(PathBuf),
}

/// One evaluation: at the end of each epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub step: usize,
    pub train_loss: f64,
    pub val_accuracy: f64,
    pub val_macro_f1: f64,
    /// Seconds since the previous evaluation (training and evaluating).
    pub seconds: f64,
    pub best: bool,
}

pub type ClassifyEvent<'a> = Event<'a, EpochReport>;

#[derive(Debug, Clone, Serialize)]
pub struct ClassifySummary {
    pub best_epoch: usize,
    pub best_val_accuracy: f64,
    pub total_params: usize,
    pub trainable_params: usize,
    /// Seconds in training steps over the whole run (resumed parts included).
    pub train_seconds: f64,
    /// The epochs evaluated by this call (a resumed run reports those after its
    /// checkpoint).
    pub epochs: Vec<EpochReport>,
}

/// Sorted distinct labels of the training set.
pub fn label_set(train: &[Example]) -> Vec<String> {
    let mut labels: Vec<String> = train.iter().map(|e| e.label.clone()).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// The model to train and the tokenizer, for a new run.
fn build(
    cfg: &ClassifyConfig,
    start: &Start,
    train: &[Example],
    labels: &[String],
) -> Result<(NativeEncoder, Tokenizer)> {
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
            Ok((NativeEncoder::init(config, rng.next_u64())?, tokenizer))
        }
        Start::Pretrained(dir) => {
            let model = NativeEncoder::load_with_head(dir, labels, rng.next_u64(), cfg.lora)?;
            let mut tokenizer = Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
            let max_len = cfg.max_len.min(model.config.max_len());
            if tokenizer.encode_for_model("x", max_len)?.len() < 2 {
                // No [CLS]/[SEP] post-processor in this tokenizer: add ours.
                tokenizer.add_classifier_specials()?;
            }
            Ok((model, tokenizer))
        }
    }
}

/// Save `model` as an HF `BertForSequenceClassification` folder (encoder names under
/// `bert.`). LoRA adapters are folded into the weights, or with `merge` false written
/// to `adapter_model.safetensors` with `adapter_config.json`.
fn save_classifier(
    dir: &Path,
    model: &NativeEncoder,
    tokenizer: &Tokenizer,
    labels: &[String],
    max_len: usize,
    merge: bool,
) -> Result<()> {
    let family = model.config.family;
    let named = |t: Plain| -> Plain {
        t.into_iter()
            .map(|(k, v)| (family.hf_name(&k), v))
            .collect()
    };
    let mut tensors = model.tensors();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    match model.lora() {
        Some(l) if !merge => {
            let adapters: Plain = tensors
                .iter()
                .filter(|(k, _)| is_lora(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            tensors.retain(|k, _| !is_lora(k));
            write_plain(&dir.join(ADAPTER_WEIGHTS), &named(adapters))?;
            let mut cfg = serde_json::to_value(l).unwrap();
            cfg["target_modules"] = serde_json::json!(family.lora_modules());
            write_json(&dir.join(ADAPTER_CONFIG), &cfg)?;
        }
        Some(l) => fold_adapters(&mut tensors, l.scale())?,
        None => {}
    }
    if merge || model.lora().is_none() {
        // A folder reused for a run without separate adapters must not keep old ones.
        for f in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
            let p = dir.join(f);
            if p.is_file() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    write_plain(&dir.join(checkpoint::WEIGHTS), &named(tensors))?;
    tokenizer.save(&dir.join(checkpoint::TOKENIZER))?;
    write_json(
        &dir.join(CLASSIFIER_FILE),
        &serde_json::json!({ "max_len": max_len }),
    )?;
    let config = model.config.clone().with_labels(labels);
    write_json(&dir.join(checkpoint::CONFIG), &config.to_hf_json())
}

type ClassifyState = ExamplesState<ClassifyConfig>;

const WRITTEN_BY: &str = "attn classify train";

/// The config and data description of the run saved in `out/checkpoint`, for a caller
/// that resumes it (and has to read the same data again).
pub fn saved_run(out: &Path) -> Result<(ClassifyConfig, serde_json::Value)> {
    let st = ClassifyState::saved(out, WRITTEN_BY)?;
    Ok((st.config, st.data))
}

/// The classification task as the training loop runs it.
struct ClassifyJob<'a> {
    cfg: &'a ClassifyConfig,
    model: NativeEncoder,
    /// Tokenizer, labels and length limit; its encoder is refreshed for evaluations.
    clf: Classifier,
    encoded: Vec<Vec<u32>>,
    targets: Vec<u32>,
    lengths: Vec<usize>,
    val: &'a [Example],
    state: ClassifyState,
    steps_per_epoch: usize,
    total: usize,
    warmup: usize,
    since: Instant,
}

impl Job for ClassifyJob<'_> {
    type Model = NativeEncoder;
    type Eval = EpochReport;

    fn model(&mut self) -> &mut NativeEncoder {
        &mut self.model
    }

    /// Linear warm-up, then linear decay to zero at the last step.
    fn lr(&self, s: usize) -> f64 {
        let (lr, warmup, total) = (self.cfg.lr, self.warmup, self.total);
        if s < warmup {
            lr * (s + 1) as f64 / warmup as f64
        } else {
            lr * (total - s) as f64 / (total - warmup).max(1) as f64
        }
    }

    fn micro_batch(&mut self, rng: &mut Rng) -> Result<(f64, usize)> {
        let b = self
            .state
            .passes
            .next(&self.lengths, self.cfg.batch_size, rng);
        let ids: Vec<&[u32]> = b.iter().map(|&i| self.encoded[i].as_slice()).collect();
        let y: Vec<u32> = b.iter().map(|&i| self.targets[i]).collect();
        let tokens = ids.iter().map(|s| s.len()).sum();
        let loss = self
            .model
            .forward_backward(&ids, None, &y, Some(rng.next_u64()))?;
        Ok((loss, tokens))
    }

    fn evaluate(&mut self, step: usize, train_loss: f64) -> Result<EpochReport> {
        let lora = self.model.lora().map(|l| l.scale());
        self.clf.model =
            Encoder::from_tensors(self.model.config.clone(), self.model.tensors(), lora)?;
        let report = self.clf.evaluate(self.val, 64)?;
        let seconds = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        Ok(EpochReport {
            epoch: step.div_ceil(self.steps_per_epoch),
            step,
            train_loss,
            val_accuracy: report.accuracy,
            val_macro_f1: report.macro_avg.f1,
            seconds,
            best: false,
        })
    }

    fn score(e: &EpochReport) -> Option<f64> {
        Some(e.val_accuracy)
    }

    fn mark_best(e: &mut EpochReport, best: bool) {
        e.best = best;
    }

    fn save_model(&mut self, dir: &Path, resumable: bool) -> Result<()> {
        // A checkpoint keeps adapters apart, to train them on.
        let merge = self.cfg.merge_lora && !resumable;
        save_classifier(
            dir,
            &self.model,
            &self.clf.tokenizer,
            &self.clf.labels,
            self.clf.max_len,
            merge,
        )
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap()
    }
}

/// Train a classifier on `train`, evaluating after every epoch; the epoch with the best
/// validation accuracy is saved to `out`, and each epoch's state to `out/checkpoint`,
/// from which [`Begin::Resume`] continues a killed run.
pub fn train(
    cfg: &ClassifyConfig,
    start: &Start,
    train: &[Example],
    val: &[Example],
    out: &Path,
    begin: Begin,
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
    for (i, e) in val.iter().enumerate() {
        if labels.binary_search(&e.label).is_err() {
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
    let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let plan = Plan {
        max_steps: total,
        eval_every: steps_per_epoch,
        log_every: 0,
        eval_at_start: false,
        accum: 1,
        clip: cfg.grad_clip,
        adamw: AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    };
    let (model, tokenizer, state, run) = match begin {
        Begin::New { data } => {
            let (model, tokenizer) = build(cfg, start, train, &labels)?;
            let state = ClassifyState {
                config: cfg.clone(),
                labels: labels.clone(),
                n_train: train.len(),
                n_val: val.len(),
                passes: Passes::default(),
                data: data.clone(),
            };
            let run = Run::start(out, plan, Rng::new(cfg.seed ^ 0x5eed))?;
            (model, tokenizer, state, run)
        }
        Begin::Resume => {
            let (ckpt, state, reopened) =
                ClassifyState::reopen(out, WRITTEN_BY, train.len(), val.len(), &labels)?;
            let mut model = NativeEncoder::load_adapted(&ckpt, cfg.lora)?;
            let tokenizer = Tokenizer::from_file(&ckpt.join(checkpoint::TOKENIZER))?;
            let run = reopened.restore(&ckpt, &mut model, plan)?;
            (model, tokenizer, state, run)
        }
    };
    let max_len = cfg.max_len.min(model.config.max_len());
    let clf = Classifier {
        model: Encoder::from_tensors(
            model.config.clone(),
            model.tensors(),
            model.lora().map(|l| l.scale()),
        )?,
        tokenizer,
        labels: labels.clone(),
        max_len,
    };
    let texts: Vec<String> = train.iter().map(|e| e.text.clone()).collect();
    let encoded = clf.encode(&texts)?;
    let targets: Vec<u32> = train
        .iter()
        .map(|e| labels.binary_search(&e.label).unwrap() as u32)
        .collect();
    let lengths: Vec<usize> = encoded.iter().map(|e| e.len()).collect();
    let (total_params, trainable_params) = (model.count(), model.trainable_count());
    let mut job = ClassifyJob {
        cfg,
        model,
        clf,
        encoded,
        targets,
        lengths,
        val,
        state,
        steps_per_epoch,
        total,
        warmup: (total as f64 * cfg.warmup_ratio).round() as usize,
        since: Instant::now(),
    };
    let mut run = run;
    let mut epochs = Vec::new();
    run.fit(&mut job, &mut |e| {
        if let Event::Eval(r) = &e {
            epochs.push((*r).clone());
        }
        on_event(e)
    })?;
    let p = &run.progress;
    Ok(ClassifySummary {
        best_epoch: p.best_step.div_ceil(steps_per_epoch),
        best_val_accuracy: p.best.unwrap_or(f64::NAN),
        total_params,
        trainable_params,
        train_seconds: p.train_seconds,
        epochs,
    })
}
