//! Machine translation: parallel data, a shared byte-level BPE vocabulary, an
//! encoder-decoder Transformer trained with label smoothing and a warm-up schedule,
//! validation loss and BLEU during training, and greedy or beam-search decoding.
//! Output folders are HF `MarianMTModel` folders with a `tokenizer.json`.
//!
//! Why one file of this length: the task is what `translate`, `summarize` and
//! `pretrain` configure (their data, vocabulary, model, metric and checkpoint folder),
//! so its reading of pairs, its configuration's validation, the translator and the
//! trainer's job are kept together.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_json, write_json};
use crate::data::{normalize, read_text, Encoding};
use crate::engine::Seq2Seq;
use crate::generate::beam::{translate_batch as decode_batch, BeamConfig};
use crate::metrics::bleu::{corpus_bleu, BleuConfig};
use crate::metrics::rouge::{
    is_zh_char, score_corpus, token_count, RougeConfig, RougeTokenize, MAX_LCS_CELLS,
};
use crate::metrics::sacre_tokenize::SacreTokenizer;
use crate::models::marian::MarianConfig;
use crate::models::t5::T5Config;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::encdec::{EncDecModel, PairTrainer};
use crate::train::fit::{Event, ExamplesState, Job, Passes, Plan, Run};
use crate::train::optimizer::AdamWConfig;

pub use crate::train::fit::Begin;
use crate::{Error, Result};

pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";

#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub src: String,
    pub tgt: String,
}

/// Read `source<TAB>target[<TAB>ignored]` lines (Tatoeba's layout). Lines with an empty
/// side are skipped and counted.
pub fn read_pairs_tsv(path: &Path, encoding: Encoding) -> Result<(Vec<Pair>, usize)> {
    let text = read_text(path, encoding)?;
    let mut pairs = vec![];
    let mut skipped = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            skipped += 1;
            continue;
        }
        let mut parts = line.split('\t');
        let (Some(src), Some(tgt)) = (parts.next(), parts.next()) else {
            return Err(Error::bad_file(
                path,
                format!("line {}: expected source<TAB>target", i + 1),
            ));
        };
        push_pair(&mut pairs, &mut skipped, src, tgt);
    }
    finish(path, pairs, skipped)
}

fn push_pair(pairs: &mut Vec<Pair>, skipped: &mut usize, src: &str, tgt: &str) {
    let (src, tgt) = (
        normalize(src).trim().to_string(),
        normalize(tgt).trim().to_string(),
    );
    if src.is_empty() || tgt.is_empty() {
        *skipped += 1;
    } else {
        pairs.push(Pair { src, tgt });
    }
}

fn finish(path: &Path, pairs: Vec<Pair>, skipped: usize) -> Result<(Vec<Pair>, usize)> {
    if pairs.is_empty() {
        return Err(Error::bad_file(path, "no sentence pairs"));
    }
    Ok((pairs, skipped))
}

/// Read two parallel files, one sentence per line; their line counts must agree.
pub fn read_parallel(src: &Path, tgt: &Path, encoding: Encoding) -> Result<(Vec<Pair>, usize)> {
    let (a, b) = (read_text(src, encoding)?, read_text(tgt, encoding)?);
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    if la.len() != lb.len() {
        return Err(Error::bad_file(
            tgt,
            format!(
                "{} lines, but {} has {}: source and target must be parallel",
                lb.len(),
                src.display(),
                la.len()
            ),
        ));
    }
    let mut pairs = vec![];
    let mut skipped = 0;
    for (s, t) in la.iter().zip(&lb) {
        push_pair(&mut pairs, &mut skipped, s, t);
    }
    finish(src, pairs, skipped)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranslateConfig {
    pub d_model: usize,
    pub layers: usize,
    pub heads: usize,
    pub ffn: usize,
    /// Longest sentence in tokens (end-of-sentence included); longer ones are truncated.
    pub max_len: usize,
    pub dropout: f32,
    /// Shared byte-level BPE vocabulary size.
    pub vocab_size: usize,
    pub label_smoothing: f64,
    /// Peak learning rate, reached after `warmup` steps, then ∝ 1/√step.
    pub lr: f64,
    pub warmup: usize,
    pub max_steps: usize,
    pub batch_size: usize,
    pub grad_clip: f64,
    pub eval_interval: usize,
    /// Validation pairs decoded for BLEU at each evaluation.
    pub bleu_sample: usize,
    pub beam: usize,
    pub seed: u64,
    /// sacreBLEU tokenizer for the validation BLEU: 13a, intl, zh, char, none, or
    /// "auto" (zh when the validation targets contain Chinese characters, else 13a).
    #[serde(default = "auto")]
    pub bleu_tokenize: String,
    /// The model family trained from scratch: `marian` (post-LN, sinusoidal positions)
    /// or `t5` (v1.1: pre-RMS-norm, relative positions, gated GELU).
    #[serde(default = "marian")]
    pub arch: String,
    /// The vocabulary built from the training text when training from scratch: `bpe`
    /// (byte-level BPE of `vocab_size` tokens) or `char` (every character of the
    /// training text a token: Chinese, for instance).
    #[serde(default = "bpe")]
    pub vocab: String,
    /// What chooses the best checkpoint: `bleu` (sacreBLEU of beam search on the first
    /// `bleu_sample` validation pairs), `rouge` (ROUGE-L F1, Chinese scored by
    /// characters) or `loss` (the validation loss alone).
    #[serde(default = "bleu")]
    pub metric: String,
    /// Fine-tune this model folder (its tokenizer and weights) instead of a new model.
    #[serde(default)]
    pub init: Option<std::path::PathBuf>,
    /// Span corruption (T5's objective) on the sources instead of pairs: the fraction
    /// of tokens masked and the mean length of a masked span.
    #[serde(default)]
    pub span_corruption: Option<(f64, f64)>,
    /// A new model's vocabulary read from this `tokenizer.json` instead of built from
    /// the training text (`vocab` is then unused): two runs that should share one
    /// vocabulary, such as a pre-training and a model trained from scratch to compare
    /// it with. The family's special tokens are added when it lacks them.
    #[serde(default)]
    pub tokenizer: Option<std::path::PathBuf>,
}

fn auto() -> String {
    "auto".into()
}
fn marian() -> String {
    "marian".into()
}
fn bpe() -> String {
    "bpe".into()
}
fn bleu() -> String {
    "bleu".into()
}

/// The tokenizer "auto" picks for reference texts: zh when any contains a CJK ideograph.
pub fn auto_bleu_tokenizer(refs: &[String]) -> SacreTokenizer {
    let cjk = |c: char| matches!(c as u32, 0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF);
    if refs.iter().any(|r| r.chars().any(cjk)) {
        SacreTokenizer::Zh
    } else {
        SacreTokenizer::T13a
    }
}

impl Default for TranslateConfig {
    fn default() -> Self {
        TranslateConfig {
            d_model: 256,
            layers: 3,
            heads: 4,
            ffn: 1024,
            max_len: 64,
            dropout: 0.1,
            vocab_size: 8000,
            label_smoothing: 0.1,
            lr: 7e-4,
            warmup: 1000,
            max_steps: 10_000,
            batch_size: 64,
            grad_clip: 1.0,
            eval_interval: 1000,
            bleu_sample: 200,
            beam: 1,
            seed: 7,
            bleu_tokenize: auto(),
            arch: marian(),
            vocab: bpe(),
            metric: bleu(),
            init: None,
            span_corruption: None,
            tokenizer: None,
        }
    }
}

impl TranslateConfig {
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("d-model", self.d_model),
            ("layers", self.layers),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("max-len", self.max_len),
            ("batch-size", self.batch_size),
            ("max-steps", self.max_steps),
            ("eval-interval", self.eval_interval),
            ("beam", self.beam),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        if !self.d_model.is_multiple_of(self.heads) || !self.d_model.is_multiple_of(2) {
            return Err(Error::invalid(
                "heads",
                format!(
                    "d-model {} must be even and divisible by heads {}",
                    self.d_model, self.heads
                ),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "lr",
                format!("{} must be a positive number", self.lr),
            ));
        }
        if self.bleu_tokenize != "auto" {
            self.bleu_tokenize.parse::<SacreTokenizer>()?;
        }
        for (name, v, ok) in [
            ("arch", &self.arch, &["marian", "t5"][..]),
            ("vocab", &self.vocab, &["bpe", "char"][..]),
            ("metric", &self.metric, &["bleu", "rouge", "loss"][..]),
        ] {
            if !ok.contains(&v.as_str()) {
                return Err(Error::invalid(
                    name,
                    format!("{v:?} is not one of {}", ok.join(", ")),
                ));
            }
        }
        if self.init.is_some() && self.tokenizer.is_some() {
            return Err(Error::invalid(
                "tokenizer",
                "a fine-tuned model keeps its folder's tokenizer; give either a model or a tokenizer",
            ));
        }
        if let Some((density, span)) = self.span_corruption {
            if !(density > 0.0 && density < 1.0 && span >= 1.0 && span.is_finite()) {
                return Err(Error::invalid(
                    "span corruption",
                    format!(
                        "noise density {density} must be in (0, 1) and mean span {span} at least 1"
                    ),
                ));
            }
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::invalid(
                "label-smoothing",
                format!("{} is not in [0, 1)", self.label_smoothing),
            ));
        }
        crate::guard::probability("--dropout", self.dropout as f64)?;
        crate::train::check_bpe_size("--vocab-size", &self.vocab_size.to_string())?;
        // Before anything is read or written: the model with its gradients and AdamW
        // moments (about 8 floats per parameter, as in LM training), and one batch's
        // activations (encoder, decoder with cross-attention, and the logits).
        let (d, l, f, v, t, b, h) = (
            self.d_model as f64,
            self.layers as f64,
            self.ffn as f64,
            self.vocab_size as f64,
            self.max_len as f64,
            self.batch_size as f64,
            self.heads as f64,
        );
        let params =
            v * d + t * d + l * (4.0 * d * d + 2.0 * d * f) + l * (8.0 * d * d + 2.0 * d * f);
        let parts = [
            (
                "--vocab-size × --d-model (the embeddings)",
                32.0 * (v * d + t * d),
            ),
            (
                "--layers × --d-model (the encoder and decoder blocks)",
                32.0 * (params - v * d - t * d),
            ),
            (
                "--batch-size × --max-len × --layers (one batch's activations)",
                4.0 * b * t * (2.0 * l * (20.0 * d + 4.0 * f + 4.0 * h * t) + 3.0 * v),
            ),
        ];
        let total: f64 = parts.iter().map(|p| p.1).sum();
        let what = parts
            .iter()
            .copied()
            .fold(("", f64::MIN), |a, p| if p.1 > a.1 { p } else { a })
            .0;
        crate::guard::check_memory(what, total)?;
        Ok(())
    }
}

/// A translation model for decoding (on the engine), its tokenizer and the longest
/// source it takes.
pub struct Translator {
    pub model: Seq2Seq,
    pub tokenizer: Tokenizer,
    pub max_len: usize,
    /// Tokens never generated: the folder's one-token `bad_words_ids` (`<pad>` in
    /// Marian models).
    pub suppress: Vec<u32>,
    /// The folder's generation config forces end-of-sentence at the length limit
    /// (`forced_eos_token_id`, as Marian's do; T5's do not).
    pub forced_eos: bool,
}

/// Whether a folder's generation config (or, without one, its config) names a
/// `forced_eos_token_id`.
fn folder_forces_eos(dir: &Path) -> bool {
    [checkpoint::GENERATION_CONFIG, checkpoint::CONFIG]
        .iter()
        .find_map(|f| read_json(&dir.join(f)).ok())
        .is_some_and(|v| v["forced_eos_token_id"].is_u64())
}

/// The one-token `bad_words_ids` of a folder's generation config.
fn folder_suppress(dir: &Path) -> Vec<u32> {
    let Ok(v) = read_json(&dir.join(checkpoint::GENERATION_CONFIG)) else {
        return Vec::new();
    };
    v["bad_words_ids"]
        .as_array()
        .map(|words| {
            words
                .iter()
                .filter_map(|w| match w.as_array().map(|a| a.as_slice()) {
                    Some([id]) => id.as_u64().map(|id| id as u32),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `max_len` a translation folder records (`attn_translate.json`), else the model's
/// positions.
fn folder_max_len(dir: &Path, limit: usize) -> usize {
    read_json(&dir.join("attn_translate.json"))
        .ok()
        .and_then(|v| v["max_len"].as_u64())
        .map(|v| v as usize)
        .unwrap_or(limit)
        .min(limit)
}

/// Write a translation folder: weights, tokenizer, HF config and generation config, and
/// the longest source (`attn_translate.json`).
fn save_folder(
    dir: &Path,
    model: &EncDecModel,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::engine::io::write_plain(&dir.join(checkpoint::WEIGHTS), &model.tensors())?;
    tokenizer.save(&dir.join(checkpoint::TOKENIZER))?;
    let (pad, eos, start) = model.special_ids();
    let generation = match model {
        EncDecModel::Marian(_) => serde_json::json!({
            "decoder_start_token_id": start, "eos_token_id": eos,
            "forced_eos_token_id": eos, "pad_token_id": pad,
            "bad_words_ids": [[pad]],
            "num_beams": 4, "max_length": max_len,
        }),
        EncDecModel::T5(_) => serde_json::json!({
            "decoder_start_token_id": start, "eos_token_id": eos, "pad_token_id": pad,
            "bad_words_ids": [[pad]],
        }),
    };
    write_json(&dir.join(checkpoint::GENERATION_CONFIG), &generation)?;
    // What transformers' AutoTokenizer (and so CTranslate2's converter) needs to load
    // tokenizer.json with its special tokens. Byte-level BPE has no unknown tokens;
    // its reserved end-of-text token, which no text encodes to, stands in as the
    // unknown token CTranslate2 requires.
    let unk = if tokenizer
        .inner()
        .token_to_id(crate::tokenizer::END_OF_TEXT)
        .is_some()
    {
        crate::tokenizer::END_OF_TEXT
    } else {
        UNK
    };
    let mut specials = serde_json::json!({ "eos_token": EOS, "pad_token": PAD, "unk_token": unk });
    let sentinels = sentinel_tokens(tokenizer);
    if !sentinels.is_empty() {
        specials["additional_special_tokens"] = sentinels.into();
    }
    let mut config = specials.clone();
    config["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    config["model_max_length"] = max_len.into();
    write_json(&dir.join("tokenizer_config.json"), &config)?;
    write_json(&dir.join("special_tokens_map.json"), &specials)?;
    write_json(
        &dir.join("attn_translate.json"),
        &serde_json::json!({ "max_len": max_len }),
    )?;
    write_json(&dir.join(checkpoint::CONFIG), &model.hf_config())
}

/// A decoded output as one line: line breaks (which a byte-level vocabulary can
/// produce) become spaces, and the ends are trimmed, so that output line i is input
/// line i's.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ").trim().to_string()
}

/// The unknown token of character vocabularies.
pub const UNK: &str = "<unk>";

/// T5's sentinel `i`: `<extra_id_i>`.
pub fn sentinel(i: usize) -> String {
    format!("<extra_id_{i}>")
}

/// The sentinels a tokenizer has, in order (`<extra_id_0>`, `<extra_id_1>`, …).
pub fn sentinel_tokens(tokenizer: &Tokenizer) -> Vec<String> {
    (0..)
        .map(sentinel)
        .take_while(|t| tokenizer.inner().token_to_id(t).is_some())
        .collect()
}

impl Translator {
    pub fn load(dir: &Path) -> Result<Self> {
        let model = Seq2Seq::load(dir)?;
        let tokenizer = Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
        let max_len = folder_max_len(dir, model.spec.max_source);
        Ok(Translator {
            model,
            tokenizer,
            max_len,
            suppress: folder_suppress(dir),
            forced_eos: folder_forces_eos(dir),
        })
    }

    /// Source ids with end-of-sentence, truncated to `max_len`; the flag says whether
    /// anything was cut.
    pub fn encode_src(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let mut ids = self.tokenizer.encode(text)?;
        let cut = ids.len() > self.max_len - 1;
        ids.truncate(self.max_len - 1);
        ids.push(self.model.spec.eos);
        Ok((ids, cut))
    }

    /// Translate sentences, `batch_size` at a time (sentences of similar length decoded
    /// together); returns the texts in input order and how many sources were truncated.
    pub fn translate(
        &self,
        texts: &[String],
        beam: &BeamConfig,
        batch_size: usize,
    ) -> Result<(Vec<String>, usize)> {
        let mut beam = beam.clone();
        beam.suppress.extend(&self.suppress);
        let mut out = vec![String::new(); texts.len()];
        let mut truncated = 0;
        let mut encoded: Vec<(usize, Vec<u32>)> = vec![];
        for (i, t) in texts.iter().enumerate() {
            if t.trim().is_empty() {
                continue;
            }
            let (ids, cut) = self.encode_src(t)?;
            truncated += usize::from(cut);
            encoded.push((i, ids));
        }
        encoded.sort_by_key(|(_, ids)| ids.len());
        for chunk in encoded.chunks(batch_size.max(1)) {
            let srcs: Vec<&[u32]> = chunk.iter().map(|(_, ids)| ids.as_slice()).collect();
            let hyps = decode_batch(&self.model, &srcs, &beam)?;
            for ((i, _), h) in chunk.iter().zip(hyps) {
                out[*i] = one_line(&self.tokenizer.decode_clean(&h.ids)?);
            }
        }
        Ok((out, truncated))
    }
}

struct Encoded {
    src: Vec<Vec<u32>>,
    tgt: Vec<Vec<u32>>,
}

impl Encoded {
    /// The (source, target) pairs `idx` names.
    fn pairs(&self, idx: &[usize]) -> Vec<(&[u32], &[u32])> {
        idx.iter()
            .map(|&i| (self.src[i].as_slice(), self.tgt[i].as_slice()))
            .collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TranslateEval {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// With `metric` bleu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_bleu: Option<f64>,
    /// With `metric` rouge: ROUGE-L F1 (×100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_rouge_l: Option<f64>,
    pub best: bool,
}

impl TranslateEval {
    /// The score that chooses the best model (higher is better).
    pub fn score(&self) -> f64 {
        self.val_bleu.or(self.val_rouge_l).unwrap_or(-self.val_loss)
    }
}

pub type TranslateEvent<'a> = Event<'a, TranslateEval>;

#[derive(Debug, Clone, Serialize)]
pub struct TranslateSummary {
    pub steps: usize,
    /// The best evaluation's score: BLEU, ROUGE-L F1 ×100, or minus the loss (what
    /// [`TranslateEval::score`] gives for the task).
    pub best_score: f64,
    pub best_step: usize,
    pub parameters: usize,
    pub train_seconds: f64,
}

type TranslateState = ExamplesState<TranslateConfig>;

const WRITTEN_BY: &str = "attn translate train";

/// The config and data description of the run saved in `out/checkpoint`, for a caller
/// that resumes it (and has to read the same data again).
pub fn saved_run(out: &Path) -> Result<(TranslateConfig, serde_json::Value)> {
    let st = TranslateState::saved(out, WRITTEN_BY)?;
    Ok((st.config, st.data))
}

/// Translation (and summarization, and span-corruption pre-training) as the training
/// loop runs it.
struct TranslateJob<'a> {
    cfg: &'a TranslateConfig,
    model: EncDecModel,
    /// Span corruption: the sentinels' ids and end-of-sentence (the sources of `train`
    /// are documents, corrupted afresh at each draw).
    corrupt: Option<(Vec<u32>, u32)>,
    /// Tokenizer and limits; its model is refreshed for each evaluation's decoding.
    tr: Translator,
    train: Encoded,
    eval: Encoded,
    lengths: Vec<usize>,
    /// The validation sources and references scored by BLEU.
    bleu_src: Vec<String>,
    refs: Vec<Vec<String>>,
    bleu_cfg: BleuConfig,
    state: TranslateState,
}

impl Job for TranslateJob<'_> {
    type Model = EncDecModel;
    type Eval = TranslateEval;

    fn model(&mut self) -> &mut EncDecModel {
        &mut self.model
    }

    /// The Transformer's schedule: linear warm-up, then decay with 1/√step.
    fn lr(&self, s: usize) -> f64 {
        let s = (s + 1) as f64;
        let w = self.cfg.warmup.max(1) as f64;
        self.cfg.lr * (s / w).min((w / s).sqrt())
    }

    fn micro_batch(&mut self, rng: &mut Rng) -> Result<(f64, usize)> {
        let idx = self
            .state
            .passes
            .next(&self.lengths, self.cfg.batch_size, rng);
        let corrupted: Vec<(Vec<u32>, Vec<u32>)>;
        let pairs = match (&self.corrupt, self.cfg.span_corruption) {
            (Some((sentinels, eos)), Some((density, span))) => {
                corrupted = idx
                    .iter()
                    .map(|&i| {
                        let doc = &self.train.src[i];
                        let body = &doc[..doc.len() - 1];
                        crate::data::span::corrupt(body, density, span, sentinels, *eos, rng)
                    })
                    .collect();
                corrupted
                    .iter()
                    .map(|(s, t)| (s.as_slice(), t.as_slice()))
                    .collect()
            }
            _ => self.train.pairs(&idx),
        };
        let tokens = pairs.iter().map(|p| p.1.len()).sum();
        let loss =
            self.model
                .forward_backward(&pairs, self.cfg.label_smoothing, Some(rng.next_u64()))?;
        Ok((loss, tokens))
    }

    /// The validation loss (mean cross-entropy over every target token) and BLEU of
    /// beam search over the first `bleu_sample` pairs.
    fn evaluate(&mut self, step: usize, train_loss: f64) -> Result<TranslateEval> {
        let (mut vl, mut vt) = (0.0, 0usize);
        let all: Vec<usize> = (0..self.eval.src.len()).collect();
        for c in all.chunks(64) {
            let tokens: usize = c.iter().map(|&i| self.eval.tgt[i].len()).sum();
            vl += self.model.loss(&self.eval.pairs(c), 0.0, None)? * tokens as f64;
            vt += tokens;
        }
        let mut eval = TranslateEval {
            step,
            train_loss,
            val_loss: vl / vt as f64,
            val_bleu: None,
            val_rouge_l: None,
            best: false,
        };
        if self.cfg.metric == "loss" {
            return Ok(eval);
        }
        let beam = BeamConfig {
            num_beams: self.cfg.beam,
            length_penalty: 1.0,
            max_new_tokens: self.cfg.max_len,
            forced_eos: self.tr.forced_eos,
            suppress: Vec::new(),
            min_new_tokens: 0,
            no_repeat_ngram_size: 0,
        };
        self.tr.model = self.model.to_engine()?;
        let (hyps, _) = self.tr.translate(&self.bleu_src, &beam, 32)?;
        if self.cfg.metric == "rouge" {
            let (mean, _) = score_corpus(&hyps, &self.refs[0], &rouge_config(&self.refs[0]))?;
            eval.val_rouge_l = Some(100.0 * mean.rouge_l.fmeasure);
        } else {
            eval.val_bleu = Some(corpus_bleu(&hyps, &self.refs, &self.bleu_cfg)?.score);
        }
        Ok(eval)
    }

    fn score(e: &TranslateEval) -> Option<f64> {
        Some(e.score())
    }

    fn mark_best(e: &mut TranslateEval, best: bool) {
        e.best = best;
    }

    fn save_model(&mut self, dir: &Path, _resumable: bool) -> Result<()> {
        save_folder(dir, &self.model, &self.tr.tokenizer, self.cfg.max_len)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(&self.state).unwrap()
    }
}

/// A new model and its vocabulary, built from the training text as the config says.
fn new_model(
    cfg: &TranslateConfig,
    train: &[Pair],
    rng: &mut Rng,
) -> Result<(Tokenizer, EncDecModel)> {
    let mut tokenizer = match &cfg.tokenizer {
        Some(path) => Tokenizer::from_file(path)?,
        None => {
            let corpus: String = train
                .iter()
                .flat_map(|p| [p.src.as_str(), "\n", p.tgt.as_str(), "\n"])
                .collect();
            match cfg.vocab.as_str() {
                // Characters the training text lacks read as <unk> (validation and
                // test text meets new ones).
                "char" => Tokenizer::train_char_with_unk_named(&corpus, UNK)?,
                _ => Tokenizer::train_bpe(&corpus, cfg.vocab_size)?,
            }
        }
    };
    if cfg.arch == "t5" {
        // T5's conventions: the decoder starts from <pad>, and sentinels for span
        // corruption (100, as T5's vocabularies have).
        let mut names = vec![PAD.to_string(), EOS.to_string(), UNK.to_string()];
        names.extend((0..100).map(sentinel));
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let ids = tokenizer.add_specials(&refs)?;
        let (pad, eos) = (ids[0], ids[1]);
        let t5 = T5Config {
            dropout_rate: cfg.dropout,
            pad_token_id: pad,
            eos_token_id: eos,
            decoder_start_token_id: pad,
            n_positions: Some(cfg.max_len),
            ..T5Config::v1_1(
                tokenizer.vocab_size(),
                cfg.d_model,
                cfg.layers,
                cfg.heads,
                cfg.ffn,
            )
        };
        return Ok((tokenizer, EncDecModel::new_t5(t5, rng.next_u64())?));
    }
    // `<pad>` last, as in published Marian vocabularies: it is the decoder's start,
    // whose embedding stays zero (Marian starts decoding from a zero vector), and it is
    // never generated; CTranslate2's converter drops the last token on that basis.
    let ids = tokenizer.add_specials(&[EOS, PAD])?;
    let (eos, pad) = (ids[0], ids[1]);
    let mc = MarianConfig {
        dropout: cfg.dropout,
        ..MarianConfig::transformer(
            tokenizer.vocab_size(),
            cfg.d_model,
            cfg.layers,
            cfg.heads,
            cfg.ffn,
            cfg.max_len + 1,
            pad,
            eos,
        )
    };
    Ok((tokenizer, EncDecModel::new_marian(mc, rng.next_u64())?))
}

/// Refuses, before training starts, a validation reference too long for ROUGE-L to
/// score against a hypothesis of `max_len` tokens (one token a word, the usual case):
/// the evaluation would stop the run at its first ROUGE score (`metrics::rouge`'s
/// per-line limit), after the steps before it.
fn check_rouge_refs(refs: &[String], max_len: usize) -> Result<()> {
    let rc = rouge_config(refs);
    for (i, r) in refs.iter().enumerate() {
        let tokens = token_count(r, &rc);
        let cells = tokens as u64 * max_len.max(1) as u64;
        if cells > MAX_LCS_CELLS {
            return Err(Error::invalid(
                "validation set",
                format!(
                    "reference {} has {tokens} tokens: ROUGE-L against a \
                     hypothesis of --max-len {max_len} tokens would need {cells} cells, more \
                     than the {MAX_LCS_CELLS} scored per line; shorten it or lower --max-len",
                    i + 1,
                ),
            ));
        }
    }
    Ok(())
}

/// ROUGE as the summarization metric reads it: Chinese by characters when the
/// references hold any, else rouge-score's default tokens.
pub fn rouge_config(refs: &[String]) -> RougeConfig {
    RougeConfig {
        tokenize: if refs.iter().any(|r| r.chars().any(is_zh_char)) {
            RougeTokenize::ZhChar
        } else {
            RougeTokenize::Default
        },
        ..RougeConfig::default()
    }
}

/// Train a translator; the model with the best validation BLEU is saved to `out`, and
/// at every evaluation a checkpoint to resume from (`out/checkpoint`).
pub fn train(
    cfg: &TranslateConfig,
    train: &[Pair],
    val: &[Pair],
    out: &Path,
    begin: Begin,
    on_event: &mut dyn FnMut(TranslateEvent),
) -> Result<TranslateSummary> {
    cfg.validate()?;
    if train.is_empty() || val.is_empty() {
        return Err(Error::invalid(
            "data",
            "training and validation pairs must both be non-empty",
        ));
    }
    let plan = Plan {
        max_steps: cfg.max_steps,
        eval_every: cfg.eval_interval,
        log_every: 0,
        eval_at_start: false,
        accum: 1,
        clip: cfg.grad_clip,
        adamw: AdamWConfig {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-9,
            weight_decay: 0.0,
        },
    };
    let (tokenizer, mut model, state, mut run) = match begin {
        Begin::New { data } => {
            let mut rng = Rng::new(cfg.seed);
            let (tokenizer, model) = match &cfg.init {
                Some(dir) => {
                    let mut model = EncDecModel::load(dir)?;
                    model.set_dropout(cfg.dropout);
                    (
                        Tokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?,
                        model,
                    )
                }
                None => new_model(cfg, train, &mut rng)?,
            };
            let state = TranslateState {
                passes: Passes::default(),
                n_train: train.len(),
                n_val: val.len(),
                labels: Vec::new(),
                config: cfg.clone(),
                data: data.clone(),
            };
            (tokenizer, model, state, Run::start(out, plan, rng)?)
        }
        Begin::Resume => {
            let (ckpt, state, reopened) =
                TranslateState::reopen(out, WRITTEN_BY, train.len(), val.len(), &[])?;
            let tokenizer = Tokenizer::from_file(&ckpt.join(checkpoint::TOKENIZER))?;
            let mut model = EncDecModel::load(&ckpt)?;
            let run = reopened.restore(&ckpt, &mut model, plan)?;
            (tokenizer, model, state, run)
        }
    };
    let (pad, eos, _) = model.special_ids();
    if let EncDecModel::Marian(m) = &mut model {
        m.freeze_pad_row();
    }
    let max_len = match model.context() {
        Some(n) => cfg.max_len.min(n - 1),
        None => cfg.max_len,
    };
    let tr = Translator {
        model: model.to_engine()?,
        tokenizer,
        max_len,
        suppress: vec![pad],
        forced_eos: matches!(model, EncDecModel::Marian(_)),
    };
    let corrupt = match cfg.span_corruption {
        Some(_) => {
            let sentinels: Vec<u32> = sentinel_tokens(&tr.tokenizer)
                .iter()
                .filter_map(|t| tr.tokenizer.inner().token_to_id(t))
                .collect();
            if sentinels.is_empty() {
                return Err(Error::invalid(
                    "span corruption",
                    "the tokenizer has no sentinel tokens (<extra_id_0>, ...)",
                ));
            }
            Some((sentinels, eos))
        }
        None => None,
    };
    let encode = |pairs: &[Pair]| -> Result<Encoded> {
        let mut e = Encoded {
            src: vec![],
            tgt: vec![],
        };
        for p in pairs {
            e.src.push(tr.encode_src(&p.src)?.0);
            e.tgt.push(tr.encode_src(&p.tgt)?.0);
        }
        Ok(e)
    };
    let (etrain, mut eval) = (encode(train)?, encode(val)?);
    if let (Some((sentinels, eos)), Some((density, span))) = (&corrupt, cfg.span_corruption) {
        // The validation documents corrupted once, the same at every evaluation.
        let mut vrng = Rng::new(cfg.seed ^ 0x5EED);
        let (src, tgt) = eval
            .src
            .iter()
            .map(|d| {
                crate::data::span::corrupt(
                    &d[..d.len() - 1],
                    density,
                    span,
                    sentinels,
                    *eos,
                    &mut vrng,
                )
            })
            .unzip();
        eval = Encoded { src, tgt };
    }
    let lengths: Vec<usize> = etrain
        .src
        .iter()
        .zip(&etrain.tgt)
        .map(|(s, t)| s.len().max(t.len()))
        .collect();
    let bleu_n = cfg.bleu_sample.min(val.len());
    let refs = vec![val[..bleu_n]
        .iter()
        .map(|p| p.tgt.clone())
        .collect::<Vec<_>>()];
    if cfg.metric == "rouge" {
        check_rouge_refs(&refs[0], cfg.max_len)?;
    }
    let bleu_cfg = BleuConfig {
        tokenize: match cfg.bleu_tokenize.as_str() {
            "auto" => auto_bleu_tokenizer(&refs[0]),
            t => t.parse()?,
        },
        ..BleuConfig::default()
    };
    let mut job = TranslateJob {
        cfg,
        model,
        corrupt,
        tr,
        train: etrain,
        eval,
        lengths,
        bleu_src: val[..bleu_n].iter().map(|p| p.src.clone()).collect(),
        refs,
        bleu_cfg,
        state,
    };
    run.fit(&mut job, on_event)?;
    Ok(TranslateSummary {
        steps: run.progress.step,
        best_score: run.progress.best.unwrap_or(f64::NAN),
        best_step: run.progress.best_step,
        parameters: job.model.count(),
        train_seconds: run.progress.train_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_references_too_long_for_the_hypotheses_are_refused_up_front() {
        let refs = vec!["the cat sat".to_string(), "a b c d".to_string()];
        assert!(check_rouge_refs(&refs, 64).is_ok());
        // 3 × 7e7 cells pass (below 2^28), 4 × 7e7 do not: the second reference, named
        // from 1.
        let e = check_rouge_refs(&refs, 70_000_000).unwrap_err().to_string();
        assert!(
            e.contains("validation set: reference 2 has 4 tokens"),
            "{e}"
        );
        assert!(e.contains("--max-len"), "{e}");
    }
}
