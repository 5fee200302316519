//! `attn train`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use attn::data::Encoding;
use attn::train::{DataSpec, Event, TrainConfig, Trainer, METRICS_FILE};
use attn::{Error, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

/// Flags that override a preset's values, one per hyperparameter.
#[derive(Args, Clone, Default)]
pub struct Overrides {
    /// Model family: gpt2 (learned positions, LayerNorm, GELU, tied head); llama
    /// (rotary positions, RMSNorm, SwiGLU, grouped key/value heads, untied head); qwen2
    /// (llama with biases on the query, key and value projections); mistral (llama
    /// without biases, with --sliding-window) [default: gpt2].
    #[arg(long)]
    pub arch: Option<String>,
    /// Key/value heads, dividing --n-head (not gpt2) [default: --n-head].
    #[arg(long)]
    pub n_kv_head: Option<usize>,
    /// Attention window of every layer: each position sees itself and the N − 1
    /// before it (qwen2 and mistral) [default: none, every earlier position].
    #[arg(long)]
    pub sliding_window: Option<usize>,
    /// Width of the MLP's hidden layer [default: 4 × --n-embd for gpt2; 8/3 × --n-embd
    /// rounded up to a multiple of 32 for llama].
    #[arg(long)]
    pub intermediate_size: Option<usize>,
    /// Transformer blocks [default: the preset's].
    #[arg(long)]
    pub n_layer: Option<usize>,
    /// Attention heads per block (must divide --n-embd) [default: the preset's].
    #[arg(long)]
    pub n_head: Option<usize>,
    /// Width of the embeddings and hidden states [default: the preset's].
    #[arg(long)]
    pub n_embd: Option<usize>,
    /// Context length (the model's n_positions). [default: the preset's]
    #[arg(long)]
    pub block_size: Option<usize>,
    /// Dropout probability, in [0, 1) [default: the preset's].
    #[arg(long)]
    pub dropout: Option<f32>,
    /// char, bpe:N, or a tokenizer.json (or a folder holding one). [default: the preset's]
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Sequences per micro-batch [default: the preset's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimiser step. [default: the preset's]
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Optimiser steps in all (with --resume: extends the run) [default: the preset's].
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// Peak learning rate. [default: the preset's]
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Learning rate at the end of the cosine decay [default: the preset's].
    #[arg(long, allow_negative_numbers = true)]
    pub min_lr: Option<f64>,
    /// Steps of linear learning-rate warm-up [default: the preset's].
    #[arg(long)]
    pub warmup_iters: Option<usize>,
    /// Step at which the cosine decay reaches --min-lr [default: the preset's].
    #[arg(long)]
    pub lr_decay_iters: Option<usize>,
    /// AdamW weight decay [default: the preset's].
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f64>,
    /// AdamW β1 [default: the preset's].
    #[arg(long, allow_negative_numbers = true)]
    pub beta1: Option<f64>,
    /// AdamW β2 [default: the preset's].
    #[arg(long, allow_negative_numbers = true)]
    pub beta2: Option<f64>,
    /// Clip gradients to this global norm (0 disables). [default: the preset's]
    #[arg(long, allow_negative_numbers = true)]
    pub grad_clip: Option<f64>,
    /// Steps between evaluations (the best model is saved then) [default: the preset's].
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// Batches per loss estimate. [default: the preset's]
    #[arg(long)]
    pub eval_iters: Option<usize>,
    /// Steps between lines in metrics.jsonl [default: the preset's].
    #[arg(long)]
    pub log_interval: Option<usize>,
    /// Fraction of the data (its end) held out for validation. [default: the preset's]
    #[arg(long, allow_negative_numbers = true)]
    pub val_fraction: Option<f64>,
    /// Seed of the initialisation, batches and dropout [default: the preset's].
    #[arg(long)]
    pub seed: Option<u64>,
}

impl Overrides {
    pub fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        if let Some(a) = &self.arch {
            c.arch = attn::train::Arch::parse(a)?;
        }
        if self.n_kv_head.is_some() {
            c.n_kv_head = self.n_kv_head;
        }
        if self.sliding_window.is_some() {
            c.sliding_window = self.sliding_window;
        }
        if self.intermediate_size.is_some() {
            c.intermediate_size = self.intermediate_size;
        }
        set!(
            n_layer,
            n_head,
            n_embd,
            block_size,
            dropout,
            tokenizer,
            batch_size,
            grad_accum,
            max_iters,
            lr,
            min_lr,
            warmup_iters,
            lr_decay_iters,
            weight_decay,
            beta1,
            beta2,
            grad_clip,
            eval_interval,
            eval_iters,
            log_interval,
            val_fraction,
            seed
        );
        Ok(())
    }
}

#[derive(Args)]
pub struct TrainArgs {
    /// Training text files (default: the preset's corpus under $ATTN_DATA_DIR).
    #[arg(long, num_args = 1..)]
    data: Vec<PathBuf>,
    /// Train on a folder of token shards written by `attn data tokenize` instead of
    /// text: memory-mapped, never tokenized again; its tokenizer and validation split
    /// are the ones the shards were written with.
    #[arg(long, conflicts_with_all = ["data", "tokenizer", "val_fraction", "encoding"])]
    shards: Option<PathBuf>,
    /// Output folder: the best model (HF layout), checkpoint/, metrics.jsonl, loss.png.
    #[arg(long)]
    out: PathBuf,
    /// Recipe to start from (shakespeare-char-cpu, shakespeare-char, gpt2-small).
    #[arg(long, default_value = "shakespeare-char-cpu")]
    preset: String,
    /// Encoding of the data files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Continue the run saved in --out (its saved settings are used; --max-iters may extend it).
    #[arg(long)]
    resume: bool,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    json: bool,
    /// Start a new run in an --out folder that already holds a model or a run
    /// (replacing them); without it such a folder is refused.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Where to train: auto (a CUDA GPU when one is found, else the CPU), cpu, cuda,
    /// or cuda:N.
    #[arg(long, default_value = "auto")]
    device: attn::kernels::cuda::Device,
    /// The matrix products' arithmetic on a GPU: auto (bf16 where the GPU has it),
    /// bf16 (mixed precision: weights, gradients and optimizer state stay f32), tf32 or
    /// f32. The CPU computes in f32.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    overrides: Overrides,
}

/// The corpus a preset trains on by default, relative to the data folder.
fn default_corpus(preset: &str) -> &'static str {
    match preset {
        "shakespeare-char-cpu" | "shakespeare-char" => "tinyshakespeare/input.txt",
        _ => "gutenberg",
    }
}

fn resolve_data(args: &TrainArgs) -> Result<Vec<PathBuf>> {
    if !args.data.is_empty() {
        for p in &args.data {
            attn::guard::regular_file(p)?;
        }
        return Ok(args.data.clone());
    }
    let dir = crate::data_dir();
    let wanted = dir.join(default_corpus(&args.preset));
    if wanted.is_file() {
        return Ok(vec![wanted]);
    }
    if wanted.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&wanted)
            .map_err(|e| Error::io(&wanted, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    Err(Error::invalid(
        "data",
        format!(
            "no training text given and none found at {}: pass --data FILE..., or set ATTN_DATA_DIR \
             to a folder containing {} (for example the tinyshakespeare input.txt)",
            wanted.display(),
            default_corpus(&args.preset)
        ),
    ))
}

/// The shard folder, or the text files, the arguments name.
fn data_spec(a: &TrainArgs) -> Result<DataSpec> {
    Ok(match &a.shards {
        Some(dir) => DataSpec::shards(dir.clone()),
        None => DataSpec::text(resolve_data(a)?, a.encoding),
    })
}

pub fn run(a: TrainArgs) -> Result<()> {
    // The device first: asking for a GPU that is not there writes nothing.
    let gpu = crate::open_device(a.device, &a.dtype)?;
    let mut trainer = if a.resume {
        // Without --data or --shards the run's own data.
        let data = if a.data.is_empty() && a.shards.is_none() {
            None
        } else {
            Some(data_spec(&a)?)
        };
        let t = Trainer::resume(&a.out, a.overrides.max_iters, data)?;
        eprintln!("resuming {} at step {}", a.out.display(), t.step());
        t
    } else {
        let mut config = TrainConfig::preset(&a.preset)?;
        a.overrides.apply(&mut config)?;
        config.validate()?;
        let data = data_spec(&a)?;
        if a.out.join(attn::train::CHECKPOINT_DIR).exists() && !a.overwrite {
            return Err(Error::bad_file(
                &a.out,
                "already holds a training run: pass --resume to continue it, --overwrite to start again, or choose another --out",
            ));
        }
        let inputs: Vec<&Path> = data
            .files
            .iter()
            .map(|f| f.as_path())
            .chain(data.shards.as_deref())
            .collect();
        attn::guard::OutputDir::check("--out", &a.out, &inputs, a.overwrite)?;
        let t = Trainer::new(config, data, &a.out)?;
        if a.overwrite {
            // The old run's log and plot would mix with this one's.
            for f in [attn::train::METRICS_FILE, "loss.png"] {
                let p = a.out.join(f);
                if p.symlink_metadata().is_ok() {
                    std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                }
            }
        }
        t
    };
    if let Some(gpu) = gpu {
        let i = gpu.info();
        eprintln!(
            "training on the GPU: {} ({:.0} GiB), {} matrix products{}",
            i.name,
            i.memory as f64 / (1u64 << 30) as f64,
            gpu.precision().name(),
            if a.device == attn::kernels::cuda::Device::Auto {
                " — --device cpu to train on the CPU"
            } else {
                ""
            }
        );
        trainer.to_gpu(gpu)?;
    }
    let cfg = trainer.config().clone();
    let arch = match cfg.arch {
        attn::train::Arch::Gpt2 => "GPT-2".to_string(),
        a => {
            let name = match a {
                attn::train::Arch::Qwen2 => "Qwen2",
                attn::train::Arch::Mistral => "Mistral",
                _ => "Llama",
            };
            let window = cfg
                .sliding_window
                .map(|w| format!(", window {w}"))
                .unwrap_or_default();
            format!("{name} ({} key/value heads{window})", cfg.kv_heads())
        }
    };
    eprintln!(
        "model: {arch}, {} layers, {} heads, {} wide, context {}, vocab {} — {:.2}M parameters; {} training / {} validation tokens",
        cfg.n_layer,
        cfg.n_head,
        cfg.n_embd,
        cfg.block_size,
        trainer.vocab_size(),
        trainer.param_count() as f64 / 1e6,
        trainer.splits().train.len(),
        trainer.splits().val.len()
    );
    let pb = ProgressBar::new(cfg.max_iters as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    pb.set_position(trainer.step() as u64);
    let started = Instant::now();
    let mut smoothed_tps = None::<f64>;
    let out = a.out.clone();
    let summary = trainer.run(&mut |event| match event {
        Event::Step(s) => {
            let tps = smoothed_tps.map_or(s.tokens_per_sec, |t| 0.9 * t + 0.1 * s.tokens_per_sec);
            smoothed_tps = Some(tps);
            pb.set_position(s.step as u64);
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                s.loss, s.lr, tps
            ));
        }
        Event::Eval(e) => {
            let val = e.val_loss.map_or("-".to_string(), |v| format!("{v:.4}"));
            pb.suspend(|| {
                eprintln!(
                    "step {:>6}: train loss {:.4}, val loss {}{}",
                    e.step,
                    e.train_loss,
                    val,
                    if e.best { " (best, saved)" } else { "" }
                )
            });
            if let Err(err) =
                crate::plot::plot_metrics(&out.join(METRICS_FILE), &out.join("loss.png"))
            {
                pb.suspend(|| eprintln!("warning: could not draw loss.png: {err}"));
            }
        }
    })?;
    pb.finish_and_clear();
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "done: {} steps in {:.1} s ({:.1} s training); best val loss {}; model in {}",
        summary.steps,
        wall,
        summary.train_seconds,
        summary
            .best_val_loss
            .map_or("-".into(), |v| format!("{v:.4}")),
        display(&a.out)
    );
    if a.json {
        let mut v = serde_json::to_value(&summary).unwrap();
        v["wall_seconds"] = wall.into();
        crate::print_json(&v);
    }
    Ok(())
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
