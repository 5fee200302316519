//! `attn bench`: tokens per second of complete training steps, and of decoding.

use std::path::PathBuf;
use std::time::Instant;

use attn::checkpoint::load_decoder;
use attn::engine::Decoder;
use attn::engine::DecoderSpec;
use attn::generate::{generate_ids, SamplingConfig};
use attn::kernels::WeightType;
use attn::models::CausalLm;
use attn::rng::Rng;
use attn::train::native::NativeDecoder;
use attn::train::{TrainConfig, Trainer};
use attn::{Error, Result};
use clap::{Args, Subcommand};

use crate::train::Overrides;

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum BenchCommand {
    /// Tokens/s of complete training steps (forward, backward, clipping, AdamW) on random tokens.
    Train(BenchTrainArgs),
    /// Decode tokens/s at batch 1 with the KV cache (greedy), and prefill tokens/s.
    Generate(BenchGenerateArgs),
    /// Memory read bandwidth with every thread of the pool streaming its share of a
    /// large buffer: the bound for decoding, which reads each weight once per token.
    Bandwidth(BenchBandwidthArgs),
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
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Where to train: auto, cpu, cuda or cuda:N (see `attn train --device`).
    #[arg(long, default_value = "auto")]
    device: attn::kernels::cuda::Device,
    /// The matrix products' arithmetic on a GPU (see `attn train --dtype`).
    #[arg(long, default_value = "auto")]
    dtype: String,
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
    /// Vocabulary size of a preset's random model (default: as bench train chooses).
    #[arg(long)]
    vocab_size: Option<usize>,
    /// Store the decoder's matrices as f32, f16, q8 or q4 for this run (default: as the
    /// folder holds them; f32 for presets).
    #[arg(long)]
    dtype: Option<String>,
    /// Also decode this many sequences together (inference engine) and report the
    /// total tokens/s of the batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BenchBandwidthArgs {
    /// Bytes read per pass, in MiB (well above the caches).
    #[arg(long, default_value_t = 1024)]
    mib: usize,
    /// Passes; the best is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Print one JSON object.
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
        BenchCommand::Bandwidth(a) => bench_bandwidth(a),
    }
}

fn bench_train(a: BenchTrainArgs) -> Result<()> {
    if a.steps == 0 {
        return Err(Error::invalid("steps", "must be at least 1"));
    }
    let mut config = TrainConfig::preset(&a.preset)?;
    a.overrides.apply(&mut config)?;
    let vocab = vocab_for(&config, a.vocab_size);
    let n_tokens = (config.block_size + 1) * 64;
    let gpu = crate::open_device(a.device, &a.dtype)?;
    let mut trainer = Trainer::synthetic(config.clone(), vocab, n_tokens)?;
    let device = match gpu {
        Some(gpu) => {
            let name = format!("{} ({})", gpu.info().name, gpu.precision().name());
            trainer.to_gpu(gpu)?;
            name
        }
        None => format!("CPU ({})", attn::kernels::isa_name()),
    };
    for _ in 0..2 {
        trainer.train_step()?;
    }
    attn::train::profile::reset();
    let t0 = Instant::now();
    let mut last_loss = 0.0;
    let mut times = Vec::with_capacity(a.steps);
    for _ in 0..a.steps {
        let t = Instant::now();
        last_loss = trainer.train_step()?.loss;
        times.push(t.elapsed().as_secs_f64());
    }
    let secs = t0.elapsed().as_secs_f64();
    // On a shared machine the mean mixes fast and slowed stretches; the median step and
    // the fastest tenth's bound compare builds more steadily.
    times.sort_by(f64::total_cmp);
    let (median, fast) = (times[times.len() / 2], times[times.len() / 10]);
    if attn::train::profile::enabled() {
        // Per-operation times of the native step (ATTN_PROFILE=1), per step; with the
        // batch in shards on several threads, the threads' times add up.
        eprintln!("(times summed over the threads that ran the batch's shards)");
        eprintln!(
            "{:<22}{:>10}{:>8}{:>8}",
            "operation", "ms/step", "%", "calls"
        );
        for (name, total, calls) in attn::train::profile::report() {
            eprintln!(
                "{name:<22}{:>10.2}{:>8.1}{:>8}",
                1e3 * total / a.steps as f64,
                100.0 * total / secs,
                calls / a.steps as u64
            );
        }
    }
    let tokens = (a.steps * config.tokens_per_step()) as f64;
    let tps = tokens / secs;
    if a.json {
        crate::print_json(&serde_json::json!({
            "tokens_per_sec": tps,
            "seconds_per_step": secs / a.steps as f64,
            "median_step_seconds": median,
            "p10_step_seconds": fast,
            "steps": a.steps,
            "preset": a.preset,
            "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
            "block_size": config.block_size, "batch_size": config.batch_size, "vocab_size": vocab,
            "last_loss": last_loss,
            "device": device,
        }));
    } else {
        println!(
            "train {}: {:.0} tokens/s ({:.1} ms/step, {} steps; median step {:.1} ms, \
             fastest tenth under {:.1} ms)",
            a.preset,
            tps,
            1e3 * secs / a.steps as f64,
            a.steps,
            1e3 * median,
            1e3 * fast
        );
    }
    Ok(())
}

fn bench_bandwidth(a: BenchBandwidthArgs) -> Result<()> {
    use rayon::prelude::*;
    if a.mib == 0 || a.repeats == 0 {
        return Err(Error::invalid(
            "mib",
            "--mib and --repeats must be at least 1",
        ));
    }
    let bytes = a
        .mib
        .checked_mul(1 << 20)
        .ok_or_else(|| Error::invalid("--mib", format!("{} MiB does not fit in memory", a.mib)))?;
    attn::guard::check_memory("--mib", bytes as f64)?;
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64)
        .into_par_iter()
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let threads = rayon::current_num_threads();
    let mut best = f64::INFINITY;
    let mut check = 0u64;
    for _ in 0..a.repeats {
        let t0 = Instant::now();
        let per = words.div_ceil(threads);
        let sum: u64 = buf
            .par_chunks(per)
            .map(|c| c.iter().fold(0u64, |s, &v| s.wrapping_add(v)))
            .reduce(|| 0, u64::wrapping_add);
        best = best.min(t0.elapsed().as_secs_f64());
        check ^= sum;
    }
    let gbs = (words * 8) as f64 / best / 1e9;
    if a.json {
        crate::print_json(&serde_json::json!({
            "read_gb_per_sec": gbs, "bytes": words * 8, "threads": threads, "checksum": check,
        }));
    } else {
        println!(
            "read bandwidth: {gbs:.1} GB/s ({} MiB, {threads} threads, best of {})",
            a.mib, a.repeats
        );
    }
    Ok(())
}

fn bench_generate(a: BenchGenerateArgs) -> Result<()> {
    let ty = a.dtype.as_deref().map(WeightType::parse).transpose()?;
    let engine: Decoder = match (&a.model, &a.preset) {
        (Some(dir), None) => match ty {
            Some(ty) => Decoder::load(dir, Some(ty))?,
            None => load_decoder(dir)?.0,
        },
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
            let spec = DecoderSpec::from_gpt2(&mc)?;
            let weights = NativeDecoder::init(&spec, (0.0, 0.0, 0.0), 1, 0.02)?.tensors();
            Decoder::from_tensors(mc.to_hf_json(), weights, ty.unwrap_or(WeightType::F32))?
        }
        _ => return Err(Error::invalid("model", "give --model DIR or --preset NAME")),
    };
    let model: &dyn CausalLm = &engine;
    // What one decoded token reads.
    let weight_bytes = engine.weight_bytes_per_token();
    let weight_type = engine.weight_type().name();
    let prompt_arithmetic = engine.weight_type().prompt_arithmetic();
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
    generate_ids(model, &prompt, 2, &greedy, &mut |_| true)?;
    let t0 = Instant::now();
    let mut first = None;
    let (ids, _) = generate_ids(model, &prompt, n, &greedy, &mut |_| {
        first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
        true
    })?;
    let total = t0.elapsed().as_secs_f64();
    let prefill = first.unwrap_or(total);
    // Several sequences at once: every weight read serves all of them.
    let batch_tps = match a.batch {
        0 => return Err(Error::invalid("batch", "must be at least 1")),
        1 => None,
        b => {
            // Each sequence keeps keys and values for every layer and position.
            let c = &engine.spec;
            attn::guard::check_memory(
                "--batch (the sequences' caches and activations)",
                b as f64
                    * (8.0 * c.n_layer as f64 * (p + n) as f64 * c.kv_width() as f64
                        + 4.0
                            * (p as f64 * 16.0 * c.d_model.max(c.inner) as f64
                                + c.vocab_size as f64)),
            )?;
            let prompts: Vec<Vec<u32>> = (0..b)
                .map(|_| {
                    (0..p)
                        .map(|_| rng.below(model.vocab_size()) as u32)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u32]> = prompts.iter().map(|x| x.as_slice()).collect();
            let t = Instant::now();
            let out = engine.generate_batch(&refs, n, &greedy)?;
            let tokens: usize = out.iter().map(|o| o.0.len()).sum();
            Some(tokens as f64 / t.elapsed().as_secs_f64())
        }
    };
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
            "engine": "native",
            "weight_type": weight_type,
            "weight_bytes_per_token": weight_bytes,
            "isa": attn::kernels::isa_name(),
            "prompt_arithmetic": prompt_arithmetic,
            "threads": rayon::current_num_threads(),
            "batch": a.batch,
            "batch_tokens_per_sec": batch_tps,
        }));
    } else {
        println!(
            "generate: {:.1} tokens/s overall, {:.1} decode tokens/s, prefill {} tokens in {:.1} ms ({}, prompt products in {})",
            overall,
            decode_tps,
            p,
            prefill * 1e3,
            attn::kernels::isa_name(),
            prompt_arithmetic
        );
        if let Some(t) = batch_tps {
            println!(
                "batch of {}: {t:.1} tokens/s in total (prompts and decoding)",
                a.batch
            );
        }
    }
    Ok(())
}
