//! The `attn` command: a thin shell over the attn library. Progress goes to stderr,
//! results to stdout (one JSON object with `--json`), errors as one `error: ...` line
//! with a non-zero exit code.

mod bench;
mod classify;
mod data;
mod embed;
mod eval;
mod export;
mod generate;
mod plot;
mod pretrain;
mod quantize;
mod serve;
mod summarize;
mod tokenizer;
mod train;
mod translate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Training allocates and frees many buffers of hundreds of kilobytes each step. With
/// glibc's defaults those are mmap'd, unmapped on free and zero-faulted in again, which
/// took half of a step's time (kernel `clear_page`). Keep them in the heap instead.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

#[derive(Parser)]
#[command(
    name = "attn",
    version,
    about = "Transformer language models: tokenize, train, generate, evaluate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a decoder language model from scratch (GPT-2; Llama with --arch llama), or resume.
    Train(train::TrainArgs),
    /// Generate text from a trained model, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Translate stdin to stdout with an encoder-decoder model, or train one.
    Translate(translate::TranslateCommand),
    /// Summarize documents (one per line) with an encoder-decoder model, or train one.
    Summarize(summarize::SummarizeCommand),
    /// Pre-train an encoder-decoder (T5) with span corruption on documents, one per line.
    Pretrain(Box<translate::TrainArgs>),
    /// Text classification: train, predict, evaluate.
    #[command(subcommand)]
    Classify(classify::ClassifyCommand),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Train and save tokenizers.
    #[command(subcommand)]
    Tokenizer(tokenizer::TokenizerCommand),
    /// Corpus preparation: near-duplicate removal (MinHash, LSH), personal-data scrubbing,
    /// tokenizing into shards, corpus statistics.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Sentence embeddings from a BERT-style encoder (one text per line in, JSON out).
    Embed(embed::EmbedArgs),
    /// Write a model folder in Hugging Face layout, optionally in f16 or bf16.
    Export(export::ExportArgs),
    /// Store a GPT-2 or Llama folder's weights as f16, 8-bit or 4-bit blocks (faster decoding).
    Quantize(quantize::QuantizeArgs),
    /// Measure training and decoding speed.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Serve a model over HTTP (OpenAI-compatible API, playground, metrics).
    Serve(serve::ServeArgs),
}

/// The folder where corpora are looked up when `--data` is not given:
/// `$ATTN_DATA_DIR`, else `../shared/data`.
pub fn data_dir() -> PathBuf {
    std::env::var_os("ATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

/// A count flag that must be at least 1 (`--batch-size 0` would loop on nothing or divide
/// by zero).
pub fn at_least_1(flag: &str, v: usize) -> attn::Result<()> {
    if v == 0 {
        Err(attn::Error::invalid(flag, "must be at least 1"))
    } else {
        Ok(())
    }
}

/// Print a JSON value as one line on stdout.
pub fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// A reader that closes stdout early (`attn eval rouge --sentence ... | head`) ends the
/// process quietly, as it ends other Unix tools, instead of making `println!` panic.
/// Not for the server: it writes to sockets and must outlive clients that hang up.
fn default_sigpipe() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: restores the signal's default disposition; no handler is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        default_sigpipe();
    }
    let result = match cli.command {
        Command::Train(a) => train::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(c) => eval::run(c),
        Command::Tokenizer(c) => tokenizer::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Embed(a) => embed::run(a),
        Command::Data(c) => data::run(c),
        Command::Classify(c) => classify::run(c),
        Command::Translate(c) => translate::run(c),
        Command::Summarize(c) => summarize::run(c),
        Command::Pretrain(a) => pretrain::run(*a),
        Command::Export(a) => export::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Serve(a) => return serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The arguments a task's training run started with (kept in its checkpoint as
/// `argv`), parsed again to resume it.
fn saved_args<T: clap::Parser>(out: &std::path::Path, data: &serde_json::Value) -> attn::Result<T> {
    let argv: Vec<String> = serde_json::from_value(data["argv"].clone())
        .map_err(|_| attn::Error::bad_file(out, "the checkpoint does not record its arguments"))?;
    T::try_parse_from(std::iter::once("train".to_string()).chain(argv))
        .map_err(|e| attn::Error::bad_file(out, format!("its saved arguments do not parse: {e}")))
}

/// The GPU `device` names (`None`: the CPU) with its matrix products set to `dtype`;
/// a dtype other than f32 (or auto) on the CPU is refused.
pub(crate) fn open_device(
    device: attn::kernels::cuda::Device,
    dtype: &str,
) -> attn::Result<Option<attn::kernels::cuda::Gpu>> {
    let gpu = device.open()?;
    match &gpu {
        Some(g) => g.set_precision(attn::kernels::cuda::Precision::parse(dtype, g)?),
        None if dtype == "auto" || dtype == "f32" => {}
        None => {
            return Err(attn::Error::invalid(
                "--dtype",
                format!("{dtype} is for GPUs; the CPU computes in f32 (--dtype f32 or auto)"),
            ))
        }
    }
    Ok(gpu)
}
