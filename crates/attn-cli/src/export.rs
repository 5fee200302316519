//! `attn export`: write a model folder in HF layout with weights in a chosen dtype.

use std::path::PathBuf;

use attn::checkpoint::{export, FloatType};
use attn::Result;
use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportDtype {
    F32,
    F16,
    Bf16,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Model folder to read (gpt2, llama, bert or marian).
    #[arg(long)]
    model: PathBuf,
    /// Folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Weight type of the written folder.
    #[arg(long, value_enum, default_value_t = ExportDtype::F32)]
    dtype: ExportDtype,
    /// Replace a model already in --out (without it such a folder is refused; --out can
    /// never be --model itself).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: ExportArgs) -> Result<()> {
    let dtype = match a.dtype {
        ExportDtype::F32 => FloatType::F32,
        ExportDtype::F16 => FloatType::F16,
        ExportDtype::Bf16 => FloatType::Bf16,
    };
    attn::guard::OutputDir::check("--out", &a.out, &[&a.model], a.overwrite)?;
    export(&a.model, &a.out, dtype)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
