//! `attn bench`: tokens per second of complete training steps, and of decoding.

use std::path::PathBuf;
use std::time::Instant;

use attn::checkpoint::load_causal_lm;
use attn::generate::{generate_ids, SamplingConfig};
use attn::models::gpt2::Gpt2;
use attn::models::CausalLm;
use attn::nn::{default_device, ParamBuilder};
use attn::rng::Rng;
use attn::train::{TrainConfig, Trainer};
use attn::{Error, Result};
use clap::{Args, Subcommand};

use crate::train::Overrides;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tokens/s of complete training steps (forward, backward, clipping, AdamW) on random tokens.
    Train(BenchTrainArgs),
    /// Decode tokens/s at batch 1 with the KV cache (greedy), and prefill tokens/s.
    Generate(BenchGenerateArgs),
}

#[derive(Args)]
pub struct BenchTrainArgs {
    #[arg(long, default_value = "shakespeare-char-cpu")]
    preset: String,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Vocabulary size (default: 65, the char vocabulary of tinyshakespeare, or 50257 for BPE presets).
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args)]
pub struct BenchGenerateArgs {
    /// A trained model folder.
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Or a preset's shape with random weights.
    #[arg(long)]
    preset: Option<String>,
    /// Tokens to decode (default: 128, or less to fit the context).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 1)]
    prompt_tokens: usize,
    #[arg(long)]
    vocab_size: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn vocab_for(config: &TrainConfig, explicit: Option<usize>) -> usize {
    explicit.unwrap_or(if config.tokenizer == "char" {
        65
    } else {
        50257
    })
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train(a) => bench_train(a),
        BenchCommand::Generate(a) => bench_generate(a),
    }
}

fn bench_train(a: BenchTrainArgs) -> Result<()> {
    if a.steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    let mut config = TrainConfig::preset(&a.preset)?;
    a.overrides.apply(&mut config);
    let vocab = vocab_for(&config, a.vocab_size);
    let n_tokens = (config.block_size + 1) * 64;
    let mut trainer = Trainer::synthetic(config.clone(), vocab, n_tokens, &default_device())?;
    for _ in 0..2 {
        trainer.train_step()?;
    }
    let t0 = Instant::now();
    let mut last_loss = 0.0;
    for _ in 0..a.steps {
        last_loss = trainer.train_step()?.loss;
    }
    let secs = t0.elapsed().as_secs_f64();
    let tokens = (a.steps * config.tokens_per_step()) as f64;
    let tps = tokens / secs;
    if a.json {
        crate::print_json(&serde_json::json!({
            "tokens_per_sec": tps,
            "seconds_per_step": secs / a.steps as f64,
            "steps": a.steps,
            "preset": a.preset,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "block_size": config.block_size, "batch_size": config.batch_size, "vocab_size": vocab,
            "last_loss": last_loss,
        }));
    } else {
        println!(
            "train {}: {:.0} tokens/s ({:.1} ms/step, {} steps)",
            a.preset,
            tps,
            1e3 * secs / a.steps as f64,
            a.steps
        );
    }
    Ok(())
}

fn bench_generate(a: BenchGenerateArgs) -> Result<()> {
    let device = default_device();
    let model: Box<dyn CausalLm> = match (&a.model, &a.preset) {
        (Some(dir), None) => load_causal_lm(dir, &device)?.model,
        (None, Some(p)) => {
            let config = TrainConfig::preset(p)?;
            let vocab = vocab_for(&config, a.vocab_size);
            let mut mc = attn::models::gpt2::Gpt2Config::new(
                vocab,
                config.block_size,
                config.n_embd,
                config.n_layer,
                config.n_head,
            );
            mc.set_dropout(0.0);
            let mut pb = ParamBuilder::init(Rng::new(1), &device);
            Box::new(Gpt2::new(mc, &mut pb)?)
        }
        _ => return Err(Error::invalid("model", "give --model DIR or --preset NAME")),
    };
    let ctx = model.context();
    let p = a.prompt_tokens.clamp(1, ctx - 1);
    let n = a.max_new_tokens.unwrap_or(128).min(ctx - p);
    let mut rng = Rng::new(7);
    let prompt: Vec<u32> = (0..p)
        .map(|_| rng.below(model.vocab_size()) as u32)
        .collect();
    let greedy = SamplingConfig {
        temperature: 0.0,
        ignore_eos: true, // measure a fixed number of tokens
        ..Default::default()
    };
    // Warm-up, then a timed run: the first token's time is the prefill.
    generate_ids(model.as_ref(), &prompt, 2, &greedy, &mut |_| true)?;
    let t0 = Instant::now();
    let mut first = None;
    let (ids, _) = generate_ids(model.as_ref(), &prompt, n, &greedy, &mut |_| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        true
    })?;
    let total = t0.elapsed().as_secs_f64();
    let prefill = first.unwrap_or(total);
    let decode_tps = (ids.len().saturating_sub(1)) as f64 / (total - prefill).max(1e-9);
    let overall = ids.len() as f64 / total;
    if a.json {
        crate::print_json(&serde_json::json!({
            "tokens_per_sec": overall,
            "decode_tokens_per_sec": decode_tps,
            "prefill_tokens_per_sec": p as f64 / prefill,
            "new_tokens": ids.len(),
            "prompt_tokens": p,
            "n_layer": model.n_layer(), "vocab_size": model.vocab_size(),
        }));
    } else {
        println!(
            "generate: {:.1} tokens/s overall, {:.1} decode tokens/s, prefill {} tokens in {:.1} ms",
            overall,
            decode_tps,
            p,
            prefill * 1e3
        );
    }
    Ok(())
}
