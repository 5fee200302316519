//! `attn quantize`: store a decoder folder's (GPT-2, Llama) weight matrices as f16, 8-bit or 4-bit blocks,
//! and optionally measure what that costs in perplexity on a text.

use std::path::PathBuf;
use std::time::Instant;

use attn::checkpoint::{read_config, resolve_dir, TOKENIZER};
use attn::data::{normalize, read_text, Encoding};
use attn::engine::Decoder;
use attn::kernels::WeightType;
use attn::metrics::perplexity;
use attn::tokenizer::Tokenizer;
use attn::{Error, Result};
use clap::Args;

#[derive(Args)]
pub struct QuantizeArgs {
    /// A decoder model folder, GPT-2 or Llama (f32, f16 or bf16 weights).
    #[arg(long)]
    model: PathBuf,
    /// Where to write the new folder (it must not be the model folder).
    #[arg(long)]
    out: PathBuf,
    /// f16, q8 (8-bit blocks of 32 with an f16 scale) or q4 (4-bit blocks of 32).
    #[arg(long)]
    dtype: String,
    /// Also score this text with both models and print the perplexity change.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Window length for the perplexity (default: the model's context).
    #[arg(long)]
    max_length: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Replace a model already in --out (without it such a folder is refused).
    #[arg(long)]
    overwrite: bool,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let ty = WeightType::parse(&a.dtype)?;
    if ty == WeightType::F32 {
        return Err(Error::invalid(
            "dtype",
            "f32 is what the model already is; choose f16, q8 or q4",
        ));
    }
    let src = resolve_dir(&a.model).unwrap_or(a.model.clone());
    let config = read_config(&src)?;
    let model_type = config.get("model_type").and_then(|v| v.as_str());
    if model_type
        .and_then(attn::engine::Family::of_model_type)
        .is_none()
    {
        return Err(Error::invalid(
            "model",
            format!(
                "model_type {model_type:?}: attn quantize supports decoder folders ({})",
                attn::engine::DECODER_TYPES.join(", ")
            ),
        ));
    }
    let mut inputs = vec![src.as_path()];
    if let Some(d) = &a.eval_data {
        inputs.push(d.as_path());
    }
    attn::guard::OutputDir::check("--out", &a.out, &inputs, a.overwrite)?;
    let t0 = Instant::now();
    let engine = Decoder::load(&src, Some(ty))?;
    engine.save(&a.out, Some(&src))?;
    let secs = t0.elapsed().as_secs_f64();
    let (before, after) = (dir_bytes(&src), dir_bytes(&a.out));
    let mut report = serde_json::json!({
        "dtype": ty.name(),
        "out": a.out,
        "bytes_before": before,
        "bytes_after": after,
        "weight_bytes_per_token": engine.weight_bytes_per_token(),
        "seconds": secs,
    });
    if !a.json {
        println!(
            "wrote {} ({}): {:.1} MB -> {:.1} MB in {:.1} s",
            a.out.display(),
            ty.name(),
            before as f64 / 1e6,
            after as f64 / 1e6,
            secs
        );
    }
    if let Some(data) = &a.eval_data {
        let reference = Decoder::load(&src, Some(WeightType::F32))?;
        let tokenizer = Tokenizer::from_file(&src.join(TOKENIZER))?;
        let text = normalize(&read_text(data, a.encoding)?);
        let ids = tokenizer.encode(&text)?;
        let window = a.max_length.unwrap_or(engine.context());
        let base = perplexity(&reference, &ids, window, window, 8)?;
        let quant = perplexity(&engine, &ids, window, window, 8)?;
        let change = quant.perplexity / base.perplexity - 1.0;
        report["perplexity_f32"] = base.perplexity.into();
        report["perplexity"] = quant.perplexity.into();
        report["perplexity_change"] = change.into();
        report["tokens_scored"] = base.tokens.into();
        if !a.json {
            println!(
                "perplexity on {} ({} tokens): f32 {:.4}, {} {:.4} ({:+.3}%)",
                data.display(),
                base.tokens,
                base.perplexity,
                ty.name(),
                quant.perplexity,
                100.0 * change
            );
        }
    }
    if a.json {
        crate::print_json(&report);
    }
    Ok(())
}
