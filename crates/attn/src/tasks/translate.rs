//! Machine translation: parallel data, a shared byte-level BPE vocabulary, an
//! encoder-decoder Transformer trained with label smoothing and a warm-up schedule,
//! validation loss and BLEU during training, and greedy or beam-search decoding.
//! Output folders are HF `MarianMTModel` folders with a `tokenizer.json`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_json, write_json};
use crate::data::{normalize, read_text, Encoding};
use crate::engine::Seq2Seq;
use crate::generate::beam::{translate_batch as decode_batch, BeamConfig};
use crate::metrics::bleu::{corpus_bleu, BleuConfig};
use crate::metrics::sacre_tokenize::SacreTokenizer;
use crate::models::marian::MarianConfig;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::train::fit::{Event, ExamplesState, Job, Passes, Plan, Run};
use crate::train::optimizer::AdamWConfig;
use crate::train::seq2seq::NativeSeq2Seq;

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
}

fn auto() -> String {
    "auto".into()
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
        if self.d_model % self.heads != 0 || self.d_model % 2 != 0 {
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
    model: &NativeSeq2Seq,
    tokenizer: &Tokenizer,
    max_len: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    crate::engine::io::write_plain(&dir.join(checkpoint::WEIGHTS), &model.tensors())?;
    let config = &model.config;
    tokenizer.save(&dir.join(checkpoint::TOKENIZER))?;
    let c = config;
    write_json(
        &dir.join(checkpoint::GENERATION_CONFIG),
        &serde_json::json!({
            "decoder_start_token_id": c.decoder_start_token_id, "eos_token_id": c.eos_token_id,
            "forced_eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
            "bad_words_ids": [[c.pad_token_id]],
            "num_beams": 4, "max_length": max_len,
        }),
    )?;
    // What transformers' AutoTokenizer (and so CTranslate2's converter) needs to load
    // tokenizer.json with its special tokens. Byte-level BPE has no unknown tokens;
    // its reserved end-of-text token, which no text encodes to, stands in as the
    // unknown token CTranslate2 requires.
    let specials = serde_json::json!({
        "eos_token": EOS, "pad_token": PAD, "unk_token": crate::tokenizer::END_OF_TEXT,
    });
    let mut config = specials.clone();
    config["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    config["model_max_length"] = max_len.into();
    write_json(&dir.join("tokenizer_config.json"), &config)?;
    write_json(&dir.join("special_tokens_map.json"), &specials)?;
    write_json(
        &dir.join("attn_translate.json"),
        &serde_json::json!({ "max_len": max_len }),
    )?;
    write_json(&dir.join(checkpoint::CONFIG), &c.to_hf_json())
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
                out[*i] = self.tokenizer.decode_clean(&h.ids)?.trim().to_string();
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
    pub val_bleu: f64,
    pub best: bool,
}

pub type TranslateEvent<'a> = Event<'a, TranslateEval>;

#[derive(Debug, Clone, Serialize)]
pub struct TranslateSummary {
    pub steps: usize,
    pub best_val_bleu: f64,
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

/// Translation as the training loop runs it.
struct TranslateJob<'a> {
    cfg: &'a TranslateConfig,
    model: NativeSeq2Seq,
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
    type Model = NativeSeq2Seq;
    type Eval = TranslateEval;

    fn model(&mut self) -> &mut NativeSeq2Seq {
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
        let tokens = idx.iter().map(|&i| self.train.tgt[i].len()).sum();
        let loss = self.model.forward_backward(
            &self.train.pairs(&idx),
            self.cfg.label_smoothing,
            Some(rng.next_u64()),
        )?;
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
        let beam = BeamConfig {
            num_beams: self.cfg.beam,
            length_penalty: 1.0,
            max_new_tokens: self.cfg.max_len,
            forced_eos: true,
            suppress: Vec::new(),
        };
        self.tr.model = self.model.to_engine()?;
        let (hyps, _) = self.tr.translate(&self.bleu_src, &beam, 32)?;
        Ok(TranslateEval {
            step,
            train_loss,
            val_loss: vl / vt as f64,
            val_bleu: corpus_bleu(&hyps, &self.refs, &self.bleu_cfg)?.score,
            best: false,
        })
    }

    fn score(e: &TranslateEval) -> Option<f64> {
        Some(e.val_bleu)
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
            let corpus: String = train
                .iter()
                .flat_map(|p| [p.src.as_str(), "\n", p.tgt.as_str(), "\n"])
                .collect();
            let mut tokenizer = Tokenizer::train_bpe(&corpus, cfg.vocab_size)?;
            // `<pad>` last, as in published Marian vocabularies: it is the decoder's
            // start, whose embedding stays zero (Marian starts decoding from a zero
            // vector), and it is never generated; CTranslate2's converter drops the
            // last token on that basis.
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
            let mut rng = Rng::new(cfg.seed);
            let model = NativeSeq2Seq::init(mc, rng.next_u64())?;
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
            let mut model = NativeSeq2Seq::load(&ckpt)?;
            let run = reopened.restore(&ckpt, &mut model, plan)?;
            (tokenizer, model, state, run)
        }
    };
    let pad = model.config.pad_token_id;
    model.freeze_pad_row();
    let tr = Translator {
        model: model.to_engine()?,
        tokenizer,
        max_len: cfg.max_len,
        suppress: vec![pad],
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
    let (etrain, eval) = (encode(train)?, encode(val)?);
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
        best_val_bleu: run.progress.best.unwrap_or(f64::NAN),
        best_step: run.progress.best_step,
        parameters: job.model.count(),
        train_seconds: run.progress.train_seconds,
    })
}
