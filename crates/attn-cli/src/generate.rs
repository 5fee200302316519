//! `attn generate`.

use std::io::Write;
use std::path::PathBuf;

use attn::checkpoint::load_causal_lm;
use attn::generate::{generate, SamplingConfig};
use attn::Result;
use clap::Args;

#[derive(Args)]
pub struct GenerateArgs {
    /// Model folder (HF layout, as written by `attn train`).
    #[arg(long)]
    model: PathBuf,
    /// Text to continue (empty: start from the start token or a newline).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Most tokens to generate (fewer when the end-of-text token or a --stop text comes).
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 (or below 1e-4) means greedy. Default:
    /// generation_config.json, else 1.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// Keep only the K most likely tokens. Default: generation_config.json.
    #[arg(long)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability reaches P.
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// Divide the logits of tokens already present (HF's CTRL-style penalty); 1 disables.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f64,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text is generated (may be repeated).
    #[arg(long)]
    stop: Vec<String>,
    /// Do not print the prompt before the generated text.
    #[arg(long)]
    no_echo: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.stop.iter().any(|s| s.is_empty()) {
        return Err(attn::Error::invalid(
            "--stop",
            "an empty stop text would stop before the first token",
        ));
    }
    let loaded = load_causal_lm(&a.model)?;
    let g = &loaded.generation;
    let sampling = SamplingConfig {
        temperature: a
            .temperature
            .or_else(|| g["temperature"].as_f64())
            .unwrap_or(1.0),
        top_k: a.top_k.or_else(|| g["top_k"].as_u64().map(|k| k as usize)),
        top_p: a.top_p.or_else(|| g["top_p"].as_f64()),
        repetition_penalty: a.repetition_penalty,
        seed: a.seed,
        ..Default::default()
    };
    sampling.validate()?;
    let mut out = std::io::stdout().lock();
    let mut write = |s: &str| -> bool {
        out.write_all(s.as_bytes())
            .and_then(|_| out.flush())
            .is_ok()
    };
    let echo = !a.no_echo;
    let ctx = loaded.model.context();
    // Echo the part of the prompt the model will actually see, after a possible warning.
    let prompt_ids = loaded.tokenizer.encode(&a.prompt)?;
    if prompt_ids.len() > ctx - 1 {
        eprintln!(
            "warning: the prompt has {} tokens but the model's context is {ctx}: only its last {} tokens are used",
            prompt_ids.len(),
            ctx - 1
        );
    }
    if echo {
        let kept = &prompt_ids[prompt_ids.len().saturating_sub(ctx - 1)..];
        write(&loaded.tokenizer.decode(kept)?);
    }
    let result = generate(
        loaded.model.as_ref(),
        &loaded.tokenizer,
        &a.prompt,
        a.max_new_tokens,
        &sampling,
        &a.stop,
        &mut write,
    )?;
    write("\n");
    eprintln!(
        "[{} tokens, finished: {:?}]",
        result.ids.len(),
        result.finish
    );
    Ok(())
}
