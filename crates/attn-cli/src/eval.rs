//! `attn eval ...`.

use std::path::PathBuf;

use attn::checkpoint::load_causal_lm;
use attn::data::{normalize, read_text, Encoding};
use attn::metrics::perplexity;
use attn::nn::default_device;
use attn::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a language model on a text file.
    Perplexity(PerplexityArgs),
}

#[derive(Args)]
pub struct PerplexityArgs {
    /// Model folder.
    #[arg(long)]
    model: PathBuf,
    /// Text file to score.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Window length (default: the model's context).
    #[arg(long)]
    max_length: Option<usize>,
    /// How far each window advances (default: the window length, i.e. disjoint windows).
    #[arg(long)]
    stride: Option<usize>,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Print one JSON object {"nll", "perplexity", "tokens"}.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    let EvalCommand::Perplexity(a) = cmd;
    let loaded = load_causal_lm(&a.model, &default_device())?;
    let text = normalize(&read_text(&a.data, a.encoding)?);
    let ids = loaded.tokenizer.encode(&text)?;
    let max_length = a.max_length.unwrap_or(loaded.model.context());
    let stride = a.stride.unwrap_or(max_length);
    let p = perplexity(
        loaded.model.as_ref(),
        &ids,
        max_length,
        stride,
        a.batch_size,
    )?;
    if a.json {
        crate::print_json(&serde_json::to_value(p).unwrap());
    } else {
        println!(
            "nll {:.4} nats/token, perplexity {:.3}, over {} tokens",
            p.nll, p.perplexity, p.tokens
        );
    }
    Ok(())
}
