//! `attn translate` (decode stdin to stdout) and `attn translate train`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use attn::data::Encoding;
use attn::generate::beam::BeamConfig;
use attn::tasks::translate::{
    read_pairs_tsv, read_parallel, saved_run, train, Begin, TranslateConfig, TranslateEvent,
    Translator,
};
use attn::{Error, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct TranslateCommand {
    #[command(subcommand)]
    sub: Option<TranslateSub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum TranslateSub {
    /// Train an encoder-decoder Transformer on parallel text.
    Train(TrainArgs),
}

#[derive(Args)]
pub(crate) struct RunArgs {
    /// Model folder (HF MarianMTModel or T5ForConditionalGeneration layout with
    /// tokenizer.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Beam size; 1 is greedy.
    #[arg(long, default_value_t = 4)]
    beam: usize,
    /// Exponent of the length normalisation of beam scores (transformers'
    /// length_penalty): above 0 favours longer translations.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    length_penalty: f64,
    /// Most tokens to generate per sentence (transformers' max_new_tokens) [default:
    /// the model's limit].
    #[arg(long)]
    max_len: Option<usize>,
    /// Fewest tokens to generate: end-of-sentence is banned before (transformers'
    /// min_new_tokens).
    #[arg(long, default_value_t = 0)]
    min_len: usize,
    /// Never repeat an n-gram of this size in an output (0: no limit).
    #[arg(long, default_value_t = 0)]
    no_repeat_ngram_size: usize,
    /// Sentences decoded together (batched beam search).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

/// `translate train`'s arguments on their own, to read back a run's saved arguments.
#[derive(Parser)]
struct SavedTrainArgs {
    #[command(flatten)]
    args: TrainArgs,
}

/// The sequence-to-sequence jobs that share this command's training.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    Translate,
    Summarize,
    Pretrain,
}

impl Task {
    /// The word after which the run's own arguments start (kept for --resume).
    fn keyword(self) -> &'static str {
        match self {
            Task::Pretrain => "pretrain",
            _ => "train",
        }
    }
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// Source sentences, one per line (parallel to --tgt).
    #[arg(long, requires = "tgt")]
    src: Option<PathBuf>,
    /// Target sentences, one per line (parallel to --src).
    #[arg(long, requires = "src")]
    tgt: Option<PathBuf>,
    /// source<TAB>target[<TAB>ignored] lines (Tatoeba), instead of --src/--tgt.
    #[arg(long, conflicts_with_all = ["src", "tgt"])]
    pairs: Option<PathBuf>,
    /// Documents, one per line (pre-training: span corruption makes the pairs).
    #[arg(long, num_args = 1.., conflicts_with_all = ["src", "tgt", "pairs"])]
    data: Vec<PathBuf>,
    /// Fine-tune this model folder (marian or t5, with its tokenizer.json) instead of
    /// training a new model; the size flags are then the folder's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The family of a new model: marian (post-LN, sinusoidal positions) or t5 (T5
    /// v1.1: pre-RMS-norm, relative positions, gated GELU) [default: t5 for summarize
    /// and pretrain, marian for translate].
    #[arg(long)]
    arch: Option<String>,
    /// A new model's vocabulary: bpe (byte-level BPE of --vocab-size tokens) or char
    /// (every character of the training text: Chinese, for instance).
    #[arg(long, default_value = "bpe")]
    vocab: String,
    /// A new model's vocabulary from this tokenizer.json (another run's, say, so that
    /// two models share one vocabulary) instead of one built from the training text.
    #[arg(long, conflicts_with = "model")]
    tokenizer: Option<PathBuf>,
    /// Span corruption: the fraction of tokens hidden (pretrain).
    #[arg(long, default_value_t = 0.15)]
    noise_density: f64,
    /// Span corruption: the mean length of a hidden span (pretrain).
    #[arg(long, default_value_t = 3.0)]
    mean_span: f64,
    /// Validation source sentences (with --valid-tgt); without them pairs are held out.
    #[arg(long, requires = "valid_tgt")]
    valid_src: Option<PathBuf>,
    /// Validation target sentences (with --valid-src).
    #[arg(long, requires = "valid_src")]
    valid_tgt: Option<PathBuf>,
    /// Without --valid-*: test pairs held out (after a fixed shuffle of the data) and
    /// written to OUT/holdout.src and OUT/holdout.tgt; never used for training or
    /// choosing the checkpoint.
    #[arg(long, default_value_t = 1000)]
    holdout: usize,
    /// Without --valid-*: validation pairs taken next from the shuffled data.
    #[arg(long, default_value_t = 500)]
    valid_size: usize,
    /// Output folder: the best model (HF MarianMTModel layout), metrics.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Replace a model already in --out (without it such a folder is refused).
    #[arg(long)]
    overwrite: bool,
    /// Continue the run in --out from its checkpoint (written at every evaluation),
    /// with the data and settings it started with; --max-steps, when given, extends it.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Encoding of the data files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: Encoding,
    /// Width of the model (embeddings and hidden states).
    #[arg(long, default_value_t = TranslateConfig::default().d_model)]
    d_model: usize,
    /// Encoder layers, and as many decoder layers.
    #[arg(long, default_value_t = TranslateConfig::default().layers)]
    layers: usize,
    /// Attention heads (must divide --d-model).
    #[arg(long, default_value_t = TranslateConfig::default().heads)]
    heads: usize,
    /// Width of the feed-forward blocks.
    #[arg(long, default_value_t = TranslateConfig::default().ffn)]
    ffn: usize,
    /// Longest sentence in tokens; longer ones are truncated.
    #[arg(long, default_value_t = TranslateConfig::default().max_len)]
    max_len: usize,
    /// Dropout probability, in [0, 1); with --model it replaces the loaded model's own
    /// (a model pre-trained without dropout is fine-tuned with this one).
    #[arg(long, default_value_t = TranslateConfig::default().dropout)]
    dropout: f32,
    /// Shared byte-level BPE vocabulary of both languages.
    #[arg(long, default_value_t = TranslateConfig::default().vocab_size)]
    vocab_size: usize,
    /// Label smoothing of the cross-entropy, in [0, 1).
    #[arg(long, default_value_t = TranslateConfig::default().label_smoothing)]
    label_smoothing: f64,
    /// Peak learning rate, reached after --warmup steps, then ∝ 1/√step.
    #[arg(long, default_value_t = TranslateConfig::default().lr)]
    lr: f64,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = TranslateConfig::default().warmup)]
    warmup: usize,
    /// Optimiser steps in all.
    #[arg(long, default_value_t = TranslateConfig::default().max_steps)]
    max_steps: usize,
    /// Sentence pairs per step.
    #[arg(long, default_value_t = TranslateConfig::default().batch_size)]
    batch_size: usize,
    /// Steps between evaluations (validation loss and BLEU; the best is saved).
    #[arg(long, default_value_t = TranslateConfig::default().eval_interval)]
    eval_interval: usize,
    /// Validation pairs decoded for the BLEU at each evaluation.
    #[arg(long, default_value_t = TranslateConfig::default().bleu_sample)]
    bleu_sample: usize,
    /// Beam size for the validation BLEU.
    #[arg(long, default_value_t = TranslateConfig::default().beam)]
    beam: usize,
    /// Seed of the initialisation, batching and dropout.
    #[arg(long, default_value_t = TranslateConfig::default().seed)]
    seed: u64,
    /// Swap the two sides: translate what --tgt / the TSV's second column holds into
    /// the other (e.g. Tatoeba's Chinese into English).
    #[arg(long)]
    reverse: bool,
    /// sacreBLEU tokenizer for the validation BLEU (13a, intl, zh, char, none, or auto:
    /// zh when the targets hold Chinese, else 13a).
    #[arg(long, default_value = "auto")]
    bleu_tokenize: String,
    /// Print a JSON summary on stdout at the end.
    #[arg(long)]
    json: bool,
}

/// Documents, one per non-empty line of each file, as (document, document) pairs.
fn read_documents(
    files: &[PathBuf],
    encoding: Encoding,
) -> Result<(Vec<attn::tasks::translate::Pair>, usize)> {
    let mut out = vec![];
    let mut skipped = 0;
    for f in files {
        for line in attn::data::read_text(f, encoding)?.lines() {
            let doc = attn::data::normalize(line).trim().to_string();
            if doc.is_empty() {
                skipped += 1;
                continue;
            }
            out.push(attn::tasks::translate::Pair {
                src: doc.clone(),
                tgt: doc,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("data", "the files hold no documents"));
    }
    Ok((out, skipped))
}

/// Seed of the shuffle that splits a single parallel file into train / valid / test.
const HOLDOUT_SEED: u64 = 20_261_128;

pub fn run(cmd: TranslateCommand) -> Result<()> {
    match cmd.sub {
        Some(TranslateSub::Train(a)) => run_train(a, Task::Translate),
        None => run_decode(cmd.run, Task::Translate),
    }
}

pub(crate) fn run_decode(a: RunArgs, task: Task) -> Result<()> {
    let model = a.model.ok_or_else(|| {
        Error::invalid(
            "model",
            match task {
                Task::Summarize => "give --model DIR (or use `attn summarize train`)",
                _ => "give --model DIR (or use `attn translate train`)",
            },
        )
    })?;
    crate::at_least_1("--beam", a.beam)?;
    crate::at_least_1("--batch-size", a.batch_size)?;
    if let Some(n) = a.max_len {
        crate::at_least_1("--max-len", n)?;
    }
    if !a.length_penalty.is_finite() {
        return Err(Error::invalid(
            "--length-penalty",
            "must be a finite number",
        ));
    }
    let tr = Translator::load(&model)?;
    let c = &tr.model.spec;
    if a.beam > c.vocab_size {
        return Err(Error::invalid(
            "--beam",
            format!(
                "{} is more than the model's {} tokens",
                a.beam, c.vocab_size
            ),
        ));
    }
    // Each hypothesis of a batch keeps its decoder's keys and values (self- and
    // cross-attention) and a row of logits.
    let t = (a.max_len.unwrap_or(tr.max_len) + 1).min(c.context.unwrap_or(usize::MAX)) as f64;
    attn::guard::check_memory(
        "--beam × --batch-size × --max-len (the hypotheses decoded together, each with the \
         keys and values of up to --max-len tokens)",
        a.beam as f64
            * a.batch_size as f64
            * 4.0
            * (4.0 * c.decoder_layers as f64 * t * c.d_model as f64 + 3.0 * c.vocab_size as f64),
    )?;
    let beam = BeamConfig {
        num_beams: a.beam,
        length_penalty: a.length_penalty,
        max_new_tokens: a
            .max_len
            .unwrap_or(tr.max_len)
            .min(c.context.map_or(usize::MAX, |n| n - 1)),
        forced_eos: tr.forced_eos,
        suppress: Vec::new(),
        min_new_tokens: a.min_len,
        no_repeat_ngram_size: a.no_repeat_ngram_size,
    };
    if beam.min_new_tokens > beam.max_new_tokens {
        return Err(Error::invalid(
            "--min-len",
            format!(
                "{} is more than the {} tokens --max-len allows",
                beam.min_new_tokens, beam.max_new_tokens
            ),
        ));
    }
    let lines: Vec<String> = std::io::stdin()
        .lock()
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::invalid("stdin", format!("cannot read the input: {e}")))?;
    let texts: Vec<String> = lines.iter().map(|l| attn::data::normalize(l)).collect();
    let batch = a.batch_size.max(1);
    let mut out = std::io::stdout().lock();
    let mut truncated = 0;
    // Groups of several batches: sorted by length inside a group, written as they finish.
    for group in texts.chunks(batch * 16) {
        let (hyps, cut) = tr.translate(group, &beam, batch)?;
        truncated += cut;
        for h in hyps {
            if writeln!(out, "{h}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
    }
    if truncated > 0 {
        eprintln!("warning: {truncated} source sentences were longer than the model's {} tokens and were truncated", tr.max_len);
    }
    Ok(())
}

pub(crate) fn run_train(a: TrainArgs, task: Task) -> Result<()> {
    if a.resume {
        return resume_train(a.out, a.max_steps, a.json, task);
    }
    // The arguments after `train`, kept in the checkpoint for --resume.
    let argv: Vec<String> = std::env::args()
        .skip_while(|x| x != task.keyword())
        .skip(1)
        .collect();
    run_train_with(a, Some(argv), task)
}

/// Continue the run in `out` with the arguments it started with.
fn resume_train(out: PathBuf, max_steps: usize, json: bool, task: Task) -> Result<()> {
    let (_, data) = saved_run(&out)?;
    let mut a = crate::saved_args::<SavedTrainArgs>(&out, &data)?.args;
    let given = std::env::args().any(|x| x == "--max-steps" || x.starts_with("--max-steps="));
    if given {
        a.max_steps = max_steps;
    }
    a.out = out;
    a.json |= json;
    run_train_with(a, None, task)
}

/// Train with `a`: a new run when `argv` (its arguments, kept for --resume) is given,
/// else the continuation of the run in `a.out`.
fn run_train_with(a: TrainArgs, argv: Option<Vec<String>>, task: Task) -> Result<()> {
    let mut cfg = TranslateConfig::default();
    macro_rules! set { ($($f:ident),*) => { $( cfg.$f = a.$f.clone(); )* }; }
    set!(
        d_model,
        layers,
        heads,
        ffn,
        max_len,
        dropout,
        vocab_size,
        label_smoothing,
        lr,
        warmup,
        max_steps,
        batch_size,
        eval_interval,
        bleu_sample,
        beam,
        seed,
        bleu_tokenize,
        vocab
    );
    cfg.arch = a.arch.clone().unwrap_or_else(|| {
        match task {
            Task::Translate => "marian",
            _ => "t5",
        }
        .into()
    });
    cfg.init = a.model.clone();
    cfg.tokenizer = a.tokenizer.clone();
    cfg.metric = match task {
        Task::Translate => "bleu",
        Task::Summarize => "rouge",
        Task::Pretrain => "loss",
    }
    .into();
    if task == Task::Pretrain {
        cfg.span_corruption = Some((a.noise_density, a.mean_span));
    }
    cfg.validate()?;
    let inputs: Vec<&std::path::Path> = [
        &a.pairs,
        &a.src,
        &a.tgt,
        &a.valid_src,
        &a.valid_tgt,
        &a.model,
        &a.tokenizer,
    ]
    .into_iter()
    .flatten()
    .chain(&a.data)
    .map(|p| p.as_path())
    .collect();
    if argv.is_some() {
        attn::guard::OutputDir::check("--out", &a.out, &inputs, a.overwrite)?;
    }
    if let Some(model) = &a.model {
        // Before the held-out pairs are written to --out.
        attn::train::encdec::EncDecModel::type_of(model)?;
    }
    let (mut pairs, mut skipped) = match (&a.pairs, &a.src, &a.tgt) {
        _ if !a.data.is_empty() => read_documents(&a.data, a.encoding)?,
        _ if task == Task::Pretrain => {
            return Err(Error::invalid(
                "data",
                "give --data FILE... (one document per line)",
            ))
        }
        (Some(p), _, _) => read_pairs_tsv(p, a.encoding)?,
        (None, Some(s), Some(t)) => read_parallel(s, t, a.encoding)?,
        _ => {
            return Err(Error::invalid(
                "data",
                "give --src FILE --tgt FILE, or --pairs TSV",
            ))
        }
    };
    let swap = |v: &mut Vec<attn::tasks::translate::Pair>| {
        if a.reverse {
            v.iter_mut()
                .for_each(|p| std::mem::swap(&mut p.src, &mut p.tgt));
        }
    };
    swap(&mut pairs);
    let val = match (&a.valid_src, &a.valid_tgt) {
        (Some(s), Some(t)) => {
            let (mut v, k) = read_parallel(s, t, a.encoding)?;
            swap(&mut v);
            skipped += k;
            v
        }
        _ => {
            // A split that depends on the data only (not on --seed), so that every run
            // on the same file, in either direction, holds out the same pairs.
            let mut rng = attn::rng::Rng::new(HOLDOUT_SEED);
            for i in (1..pairs.len()).rev() {
                pairs.swap(i, rng.below(i + 1));
            }
            if a.valid_size == 0 || a.holdout + a.valid_size >= pairs.len() {
                return Err(Error::invalid(
                    "holdout",
                    format!(
                        "--holdout {} plus --valid-size {} (at least 1) must leave training pairs out of {}",
                        a.holdout,
                        a.valid_size,
                        pairs.len()
                    ),
                ));
            }
            let held = pairs.split_off(pairs.len() - a.holdout);
            let val = pairs.split_off(pairs.len() - a.valid_size);
            if !held.is_empty() {
                // The test pairs, never trained or selected on, to be scored afterwards.
                std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
                for (name, side) in [("holdout.src", true), ("holdout.tgt", false)] {
                    let text: String = held
                        .iter()
                        .map(|p| format!("{}\n", if side { &p.src } else { &p.tgt }))
                        .collect();
                    attn::checkpoint::write_atomic(&a.out.join(name), text.as_bytes())?;
                }
                eprintln!(
                    "held out {} test pairs: {} and {}",
                    held.len(),
                    a.out.join("holdout.src").display(),
                    a.out.join("holdout.tgt").display()
                );
            }
            val
        }
    };
    if skipped > 0 {
        eprintln!("warning: skipped {skipped} pairs with an empty side");
    }
    eprintln!("{} training / {} validation pairs", pairs.len(), val.len());
    let quiet = !std::io::stderr().is_terminal();
    let data = serde_json::json!({ "argv": argv });
    let begin = match &argv {
        Some(_) => Begin::New { data: &data },
        None => Begin::Resume,
    };
    let summary = train(&cfg, &pairs, &val, &a.out, begin, &mut |e| match e {
        TranslateEvent::Step(s) => {
            if s.step % 100 == 0 || (!quiet && s.step % 10 == 0) {
                eprintln!("step {}: loss {:.4} lr {:.2e}", s.step, s.loss, s.lr);
            }
        }
        TranslateEvent::Eval(e) => eprintln!(
            "step {}: train loss {:.4}, val loss {:.4}{}{}{}",
            e.step,
            e.train_loss,
            e.val_loss,
            e.val_bleu
                .map(|b| format!(", val BLEU {b:.2}"))
                .unwrap_or_default(),
            e.val_rouge_l
                .map(|r| format!(", val ROUGE-L {r:.2}"))
                .unwrap_or_default(),
            if e.best { " (best, saved)" } else { "" }
        ),
    })?;
    // The task's own name and sign for the best score (the loss, not minus it).
    let (metric, key, best) = match task {
        Task::Translate => ("BLEU", "best_val_bleu", summary.best_score),
        Task::Summarize => ("ROUGE-L", "best_val_rouge_l", summary.best_score),
        Task::Pretrain => ("loss", "best_val_loss", -summary.best_score),
    };
    eprintln!(
        "best val {metric} {best:.2} at step {}; {:.1}M parameters; {:.0} s of training; model in {}",
        summary.best_step,
        summary.parameters as f64 / 1e6,
        summary.train_seconds,
        a.out.display()
    );
    if a.json {
        let mut v = serde_json::to_value(&summary).unwrap();
        if let Some(o) = v.as_object_mut() {
            o.remove("best_score");
            o.insert(key.into(), best.into());
        }
        crate::print_json(&v);
    }
    Ok(())
}
