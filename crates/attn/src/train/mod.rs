//! The training loop: batches → forward → loss → backward → clip → AdamW → schedule,
//! with periodic validation, the best model kept, and a resumable checkpoint.
//!
//! Output folder layout:
//! * `config.json`, `model.safetensors`, `tokenizer.json`, `generation_config.json`:
//!   the best model so far (lowest validation loss), an ordinary HF GPT-2 folder;
//! * `checkpoint/`: the latest complete training state (model, `optimizer.safetensors`,
//!   `trainer_state.json` with step, RNG state and config), replaced atomically;
//! * `metrics.jsonl`: one JSON object per logged step and per evaluation.
//!
//! The steps are [`native`]'s: the parameters, gradients and AdamW moments live in its
//! flat buffers and nowhere else; saves write them straight from there.

mod config;
pub mod encdec;
pub mod encoder;
pub mod fit;
mod flat;
pub mod native;
pub mod optimizer;
pub mod profile;
pub mod run;
pub mod schedule;
pub mod seq2seq;
pub mod t5;

pub use config::{Arch, TrainConfig, PRESETS};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::{lm, read_corpus, Encoding, LmSplits};
use crate::models::gpt2::Gpt2Config;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use native::NativeDecoder;
use optimizer::AdamWConfig;
use schedule::CosineSchedule;

pub use run::{CHECKPOINT_DIR, METRICS_FILE};

/// Where the training text comes from: text files, tokenized at the start of the run,
/// or a folder of token shards written by `attn data tokenize` (then `files` is empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub files: Vec<PathBuf>,
    #[serde(with = "encoding_serde")]
    pub encoding: Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<PathBuf>,
}

impl DataSpec {
    /// Text files in `encoding`.
    pub fn text(files: Vec<PathBuf>, encoding: Encoding) -> Self {
        DataSpec {
            files,
            encoding,
            shards: None,
        }
    }

    /// The token shard folder `dir`.
    pub fn shards(dir: PathBuf) -> Self {
        DataSpec {
            files: Vec::new(),
            encoding: Encoding::Utf8,
            shards: Some(dir),
        }
    }

    /// The same data with its paths absolute, so that `--resume` works from any
    /// working directory.
    fn resolved(&self) -> Self {
        DataSpec {
            files: self
                .files
                .iter()
                .map(|f| crate::guard::resolve_path(f))
                .collect(),
            encoding: self.encoding,
            shards: self.shards.as_deref().map(crate::guard::resolve_path),
        }
    }

    /// The tokens (split into training and validation parts) and, for shards, the
    /// tokenizer that wrote them. Text is read whole and tokenized by `tokenizer`
    /// (built from the text when it is `None`).
    fn load(
        &self,
        config: &mut TrainConfig,
        tokenizer: Option<Tokenizer>,
    ) -> Result<(LmSplits, Tokenizer)> {
        match &self.shards {
            Some(dir) => {
                let set = crate::data::shards::ShardSet::open(dir)?;
                if let Some(t) = &tokenizer {
                    if t.to_json()? != set.tokenizer.to_json()? {
                        return Err(Error::invalid(
                            "shards",
                            format!(
                                "{} was tokenized with another tokenizer than the run's ({} and {} ids)",
                                dir.display(),
                                set.tokenizer.vocab_size(),
                                t.vocab_size()
                            ),
                        ));
                    }
                }
                // The split was made when the shards were written.
                config.val_fraction = set.val_fraction;
                config.tokenizer = dir.join(checkpoint::TOKENIZER).display().to_string();
                let splits = LmSplits {
                    train: lm::Tokens::Mapped(set.train),
                    val: lm::Tokens::Mapped(set.val),
                };
                Ok((splits, tokenizer.unwrap_or(set.tokenizer)))
            }
            None => {
                let corpus = read_corpus(&self.files, self.encoding)?;
                let tokenizer = match tokenizer {
                    Some(t) => t,
                    None => build_tokenizer(&config.tokenizer, &corpus)?,
                };
                let ids = tokenizer.encode(&corpus)?;
                Ok((LmSplits::new(ids, config.val_fraction)?, tokenizer))
            }
        }
    }
}

mod encoding_serde {
    use super::Encoding;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(e: &Encoding, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match e {
            Encoding::Utf8 => "utf8",
            Encoding::Latin1 => "latin1",
        })
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Encoding, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What an LM run's checkpoint keeps besides the model, moments and progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LmState {
    config: TrainConfig,
    data: DataSpec,
    n_tokens: usize,
}

pub use fit::StepStats;

#[derive(Debug, Clone, Serialize)]
pub struct EvalStats {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// True when this evaluation set a new best and the model was saved.
    pub best: bool,
}

pub type Event<'a> = fit::Event<'a, EvalStats>;

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub final_train_loss: f64,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// Seconds spent in training steps over the whole run (evaluation and saving
    /// excluded; a resumed run's earlier part included).
    pub train_seconds: f64,
}

/// Build the tokenizer a config asks for: `char`, `bpe:N`, or a tokenizer.json path
/// (or a folder holding one).
/// The N of a `bpe:N` tokenizer spec given to `flag`: a number within what
/// [`Tokenizer::train_bpe`] accepts, checked before any data is read.
pub fn check_bpe_size(flag: &str, n: &str) -> Result<usize> {
    let v: usize = n
        .parse()
        .map_err(|_| Error::invalid(flag, format!("bpe:{n}: expected bpe:N with N a number")))?;
    if !(257..=crate::tokenizer::MAX_BPE_VOCAB).contains(&v) {
        return Err(Error::invalid(
            flag,
            format!(
                "bpe:{v}: the vocab-size N of bpe:N must be between 257 and {}",
                crate::tokenizer::MAX_BPE_VOCAB
            ),
        ));
    }
    Ok(v)
}

pub fn build_tokenizer(spec: &str, corpus: &str) -> Result<Tokenizer> {
    if spec == "char" {
        return Tokenizer::train_char(corpus);
    }
    if let Some(n) = spec.strip_prefix("bpe:") {
        let n = check_bpe_size("tokenizer", n)?;
        return Tokenizer::train_bpe(corpus, n);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Tokenizer::from_file(&path.join(checkpoint::TOKENIZER));
    }
    if path.is_file() {
        return Tokenizer::from_file(path);
    }
    Err(Error::invalid(
        "tokenizer",
        format!("{spec:?} is neither char, bpe:N, nor an existing tokenizer.json or folder"),
    ))
}

/// Language modelling as the training loop runs it.
struct LmJob {
    config: TrainConfig,
    /// The model's `config.json` (Hugging Face field names).
    hf_config: serde_json::Value,
    tokenizer: Tokenizer,
    schedule: CosineSchedule,
    splits: LmSplits,
    data: DataSpec,
    /// The model being trained: its parameters, gradients and moments, and the steps.
    native: NativeDecoder,
}

/// Where a new model's weights come from.
enum Weights {
    Init(u64),
    Tensors(crate::engine::io::Plain),
}

/// A model of the config's family, ready to train: its `config.json` and the native
/// step over its parameters, drawn fresh or from a checkpoint's tensors.
fn build_model(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    weights: Weights,
) -> Result<(serde_json::Value, NativeDecoder)> {
    let (hf, pdrop) = match config.arch {
        Arch::Gpt2 => {
            let d = config.dropout;
            (model_config(config, tokenizer).to_hf_json(), (d, d, d))
        }
        // Attention dropout only, as transformers' Llama has.
        Arch::Llama | Arch::Qwen2 | Arch::Mistral => {
            (llama_config(config, tokenizer), (0.0, config.dropout, 0.0))
        }
    };
    let spec = crate::engine::io::spec_of(&hf)?;
    let native = match weights {
        Weights::Init(seed) => NativeDecoder::init(&spec, pdrop, seed, 0.02)?,
        Weights::Tensors(t) => NativeDecoder::from_plain(&spec, pdrop, t)?,
    };
    Ok((hf, native))
}

impl LmJob {
    /// Mean loss over `eval_iters` fixed batches of `ids` (the same windows at every
    /// evaluation, so successive estimates are comparable).
    fn estimate(&mut self, ids: &lm::Tokens, salt: u64) -> Result<f64> {
        let cfg = &self.config;
        let mut rng = Rng::new(cfg.seed ^ salt);
        let mut total = 0f64;
        for _ in 0..cfg.eval_iters {
            let starts = lm::random_windows(ids.len(), cfg.batch_size, cfg.block_size, &mut rng);
            let (x, y) = lm::windows(ids, &starts, cfg.block_size)?;
            total += self.native.loss(&x, &y, cfg.batch_size, cfg.block_size)?;
        }
        Ok(total / cfg.eval_iters as f64)
    }

    fn generation_config(&self) -> serde_json::Value {
        let mut g = serde_json::json!({ "do_sample": true, "temperature": 0.8, "top_k": 200 });
        if let Some(eos) = self.tokenizer.eos_id() {
            g["eos_token_id"] = eos.into();
            g["bos_token_id"] = eos.into();
        }
        g
    }
}

impl fit::Job for LmJob {
    type Model = NativeDecoder;
    type Eval = EvalStats;

    fn model(&mut self) -> &mut NativeDecoder {
        &mut self.native
    }

    fn lr(&self, step: usize) -> f64 {
        self.schedule.at(step)
    }

    fn micro_batch(&mut self, rng: &mut Rng) -> Result<(f64, usize)> {
        let cfg = &self.config;
        let train = &self.splits.train;
        let starts = lm::random_windows(train.len(), cfg.batch_size, cfg.block_size, rng);
        let (x, y) = lm::windows(train, &starts, cfg.block_size)?;
        // Drawn only with dropout, so that runs without it draw the batches that runs
        // without it always drew.
        let seed = if self.native.has_dropout() {
            rng.next_u64()
        } else {
            0
        };
        let (b, t) = (cfg.batch_size, cfg.block_size);
        let loss = self.native.forward_backward(&x, &y, b, t, 1.0, seed)?;
        Ok((loss, b * t))
    }

    /// Training and validation loss estimated on fixed windows.
    fn evaluate(&mut self, step: usize, _: f64) -> Result<EvalStats> {
        let splits = std::mem::take(&mut self.splits);
        let train_loss = self.estimate(&splits.train, 0x7472_6169_6e00);
        let val_loss = if splits.val.len() > self.config.block_size {
            self.estimate(&splits.val, 0x7661_6c00).map(Some)
        } else {
            Ok(None)
        };
        self.splits = splits;
        Ok(EvalStats {
            step,
            train_loss: train_loss?,
            val_loss: val_loss?,
            best: false,
        })
    }

    /// The lowest validation loss is best; without a validation split, the latest.
    fn score(e: &EvalStats) -> Option<f64> {
        e.val_loss.map(|v| -v)
    }

    fn mark_best(e: &mut EvalStats, best: bool) {
        e.best = best;
    }

    fn save_model(&mut self, dir: &Path, _: bool) -> Result<()> {
        self.native.sync_to_host()?;
        checkpoint::save_model_folder(
            dir,
            &self.hf_config,
            &self.native.tensors(),
            &self.tokenizer,
            &self.generation_config(),
        )
    }

    fn state(&self) -> serde_json::Value {
        serde_json::to_value(LmState {
            config: self.config.clone(),
            data: self.data.clone(),
            n_tokens: self.splits.train.len() + self.splits.val.len(),
        })
        .unwrap()
    }
}

/// A language-model training run.
pub struct Trainer {
    job: LmJob,
    run: fit::Run,
}

/// How the loop runs an LM config.
fn plan(config: &TrainConfig) -> fit::Plan {
    fit::Plan {
        max_steps: config.max_iters,
        eval_every: config.eval_interval,
        log_every: config.log_interval,
        eval_at_start: true,
        accum: config.grad_accum,
        clip: config.grad_clip,
        adamw: AdamWConfig {
            beta1: config.beta1,
            beta2: config.beta2,
            eps: 1e-8,
            weight_decay: config.weight_decay,
        },
    }
}

const WRITTEN_BY: &str = "attn train";

impl Trainer {
    /// Start a new run: read the data, build the tokenizer (or take the shards') and a
    /// freshly initialised model.
    pub fn new(mut config: TrainConfig, data: DataSpec, out: &Path) -> Result<Self> {
        config.validate()?;
        let data = data.resolved();
        let (splits, tokenizer) = data.load(&mut config, None)?;
        config.check_memory(tokenizer.vocab_size())?;
        let mut rng = Rng::new(config.seed);
        let model = build_model(&config, &tokenizer, Weights::Init(rng.next_u64()))?;
        let job = Self::job(config, data, splits, tokenizer, model)?;
        let run = fit::Run::start(out, plan(&job.config), rng)?;
        Ok(Trainer { job, run })
    }

    /// A run on random tokens, for benchmarks: the tokenizer has exactly
    /// `vocab_size` single-character tokens and the data is `n_tokens` random ids.
    /// Nothing is written unless a save method is called.
    pub fn synthetic(config: TrainConfig, vocab_size: usize, n_tokens: usize) -> Result<Self> {
        config.validate()?;
        let alphabet: String = (0x100u32..0x100 + vocab_size as u32)
            .filter_map(char::from_u32)
            .collect();
        let tokenizer = Tokenizer::train_char(&alphabet)?;
        let mut rng = Rng::new(config.seed);
        let corpus: String = {
            let chars: Vec<char> = alphabet.chars().collect();
            (0..n_tokens)
                .map(|_| chars[rng.below(chars.len())])
                .collect()
        };
        let model = build_model(&config, &tokenizer, Weights::Init(rng.next_u64()))?;
        let data = DataSpec::text(vec![], Encoding::Utf8);
        let splits = LmSplits::new(tokenizer.encode(&corpus)?, config.val_fraction)?;
        let job = Self::job(config, data, splits, tokenizer, model)?;
        let run = fit::Run::detached(plan(&job.config), rng);
        Ok(Trainer { job, run })
    }

    fn job(
        config: TrainConfig,
        data: DataSpec,
        splits: LmSplits,
        tokenizer: Tokenizer,
        (hf_config, native): (serde_json::Value, NativeDecoder),
    ) -> Result<LmJob> {
        splits.check_block(config.block_size)?;
        let schedule = CosineSchedule {
            lr: config.lr,
            min_lr: config.min_lr,
            warmup_iters: config.warmup_iters,
            decay_iters: config.lr_decay_iters,
        };
        Ok(LmJob {
            config,
            hf_config,
            tokenizer,
            schedule,
            splits,
            data,
            native,
        })
    }

    /// Continue the run saved in `out/checkpoint`. `max_iters`, when given, replaces the
    /// saved value (to extend a finished run); `data`, when given, replaces the saved file
    /// list or shard folder (the data must hold the same number of tokens).
    pub fn resume(out: &Path, max_iters: Option<usize>, data: Option<DataSpec>) -> Result<Self> {
        let (ckpt, task, reopened) = fit::Run::reopen(out, WRITTEN_BY)?;
        let state: LmState = serde_json::from_value(task).map_err(|e| {
            Error::bad_file(
                ckpt.join(fit::STATE_FILE),
                format!("not a valid trainer state: {e}"),
            )
        })?;
        let mut config = state.config.clone();
        if let Some(m) = max_iters {
            config.max_iters = m;
        }
        config.validate()?;
        let data = data.map(|d| d.resolved()).unwrap_or(state.data.clone());
        let tokenizer = Tokenizer::from_file(&ckpt.join(checkpoint::TOKENIZER))?;
        let (splits, tokenizer) = data.load(&mut config, Some(tokenizer))?;
        let tensors = crate::engine::io::read_plain(&ckpt.join(checkpoint::WEIGHTS))?;
        let model = build_model(&config, &tokenizer, Weights::Tensors(tensors))
            .map_err(|e| Error::bad_file(ckpt.join(checkpoint::WEIGHTS), e.to_string()))?;
        let mut job = Self::job(config, data, splits, tokenizer, model)?;
        let n_tokens = job.splits.train.len() + job.splits.val.len();
        if n_tokens != state.n_tokens {
            return Err(Error::invalid(
                "data",
                format!(
                    "the data now has {n_tokens} tokens but the run started with {}: resume with the same files",
                    state.n_tokens
                ),
            ));
        }
        let run = reopened.restore(&ckpt, &mut job.native, plan(&job.config))?;
        Ok(Trainer { job, run })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.job.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.job.tokenizer
    }

    pub fn step(&self) -> usize {
        self.run.progress.step
    }

    pub fn out_dir(&self) -> &Path {
        &self.run.out
    }

    pub fn splits(&self) -> &LmSplits {
        &self.job.splits
    }

    /// The vocabulary size of the model being trained.
    pub fn vocab_size(&self) -> usize {
        self.job.tokenizer.vocab_size()
    }

    /// The number of trained values.
    pub fn param_count(&self) -> usize {
        self.job.native.param_count()
    }

    /// The lowest validation loss so far.
    pub fn best_val_loss(&self) -> Option<f64> {
        self.run.progress.best.map(|b| -b)
    }

    /// One optimiser step (over `grad_accum` micro-batches); returns its statistics.
    pub fn train_step(&mut self) -> Result<StepStats> {
        self.run.step(&mut self.job)
    }

    /// Estimate training and validation loss; save the model if validation improved
    /// (or, without a validation split, always), then save the resumable checkpoint.
    pub fn evaluate_and_save(&mut self) -> Result<EvalStats> {
        self.run.evaluate(&mut self.job)
    }

    /// Save the current model as an HF folder at `dir`.
    pub fn save_model(&mut self, dir: &Path) -> Result<()> {
        fit::Job::save_model(&mut self.job, dir, false)
    }

    /// Write the complete training state to `out/checkpoint`, atomically as a folder.
    pub fn save_checkpoint(&mut self) -> Result<()> {
        self.run.checkpoint(&mut self.job)
    }

    /// Train until `max_iters`, evaluating every `eval_interval` steps (and at the start
    /// of a new run and at the end), reporting to `on_event`.
    /// Moves training onto `gpu` (parameters, gradients, optimizer state and every
    /// step); call before [`Trainer::run`].
    pub fn to_gpu(&mut self, gpu: crate::kernels::cuda::Gpu) -> Result<()> {
        self.job.native.to_gpu(gpu)
    }

    pub fn run(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        let mut last_eval: Option<EvalStats> = None;
        self.run.fit(&mut self.job, &mut |e| {
            if let fit::Event::Eval(v) = &e {
                last_eval = Some((*v).clone());
            }
            on_event(e)
        })?;
        Ok(Summary {
            steps: self.step(),
            final_train_loss: last_eval
                .as_ref()
                .map_or(self.run.last_loss, |e| e.train_loss),
            final_val_loss: last_eval.and_then(|e| e.val_loss),
            best_val_loss: self.best_val_loss(),
            train_seconds: self.run.progress.train_seconds,
        })
    }
}

/// The Llama `config.json` for a training config and tokenizer.
pub fn llama_config(config: &TrainConfig, tokenizer: &Tokenizer) -> serde_json::Value {
    let eos = tokenizer.eos_id();
    let arch = config.arch;
    let class = match arch {
        Arch::Qwen2 => "Qwen2ForCausalLM",
        Arch::Mistral => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut c = serde_json::json!({
        "model_type": arch.model_type(),
        "architectures": [class],
        "vocab_size": tokenizer.vocab_size(),
        "hidden_size": config.n_embd,
        "intermediate_size": config.inner(),
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads(),
        "head_dim": config.n_embd / config.n_head,
        "max_position_embeddings": config.block_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    match arch {
        Arch::Qwen2 => {
            c["use_sliding_window"] = config.sliding_window.is_some().into();
            c["sliding_window"] = config.sliding_window.into();
            c["max_window_layers"] = 0.into();
            let kind = if config.sliding_window.is_some() {
                "sliding_attention"
            } else {
                "full_attention"
            };
            c["layer_types"] = vec![kind; config.n_layer].into();
        }
        Arch::Mistral => c["sliding_window"] = config.sliding_window.into(),
        _ => {
            c["attention_bias"] = false.into();
            c["mlp_bias"] = false.into();
        }
    }
    c
}

/// The GPT-2 config for a training config and tokenizer.
pub fn model_config(config: &TrainConfig, tokenizer: &Tokenizer) -> Gpt2Config {
    let mut c = Gpt2Config::new(
        tokenizer.vocab_size(),
        config.block_size,
        config.n_embd,
        config.n_layer,
        config.n_head,
    );
    c.set_dropout(config.dropout);
    c.bos_token_id = tokenizer.eos_id();
    c.eos_token_id = tokenizer.eos_id();
    c
}
