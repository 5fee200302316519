//! `attn classify train | predict | eval`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use attn::data::labelled::{read_labelled, split_holdout};
use attn::data::Encoding;
use attn::models::bert::LoraConfig;
use attn::tasks::classify::{
    saved_run, train, Begin, Classifier, ClassifyConfig, ClassifyEvent, LongTexts, Start,
};
use attn::{Error, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum ClassifyCommand {
    /// Train a text classifier from labelled data (from scratch or by fine-tuning --model).
    Train(TrainArgs),
    /// Label texts read from stdin, one per line.
    Predict(PredictArgs),
    /// Score a classifier on labelled data.
    Eval(EvalArgs),
}

/// `classify train`'s arguments on their own, to read back a run's saved arguments.
#[derive(Parser)]
struct SavedTrainArgs {
    #[command(flatten)]
    args: TrainArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Training data: TSV (label<TAB>text), CSV with label,text header, JSONL, or a
    /// folder with one file per class.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Validation data (same formats); without it a fraction of --data is held out.
    #[arg(long)]
    valid: Option<PathBuf>,
    /// Fraction held out when --valid is not given (shuffled with --seed).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Pretrained HF encoder folder to fine-tune (bert, roberta, xlm-roberta, distilbert).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Train from scratch: bert-small (4 layers × 256) or bert-tiny (2 layers × 128)
    /// [default without --model: bert-small].
    #[arg(long)]
    preset: Option<String>,
    /// Output folder: the best epoch's model (HF …ForSequenceClassification of the model's family).
    #[arg(long)]
    out: PathBuf,
    /// Replace a model already in --out (without it such a folder is refused; --out can
    /// never be --model itself).
    #[arg(long)]
    overwrite: bool,
    /// Continue the run in --out from its checkpoint (written after every epoch), with
    /// the data and settings it started with.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Encoding of the data files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// LoRA rank: adapters on the query and value projections instead of full fine-tuning.
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA scale numerator (the adapters are scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Save LoRA adapters in adapter_model.safetensors instead of merging them.
    #[arg(long)]
    lora_separate: bool,
    /// Passes over the training data [default: 3; 4 for bert-small].
    #[arg(long)]
    epochs: Option<usize>,
    /// Examples per step [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 5e-5 fine-tuning, 5e-4 with LoRA or bert-small,
    /// 1e-3 bert-tiny].
    #[arg(long)]
    lr: Option<f64>,
    /// AdamW weight decay [default: 0.01].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Fraction of the steps warming the learning rate up, then linear decay to 0
    /// [default: 0.1].
    #[arg(long)]
    warmup_ratio: Option<f64>,
    /// Longest text in tokens; longer ones are truncated [default: 128, at most the
    /// model's position limit].
    #[arg(long)]
    max_len: Option<usize>,
    /// Tokenizer for training from scratch: bpe:N or char [default: bpe:8000].
    #[arg(long)]
    tokenizer: Option<String>,
    /// Dropout probability, in [0, 1) [default: 0.1].
    #[arg(long)]
    dropout: Option<f32>,
    /// Seed of the initialisation, shuffling and hold-out split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    json: bool,
}

/// What to do with texts longer than --max-len.
#[derive(Clone, Copy, ValueEnum)]
pub enum Long {
    /// Keep the first --max-len tokens (what training saw).
    Truncate,
    /// Score consecutive windows of --max-len tokens and average their probabilities
    /// (weighted by each window's length).
    Windows,
}

impl From<Long> for LongTexts {
    fn from(l: Long) -> Self {
        match l {
            Long::Truncate => LongTexts::Truncate,
            Long::Windows => LongTexts::Windows,
        }
    }
}

#[derive(Args)]
pub struct PredictArgs {
    /// Classifier folder (written by `attn classify train`, or an HF
    /// BertForSequenceClassification folder).
    #[arg(long)]
    model: PathBuf,
    /// Print one JSON object per line with the label and every class probability.
    #[arg(long)]
    json: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Tokens per text [default: the training --max-len]; at most the model's position
    /// limit.
    #[arg(long)]
    max_len: Option<usize>,
    /// Texts longer than --max-len: truncate them, or average over windows.
    #[arg(long, value_enum, default_value_t = Long::Truncate)]
    long: Long,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Classifier folder.
    #[arg(long)]
    model: PathBuf,
    /// Labelled data: TSV, CSV, JSONL or a folder with one file per class.
    #[arg(long)]
    data: PathBuf,
    /// Encoding of the data files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Print one JSON object (accuracy, P/R/F1, confusion matrix).
    #[arg(long)]
    json: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Tokens per text [default: the training --max-len]; at most the model's position
    /// limit.
    #[arg(long)]
    max_len: Option<usize>,
    /// Texts longer than --max-len: truncate them, or average over windows.
    #[arg(long, value_enum, default_value_t = Long::Truncate)]
    long: Long,
}

/// Load a classifier with the --max-len asked for.
fn load(model: &std::path::Path, max_len: Option<usize>) -> Result<Classifier> {
    let mut clf = Classifier::load(model)?;
    if let Some(n) = max_len {
        clf.set_max_len(n)?;
    }
    Ok(clf)
}

/// Say how many texts were longer than the model reads.
fn warn_long(count: usize, total: usize, clf: &Classifier, long: Long) {
    if count > 0 {
        let what = match long {
            Long::Truncate => "only their first tokens were classified (--max-len up to the model's limit, or --long windows, reads them whole)",
            Long::Windows => "they were scored as the average of their windows",
        };
        eprintln!(
            "warning: {count} of {total} texts are longer than {} tokens; {what}",
            clf.max_len
        );
    }
}

pub fn run(cmd: ClassifyCommand) -> Result<()> {
    match cmd {
        ClassifyCommand::Train(a) => run_train(a),
        ClassifyCommand::Predict(a) => run_predict(a),
        ClassifyCommand::Eval(a) => run_eval(a),
    }
}

fn run_train(a: TrainArgs) -> Result<()> {
    if a.resume {
        return resume_train(a.out, a.json);
    }
    // The arguments after `train`, kept in the checkpoint for --resume.
    let argv: Vec<String> = std::env::args()
        .skip_while(|x| x != "train")
        .skip(1)
        .collect();
    run_train_with(a, Some(argv))
}

/// Continue the run in `out` with the arguments it started with.
fn resume_train(out: PathBuf, json: bool) -> Result<()> {
    let (_, data) = saved_run(&out)?;
    let mut a = crate::saved_args::<SavedTrainArgs>(&out, &data)?.args;
    a.out = out;
    a.json |= json;
    run_train_with(a, None)
}

/// Train with `a`: a new run when `argv` (its arguments, kept for --resume) is given,
/// else the continuation of the run in `a.out`.
fn run_train_with(a: TrainArgs, argv: Option<Vec<String>>) -> Result<()> {
    let data_path = a
        .data
        .clone()
        .ok_or_else(|| Error::invalid("--data", "the training data is required"))?;
    let mut cfg = ClassifyConfig {
        seed: a.seed,
        merge_lora: !a.lora_separate,
        ..Default::default()
    };
    let start = match (&a.model, a.preset.as_deref()) {
        (Some(m), _) => Start::Pretrained(m.clone()),
        (None, Some("bert-small")) | (None, None) => {
            cfg.lr = 5e-4;
            cfg.epochs = 4;
            Start::Scratch
        }
        (None, Some("bert-tiny")) => {
            cfg.lr = 1e-3;
            cfg.hidden = 128;
            cfg.layers = 2;
            cfg.heads = 2;
            Start::Scratch
        }
        (None, Some(p)) => {
            return Err(Error::invalid(
                "preset",
                format!("unknown preset {p:?} (bert-small, bert-tiny)"),
            ))
        }
    };
    if let Some(r) = a.lora_rank {
        cfg.lora = Some(LoraConfig {
            r,
            lora_alpha: a.lora_alpha,
        });
        cfg.lr = 5e-4;
    }
    macro_rules! set { ($($f:ident),*) => { $( if let Some(v) = a.$f.clone() { cfg.$f = v; } )* }; }
    set!(
        epochs,
        batch_size,
        lr,
        weight_decay,
        warmup_ratio,
        max_len,
        tokenizer,
        dropout
    );
    cfg.validate()?;
    let inputs: Vec<&std::path::Path> = [Some(&data_path), a.valid.as_ref(), a.model.as_ref()]
        .into_iter()
        .flatten()
        .map(|p| p.as_path())
        .collect();
    if argv.is_some() {
        attn::guard::OutputDir::check("--out", &a.out, &inputs, a.overwrite)?;
    }
    let data = read_labelled(&data_path, a.encoding)?;
    let (train_set, val_set) = match &a.valid {
        Some(v) => (data, read_labelled(v, a.encoding)?),
        None => split_holdout(data, a.val_fraction, a.seed)?,
    };
    eprintln!(
        "{} training / {} validation examples",
        train_set.len(),
        val_set.len()
    );
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}").unwrap(),
    );
    let run_data = serde_json::json!({ "argv": argv });
    let begin = match &argv {
        Some(_) => Begin::New { data: &run_data },
        None => Begin::Resume,
    };
    let summary = train(
        &cfg,
        &start,
        &train_set,
        &val_set,
        &a.out,
        begin,
        &mut |e| match e {
            ClassifyEvent::Step(s) => {
                let (step, total, loss) = (s.step, s.total, s.loss);
                // Without a terminal the bar is hidden: leave a line in the log now and then.
                if !std::io::stderr().is_terminal() && step % 50 == 0 {
                    eprintln!("step {step}/{total}: loss {loss:.4}");
                }
                pb.set_length(total as u64);
                pb.set_position(step as u64);
                pb.set_message(format!("loss {loss:.4}"));
            }
            ClassifyEvent::Eval(r) => pb.suspend(|| {
                eprintln!(
                    "epoch {}: train loss {:.4}, val accuracy {:.4}, macro F1 {:.4} ({:.0} s){}",
                    r.epoch,
                    r.train_loss,
                    r.val_accuracy,
                    r.val_macro_f1,
                    r.seconds,
                    if r.best { " (best, saved)" } else { "" }
                )
            }),
        },
    )?;
    pb.finish_and_clear();
    eprintln!(
        "best epoch {} (val accuracy {:.4}); trained {} of {} parameters ({:.2}%) in {:.0} s; model in {}",
        summary.best_epoch,
        summary.best_val_accuracy,
        summary.trainable_params,
        summary.total_params,
        100.0 * summary.trainable_params as f64 / summary.total_params as f64,
        summary.train_seconds,
        a.out.display()
    );
    if a.json {
        crate::print_json(&serde_json::to_value(&summary).unwrap());
    }
    Ok(())
}

fn run_predict(a: PredictArgs) -> Result<()> {
    crate::at_least_1("--batch-size", a.batch_size)?;
    let clf = load(&a.model, a.max_len)?;
    let texts: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::invalid("stdin", format!("cannot read the texts: {e}")))?;
    let texts: Vec<String> = texts.iter().map(|t| attn::data::normalize(t)).collect();
    let (probs, long_count) = clf.predict_long(&texts, a.batch_size, a.long.into())?;
    warn_long(long_count, texts.len(), &clf, a.long);
    let mut out = std::io::stdout().lock();
    for p in probs {
        let best = (0..p.len())
            .max_by(|&x, &y| p[x].total_cmp(&p[y]))
            .unwrap_or(0);
        let line = if a.json {
            let probs: serde_json::Map<String, serde_json::Value> = clf
                .labels
                .iter()
                .zip(&p)
                .map(|(l, v)| (l.clone(), (*v as f64).into()))
                .collect();
            serde_json::json!({ "label": clf.labels[best], "probabilities": probs }).to_string()
        } else {
            clf.labels[best].clone()
        };
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    Ok(())
}

fn run_eval(a: EvalArgs) -> Result<()> {
    crate::at_least_1("--batch-size", a.batch_size)?;
    let clf = load(&a.model, a.max_len)?;
    let data = read_labelled(&a.data, a.encoding)?;
    let (report, long_count) = clf.evaluate_long(&data, a.batch_size, a.long.into())?;
    warn_long(long_count, data.len(), &clf, a.long);
    if a.json {
        crate::print_json(&report.to_json());
    } else {
        println!(
            "accuracy {:.4}; macro P {:.4} R {:.4} F1 {:.4} over {} examples",
            report.accuracy,
            report.macro_avg.precision,
            report.macro_avg.recall,
            report.macro_avg.f1,
            data.len()
        );
    }
    Ok(())
}
