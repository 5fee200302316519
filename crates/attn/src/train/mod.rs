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

mod blocks;
mod config;
pub mod encoder;
pub mod fit;
mod flat;
pub mod native;
pub mod optimizer;
pub mod profile;
pub mod run;
pub mod schedule;
pub mod seq2seq;

pub use config::{Arch, TrainConfig, PRESETS};

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, read_safetensors, write_json, write_safetensors};
use crate::data::{lm, read_corpus, Encoding, LmSplits};
use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::models::llama::{Llama, LlamaConfig};
use crate::nn::ParamBuilder;
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};
use native::NativeDecoder;
use optimizer::AdamWConfig;
use schedule::CosineSchedule;

const STATE_FILE: &str = "trainer_state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub use run::{CHECKPOINT_DIR, METRICS_FILE};

/// Where the training text comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSpec {
    pub files: Vec<PathBuf>,
    #[serde(with = "encoding_serde")]
    pub encoding: Encoding,
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

/// What is saved in `checkpoint/trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    rng_state: u64,
    best_val_loss: Option<f64>,
    config: TrainConfig,
    data: DataSpec,
    n_tokens: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalStats {
    pub step: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    /// True when this evaluation set a new best and the model was saved.
    pub best: bool,
}

pub enum Event<'a> {
    Step(&'a StepStats),
    Eval(&'a EvalStats),
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub steps: usize,
    pub final_train_loss: f64,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    /// Seconds spent in training steps (evaluation and saving excluded).
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

pub struct Trainer {
    pub config: TrainConfig,
    /// The model's `config.json` (Hugging Face field names).
    hf_config: serde_json::Value,
    pub tokenizer: Tokenizer,
    opt: AdamWConfig,
    schedule: CosineSchedule,
    splits: LmSplits,
    data: DataSpec,
    rng: Rng,
    step: usize,
    best_val_loss: Option<f64>,
    out: PathBuf,
    device: Device,
    last_train_loss: f64,
    /// The model being trained: its parameters, gradients and moments, and the steps.
    native: NativeDecoder,
    /// Held for the life of a run that writes `out` (none for benchmarks): a second run
    /// on the same folder is refused, naming this one's PID.
    _lock: Option<crate::guard::DirLock>,
}

/// A freshly initialised (or, from a checkpoint's tensors, loaded) model of the
/// config's family, ready to train: its `config.json` and the native step over its
/// parameters. The parameters are drawn in the graph models' order, so that a seed
/// gives the same initial model as before.
fn build_model(
    config: &TrainConfig,
    tokenizer: &Tokenizer,
    mut pb: ParamBuilder,
    device: &Device,
) -> Result<(serde_json::Value, NativeDecoder)> {
    if !device.is_cpu() {
        return Err(Error::invalid(
            "device",
            "attn trains on the CPU (a GPU backend comes with the engine's CUDA kernels)",
        ));
    }
    match config.arch {
        Arch::Gpt2 => {
            let model = Gpt2::new(model_config(config, tokenizer), &mut pb)?;
            let params = pb.finish()?;
            let native = NativeDecoder::gpt2(&model.config, &params)?;
            Ok((model.config.to_hf_json(), native))
        }
        Arch::Llama => {
            let hf = llama_config(config, tokenizer);
            let lc: LlamaConfig = serde_json::from_value(hf.clone())
                .map_err(|e| Error::invalid("arch", format!("Llama config: {e}")))?;
            Llama::new(lc, &mut pb)?;
            let params = pb.finish()?;
            let spec = crate::engine::io::spec_of(&hf)?;
            // Attention dropout only, as transformers' Llama has.
            let native = NativeDecoder::from_params(&spec, (0.0, config.dropout, 0.0), &params)?;
            Ok((hf, native))
        }
    }
}

impl Trainer {
    /// Start a new run: read the data, build the tokenizer and a freshly initialised model.
    pub fn new(config: TrainConfig, data: DataSpec, out: &Path, device: &Device) -> Result<Self> {
        config.validate()?;
        let lock = run::lock(out)?;
        // Stored absolute, so that `--resume` works from any working directory.
        let data = DataSpec {
            files: data
                .files
                .iter()
                .map(|f| crate::guard::resolve_path(f))
                .collect(),
            encoding: data.encoding,
        };
        let corpus = read_corpus(&data.files, data.encoding)?;
        let tokenizer = build_tokenizer(&config.tokenizer, &corpus)?;
        config.check_memory(tokenizer.vocab_size())?;
        let mut rng = Rng::new(config.seed);
        let init_rng = rng.fork();
        let model = build_model(
            &config,
            &tokenizer,
            ParamBuilder::init(init_rng, device),
            device,
        )?;
        let mut t = Self::assemble(config, data, &corpus, tokenizer, model, rng, out, device)?;
        t._lock = Some(lock);
        Ok(t)
    }

    /// A run on random tokens, for benchmarks: the tokenizer has exactly
    /// `vocab_size` single-character tokens and the data is `n_tokens` random ids.
    /// Nothing is written unless a save method is called.
    pub fn synthetic(
        config: TrainConfig,
        vocab_size: usize,
        n_tokens: usize,
        device: &Device,
    ) -> Result<Self> {
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
        let pb = ParamBuilder::init(rng.fork(), device);
        let model = build_model(&config, &tokenizer, pb, device)?;
        let data = DataSpec {
            files: vec![],
            encoding: Encoding::Utf8,
        };
        let out = std::env::temp_dir().join("attn-synthetic");
        Self::assemble(config, data, &corpus, tokenizer, model, rng, &out, device)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: TrainConfig,
        data: DataSpec,
        corpus: &str,
        tokenizer: Tokenizer,
        (hf_config, native): (serde_json::Value, NativeDecoder),
        rng: Rng,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let ids = tokenizer.encode(corpus)?;
        let splits = LmSplits::new(ids, config.val_fraction)?;
        splits.check_block(config.block_size)?;
        let opt = AdamWConfig {
            beta1: config.beta1,
            beta2: config.beta2,
            eps: 1e-8,
            weight_decay: config.weight_decay,
        };
        let schedule = CosineSchedule {
            lr: config.lr,
            min_lr: config.min_lr,
            warmup_iters: config.warmup_iters,
            decay_iters: config.lr_decay_iters,
        };
        Ok(Trainer {
            config,
            hf_config,
            tokenizer,
            opt,
            schedule,
            splits,
            data,
            rng,
            step: 0,
            best_val_loss: None,
            out: out.to_path_buf(),
            device: device.clone(),
            last_train_loss: f64::NAN,
            native,
            _lock: None,
        })
    }

    /// Continue the run saved in `out/checkpoint`. `max_iters`, when given, replaces the
    /// saved value (to extend a finished run); `data`, when given, replaces the saved file
    /// list (the text must tokenize to the same number of tokens).
    pub fn resume(
        out: &Path,
        max_iters: Option<usize>,
        data: Option<DataSpec>,
        device: &Device,
    ) -> Result<Self> {
        let lock = run::lock(out)?;
        let ckpt = run::require_checkpoint(out, "attn train")?;
        let state_path = ckpt.join(STATE_FILE);
        let state: TrainerState = serde_json::from_value(checkpoint::read_json(&state_path)?)
            .map_err(|e| Error::bad_file(&state_path, format!("not a valid trainer state: {e}")))?;
        let mut config = state.config.clone();
        if let Some(m) = max_iters {
            config.max_iters = m;
        }
        config.validate()?;
        let data = data
            .map(|d| DataSpec {
                files: d
                    .files
                    .iter()
                    .map(|f| crate::guard::resolve_path(f))
                    .collect(),
                encoding: d.encoding,
            })
            .unwrap_or(state.data.clone());
        let corpus = read_corpus(&data.files, data.encoding)?;
        let tokenizer = Tokenizer::from_file(&ckpt.join(checkpoint::TOKENIZER))?;
        let tensors = read_safetensors(&ckpt.join(checkpoint::WEIGHTS), device)?;
        let pb = ParamBuilder::load(tensors, device);
        let model = build_model(&config, &tokenizer, pb, device)?;
        let mut t = Self::assemble(
            config,
            data,
            &corpus,
            tokenizer,
            model,
            Rng::from_state(state.rng_state),
            out,
            device,
        )?;
        let n_tokens = t.splits.train.len() + t.splits.val.len();
        if n_tokens != state.n_tokens {
            return Err(Error::invalid(
                "data",
                format!(
                    "the data now has {n_tokens} tokens but the run started with {}: resume with the same files",
                    state.n_tokens
                ),
            ));
        }
        let moments = read_safetensors(&ckpt.join(OPTIMIZER_FILE), device)?;
        t.native.load_moments(&moments, state.step)?;
        t.step = state.step;
        t.best_val_loss = state.best_val_loss;
        t._lock = Some(lock);
        run::cut_metrics(out, state.step)?;
        Ok(t)
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn out_dir(&self) -> &Path {
        &self.out
    }

    pub fn splits(&self) -> &LmSplits {
        &self.splits
    }

    /// The vocabulary size of the model being trained.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    /// The number of trained values.
    pub fn param_count(&self) -> usize {
        self.native.param_count()
    }

    fn native_step(&mut self, lr: f64) -> Result<(f64, f64)> {
        let cfg = &self.config;
        let n = &mut self.native;
        n.zero_grads();
        let mut loss_sum = 0f64;
        for _ in 0..cfg.grad_accum {
            let starts = lm::random_windows(
                &self.splits.train,
                cfg.batch_size,
                cfg.block_size,
                &mut self.rng,
            );
            let (x, y) = lm::windows(&self.splits.train, &starts, cfg.block_size);
            // Drawn only with dropout, so that runs without it draw the batches that
            // runs without it always drew.
            let seed = if n.has_dropout() {
                self.rng.next_u64()
            } else {
                0
            };
            loss_sum += n.forward_backward(
                &x,
                &y,
                cfg.batch_size,
                cfg.block_size,
                1.0 / cfg.grad_accum as f32,
                seed,
            )?;
        }
        let norm = n.grad_norm();
        let scale = if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            cfg.grad_clip / (norm + 1e-6)
        } else {
            1.0
        };
        n.adamw_step(&self.opt, lr, scale);
        Ok((loss_sum, norm))
    }

    /// One optimiser step (over `grad_accum` micro-batches); returns its statistics.
    pub fn train_step(&mut self) -> Result<StepStats> {
        let started = Instant::now();
        let lr = self.schedule.at(self.step);
        let (loss_sum, grad_norm) = self.native_step(lr)?;
        self.step += 1;
        let cfg = &self.config;
        let loss = loss_sum / cfg.grad_accum as f64;
        if !loss.is_finite() {
            return Err(Error::invalid(
                "training",
                format!(
                    "the loss became {loss} at step {}; lower --lr or check the data",
                    self.step
                ),
            ));
        }
        self.last_train_loss = loss;
        Ok(StepStats {
            step: self.step,
            loss,
            lr,
            grad_norm,
            tokens_per_sec: cfg.tokens_per_step() as f64 / started.elapsed().as_secs_f64(),
        })
    }

    /// Mean loss over `eval_iters` fixed batches of `ids` (the same windows at every
    /// evaluation, so successive estimates are comparable).
    fn estimate(&mut self, ids: &[u32], salt: u64) -> Result<f64> {
        let cfg = &self.config;
        let mut rng = Rng::new(cfg.seed ^ salt);
        let mut total = 0f64;
        for _ in 0..cfg.eval_iters {
            let starts = lm::random_windows(ids, cfg.batch_size, cfg.block_size, &mut rng);
            let (x, y) = lm::windows(ids, &starts, cfg.block_size);
            total += self.native.loss(&x, &y, cfg.batch_size, cfg.block_size)?;
        }
        Ok(total / cfg.eval_iters as f64)
    }

    /// Estimate training and validation loss; save the model if validation improved
    /// (or, without a validation split, always), then save the resumable checkpoint.
    pub fn evaluate_and_save(&mut self) -> Result<EvalStats> {
        let splits = std::mem::take(&mut self.splits);
        let train_loss = self.estimate(&splits.train, 0x7472_6169_6e00);
        let val_loss = if splits.val.len() > self.config.block_size {
            self.estimate(&splits.val, 0x7661_6c00).map(Some)
        } else {
            Ok(None)
        };
        self.splits = splits;
        let (train_loss, val_loss) = (train_loss?, val_loss?);
        let best = match (val_loss, self.best_val_loss) {
            (Some(v), Some(b)) => v < b,
            _ => true,
        };
        if best {
            if let Some(v) = val_loss {
                self.best_val_loss = Some(v);
            }
            self.save_model(&self.out.clone())?;
        }
        let stats = EvalStats {
            step: self.step,
            train_loss,
            val_loss,
            best,
        };
        // The line first, then the checkpoint: a run killed in between resumes from the
        // previous checkpoint, which cuts this line away ([`run::cut_metrics`]), so
        // the log never lacks the evaluation at a checkpoint's step.
        let mut line = serde_json::to_value(&stats).unwrap();
        line["type"] = "eval".into();
        self.append_metrics(&line)?;
        self.save_checkpoint()?;
        Ok(stats)
    }

    fn generation_config(&self) -> serde_json::Value {
        let mut g = serde_json::json!({ "do_sample": true, "temperature": 0.8, "top_k": 200 });
        if let Some(eos) = self.tokenizer.eos_id() {
            g["eos_token_id"] = eos.into();
            g["bos_token_id"] = eos.into();
        }
        g
    }

    /// Save the current model as an HF folder at `dir`.
    pub fn save_model(&self, dir: &Path) -> Result<()> {
        checkpoint::save_model_folder(
            dir,
            &self.hf_config,
            &self.native.param_tensors(&self.device)?,
            &self.tokenizer,
            &self.generation_config(),
        )
    }

    /// Write the complete training state to `out/checkpoint`, atomically as a folder.
    pub fn save_checkpoint(&self) -> Result<()> {
        run::write_checkpoint(&self.out, |tmp| {
            self.save_model(tmp)?;
            let moments = self.native.moment_tensors(&self.device)?;
            write_safetensors(&tmp.join(OPTIMIZER_FILE), &moments)?;
            let state = TrainerState {
                step: self.step,
                rng_state: self.rng.state(),
                best_val_loss: self.best_val_loss,
                config: self.config.clone(),
                data: self.data.clone(),
                n_tokens: self.splits.train.len() + self.splits.val.len(),
            };
            write_json(
                &tmp.join(STATE_FILE),
                &serde_json::to_value(&state).unwrap(),
            )
        })
    }

    fn append_metrics(&self, line: &serde_json::Value) -> Result<()> {
        run::append_metrics(&self.out, line)
    }

    /// Train until `max_iters`, evaluating every `eval_interval` steps (and at the start
    /// of a new run and at the end), reporting to `on_event`.
    pub fn run(&mut self, on_event: &mut dyn FnMut(Event)) -> Result<Summary> {
        let mut train_seconds = 0f64;
        let mut last_eval = None;
        if self.step == 0 {
            let e = self.evaluate_and_save()?;
            on_event(Event::Eval(&e));
            last_eval = Some(e);
        }
        while self.step < self.config.max_iters {
            let t0 = Instant::now();
            let s = self.train_step()?;
            train_seconds += t0.elapsed().as_secs_f64();
            if s.step % self.config.log_interval == 0 || s.step == self.config.max_iters {
                let mut line = serde_json::to_value(&s).unwrap();
                line["type"] = "train".into();
                self.append_metrics(&line)?;
            }
            on_event(Event::Step(&s));
            if s.step % self.config.eval_interval == 0 || s.step == self.config.max_iters {
                let e = self.evaluate_and_save()?;
                on_event(Event::Eval(&e));
                last_eval = Some(e);
            }
        }
        Ok(Summary {
            steps: self.step,
            final_train_loss: last_eval
                .as_ref()
                .map_or(self.last_train_loss, |e| e.train_loss),
            final_val_loss: last_eval.and_then(|e| e.val_loss),
            best_val_loss: self.best_val_loss,
            train_seconds,
        })
    }
}

/// The Llama `config.json` for a training config and tokenizer.
pub fn llama_config(config: &TrainConfig, tokenizer: &Tokenizer) -> serde_json::Value {
    let eos = tokenizer.eos_id();
    serde_json::json!({
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
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
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "use_cache": true,
    })
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
