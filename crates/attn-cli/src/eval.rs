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
    /// Accuracy, precision, recall, F1 and the confusion matrix of predicted labels
    /// against gold labels (one label per line in each file), as scikit-learn computes them.
    Classify(ClassifyArgs),
}

#[derive(Args)]
pub struct ClassifyArgs {
    #[arg(long)]
    pred: PathBuf,
    #[arg(long)]
    gold: PathBuf,
    #[arg(long)]
    json: bool,
}

fn read_labels(path: &std::path::Path) -> Result<Vec<String>> {
    let text = read_text(path, Encoding::Utf8)?;
    let labels: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        return Err(attn::Error::bad_file(
            path,
            format!("line {}: empty label", i + 1),
        ));
    }
    Ok(labels)
}

fn run_classify(a: ClassifyArgs) -> Result<()> {
    let report =
        attn::metrics::classification_report(&read_labels(&a.gold)?, &read_labels(&a.pred)?)?;
    if a.json {
        crate::print_json(&report.to_json());
    } else {
        println!("accuracy {:.4}", report.accuracy);
        println!(
            "{:>20} {:>9} {:>9} {:>9} {:>8}",
            "", "precision", "recall", "f1", "support"
        );
        for (l, c) in &report.per_class {
            println!(
                "{:>20} {:>9.4} {:>9.4} {:>9.4} {:>8}",
                l, c.precision, c.recall, c.f1, c.support
            );
        }
        for (name, p) in [
            ("macro", &report.macro_avg),
            ("micro", &report.micro),
            ("weighted", &report.weighted),
        ] {
            println!(
                "{:>20} {:>9.4} {:>9.4} {:>9.4}",
                name, p.precision, p.recall, p.f1
            );
        }
    }
    Ok(())
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
    let a = match cmd {
        EvalCommand::Perplexity(a) => a,
        EvalCommand::Classify(a) => return run_classify(a),
    };
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
