//! `attn eval ...`.

use std::path::PathBuf;

use attn::checkpoint::load_causal_lm;
use attn::data::{normalize, read_text, Encoding};
use attn::metrics::perplexity;
use attn::Result;
use clap::{Args, Subcommand};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity of a language model on a text file.
    Perplexity(PerplexityArgs),
    /// Accuracy, precision, recall, F1 and the confusion matrix of predicted labels
    /// against gold labels (one label per line in each file), as scikit-learn computes them.
    Classify(ClassifyArgs),
    /// Corpus BLEU as sacreBLEU 2.x computes it (same score and signature).
    Bleu(BleuArgs),
    /// Corpus chrF / chrF++ as sacreBLEU 2.x computes it.
    Chrf(ChrfArgs),
    /// ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum as Google's rouge-score 0.1.2 computes
    /// them (RougeScorer(...).score(target=ref, prediction=hyp) per line), averaged over
    /// lines.
    Rouge(RougeArgs),
}

#[derive(Args)]
pub struct RefArgs {
    /// Hypotheses, one per line.
    #[arg(long)]
    hyp: PathBuf,
    /// References, one per line, parallel to --hyp (repeat for several references).
    #[arg(long = "ref", required = true)]
    refs: Vec<PathBuf>,
    /// Lowercase hypotheses and references before scoring.
    #[arg(long)]
    lowercase: bool,
    /// Score each line separately (sacreBLEU's sentence-level scores).
    #[arg(long)]
    sentence: bool,
    /// Print JSON (one object, or one per line with --sentence).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct BleuArgs {
    #[command(flatten)]
    common: RefArgs,
    /// 13a (default), intl, zh, char or none.
    #[arg(long, default_value = "13a")]
    tokenize: String,
    /// exp (default), floor, add-k or none.
    #[arg(long, default_value = "exp")]
    smooth_method: String,
    /// The smoothing's value [default: sacreBLEU's, 0.1 for floor and 1 for add-k].
    #[arg(long)]
    smooth_value: Option<f64>,
}

#[derive(Args)]
pub struct ChrfArgs {
    #[command(flatten)]
    common: RefArgs,
    /// Word n-gram order: 0 for chrF, 2 for chrF++.
    #[arg(long, default_value_t = 0)]
    word_order: usize,
    /// Character n-gram order (1 to 100).
    #[arg(long, default_value_t = 6)]
    char_order: usize,
    /// Weight of recall against precision (chrF's β).
    #[arg(long, default_value_t = 2.0)]
    beta: f64,
    /// Keep whitespace in character n-grams.
    #[arg(long)]
    whitespace: bool,
}

#[derive(Args)]
pub struct RougeArgs {
    /// Hypotheses (predicted summaries), one per line.
    #[arg(long)]
    hyp: PathBuf,
    /// References (target summaries), one per line, parallel to --hyp.
    #[arg(long = "ref")]
    reference: PathBuf,
    /// Porter-stem words longer than 3 characters (rouge-score's use_stemmer=True).
    #[arg(long)]
    stem: bool,
    /// default: rouge-score's tokenizer (lowercase; ASCII letters and digits only, so
    /// Chinese scores 0). zh-char: the same, plus every character of Hiragana
    /// U+3040-309F, Katakana U+30A0-30FF and U+31F0-31FF, CJK ideographs U+3400-4DBF,
    /// U+4E00-9FFF, U+F900-FAFF, U+20000-2A6DF, U+2A700-2EE5F, U+2F800-2FA1F,
    /// U+30000-323AF and Hangul syllables U+AC00-D7A3 as a token of its own; any other
    /// character separates tokens.
    #[arg(long, default_value = "default")]
    tokenize: String,
    /// Replace this string by a newline in every line before scoring, so that rougeLsum
    /// sees sentence breaks (e.g. "<n>").
    #[arg(long)]
    newline_token: Option<String>,
    /// Print each line's scores instead of the mean.
    #[arg(long)]
    sentence: bool,
    /// Print JSON: {"rouge1": {"precision", "recall", "fmeasure"}, "rouge2", "rougeL",
    /// "rougeLsum", "lines"} (one object per line with --sentence, without "lines").
    #[arg(long)]
    json: bool,
}

fn read_lines(path: &std::path::Path) -> Result<Vec<String>> {
    Ok(read_text(path, Encoding::Utf8)?
        .lines()
        .map(str::to_string)
        .collect())
}

fn read_streams(a: &RefArgs) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let hyps = read_lines(&a.hyp)?;
    let mut refs = vec![];
    for r in &a.refs {
        let lines = read_lines(r)?;
        if lines.len() != hyps.len() {
            return Err(attn::Error::bad_file(
                r,
                format!(
                    "{} lines, but {} has {}: hypotheses and references must be parallel",
                    lines.len(),
                    a.hyp.display(),
                    hyps.len()
                ),
            ));
        }
        refs.push(lines);
    }
    Ok((hyps, refs))
}

fn run_bleu(a: BleuArgs) -> Result<()> {
    use attn::metrics::bleu::{corpus_bleu, sentence_bleu, BleuConfig, Smooth};
    if let Some(v) = a.smooth_value {
        if !(v.is_finite() && v >= 0.0) {
            return Err(attn::Error::invalid(
                "--smooth-value",
                format!("{v} must be a finite number ≥ 0"),
            ));
        }
    }
    let smooth = match a.smooth_method.as_str() {
        "exp" => Smooth::Exp,
        "none" => Smooth::None,
        "floor" => Smooth::Floor(a.smooth_value),
        "add-k" => Smooth::AddK(a.smooth_value),
        other => {
            return Err(attn::Error::invalid(
                "smooth-method",
                format!("{other:?} is not exp, floor, add-k or none"),
            ))
        }
    };
    let mut cfg = BleuConfig {
        tokenize: a.tokenize.parse()?,
        lowercase: a.common.lowercase,
        smooth,
        ..Default::default()
    };
    let (hyps, refs) = read_streams(&a.common)?;
    if a.common.sentence {
        cfg.effective_order = true;
        for (i, h) in hyps.iter().enumerate() {
            let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
            let s = sentence_bleu(h, &r, &cfg);
            if a.common.json {
                crate::print_json(&serde_json::to_value(&s).unwrap());
            } else {
                println!("BLEU = {:.2}", s.score);
            }
        }
        return Ok(());
    }
    let s = corpus_bleu(&hyps, &refs, &cfg)?;
    if a.common.json {
        crate::print_json(&serde_json::json!({
            "score": s.score, "signature": s.signature, "precisions": s.precisions, "bp": s.bp,
            "sys_len": s.sys_len, "ref_len": s.ref_len,
        }));
    } else {
        let p: Vec<String> = s.precisions.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "BLEU|{} = {:.2} {} (BP = {:.3} ratio = {:.3} hyp_len = {} ref_len = {})",
            s.signature,
            s.score,
            p.join("/"),
            s.bp,
            s.sys_len as f64 / s.ref_len.max(1) as f64,
            s.sys_len,
            s.ref_len
        );
    }
    Ok(())
}

/// The longest n-gram order chrF accepts (sacreBLEU's defaults are 6 and 2; each order
/// costs memory and time per sentence).
const MAX_NGRAM_ORDER: usize = 100;

fn run_chrf(a: ChrfArgs) -> Result<()> {
    use attn::metrics::chrf::{corpus_chrf, sentence_chrf, ChrfConfig};
    if !(1..=MAX_NGRAM_ORDER).contains(&a.char_order) {
        return Err(attn::Error::invalid(
            "--char-order",
            format!("{} is not between 1 and {MAX_NGRAM_ORDER}", a.char_order),
        ));
    }
    if a.word_order > MAX_NGRAM_ORDER {
        return Err(attn::Error::invalid(
            "--word-order",
            format!("{} is not between 0 and {MAX_NGRAM_ORDER}", a.word_order),
        ));
    }
    if !(a.beta.is_finite() && a.beta > 0.0) {
        return Err(attn::Error::invalid(
            "--beta",
            format!("{} must be a finite number above 0", a.beta),
        ));
    }
    let cfg = ChrfConfig {
        char_order: a.char_order,
        word_order: a.word_order,
        beta: a.beta,
        lowercase: a.common.lowercase,
        whitespace: a.whitespace,
        eps_smoothing: false,
    };
    let (hyps, refs) = read_streams(&a.common)?;
    let name = format!("chrF{}{}", a.beta, "+".repeat(a.word_order));
    if a.common.sentence {
        for (i, h) in hyps.iter().enumerate() {
            let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
            let s = sentence_chrf(h, &r, &cfg);
            if a.common.json {
                crate::print_json(&serde_json::to_value(&s).unwrap());
            } else {
                println!("{name} = {:.2}", s.score);
            }
        }
        return Ok(());
    }
    let s = corpus_chrf(&hyps, &refs, &cfg)?;
    if a.common.json {
        crate::print_json(&serde_json::to_value(&s).unwrap());
    } else {
        println!("{name}|{} = {:.2}", s.signature, s.score);
    }
    Ok(())
}

fn run_rouge(a: RougeArgs) -> Result<()> {
    use attn::metrics::rouge::{score_corpus, RougeConfig, ROUGE_SCORE_VERSION};
    if a.newline_token.as_deref() == Some("") {
        return Err(attn::Error::invalid("--newline-token", "must not be empty"));
    }
    let cfg = RougeConfig {
        stem: a.stem,
        tokenize: a.tokenize.parse()?,
        newline_token: a.newline_token.clone(),
    };
    let hyps = read_lines(&a.hyp)?;
    let refs = read_lines(&a.reference)?;
    if refs.len() != hyps.len() {
        return Err(attn::Error::bad_file(
            &a.reference,
            format!(
                "{} lines, but {} has {}: hypotheses and references must be parallel",
                refs.len(),
                a.hyp.display(),
                hyps.len()
            ),
        ));
    }
    if hyps.is_empty() {
        return Err(attn::Error::bad_file(&a.hyp, "no lines to score"));
    }
    let (mean, lines) = score_corpus(&hyps, &refs, &cfg)?;
    if a.sentence {
        for s in &lines {
            if a.json {
                // Straight from the struct: keys in rouge-score's order.
                println!("{}", serde_json::to_string(s).unwrap());
            } else {
                let f: Vec<String> = s
                    .named()
                    .iter()
                    .map(|(name, s)| format!("{name} {:.4}", s.fmeasure))
                    .collect();
                println!("{}", f.join("  "));
            }
        }
        return Ok(());
    }
    if a.json {
        #[derive(serde::Serialize)]
        struct Mean<'a> {
            #[serde(flatten)]
            scores: &'a attn::metrics::rouge::RougeScores,
            lines: usize,
        }
        let m = Mean {
            scores: &mean,
            lines: lines.len(),
        };
        println!("{}", serde_json::to_string(&m).unwrap());
    } else {
        println!(
            "{:<10} {:>9} {:>9} {:>9}",
            "", "precision", "recall", "fmeasure"
        );
        for (name, s) in mean.named() {
            println!(
                "{name:<10} {:>9.4} {:>9.4} {:>9.4}",
                s.precision, s.recall, s.fmeasure
            );
        }
        println!(
            "mean over {} lines; rouge-score {ROUGE_SCORE_VERSION}, tokenize {}, stemmer {}",
            lines.len(),
            a.tokenize,
            if a.stem { "on" } else { "off" }
        );
    }
    Ok(())
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// Predicted labels, one per line.
    #[arg(long)]
    pred: PathBuf,
    /// Gold labels, one per line, parallel to --pred.
    #[arg(long)]
    gold: PathBuf,
    /// Print one JSON object (accuracy, P/R/F1, confusion matrix).
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
        EvalCommand::Bleu(a) => return run_bleu(a),
        EvalCommand::Chrf(a) => return run_chrf(a),
        EvalCommand::Rouge(a) => return run_rouge(a),
    };
    crate::at_least_1("--batch-size", a.batch_size)?;
    if let Some(n) = a.max_length {
        crate::at_least_1("--max-length", n)?;
    }
    if let Some(n) = a.stride {
        crate::at_least_1("--stride", n)?;
    }
    attn::guard::regular_file(&a.data)?;
    let loaded = load_causal_lm(&a.model)?;
    let text = normalize(&read_text(&a.data, a.encoding)?);
    let ids = loaded.tokenizer.encode(&text)?;
    let max_length = a.max_length.unwrap_or(loaded.model.context());
    let stride = a.stride.unwrap_or(max_length);
    // Logits of a whole batch of windows are held at once.
    attn::guard::check_memory(
        "--batch-size × --max-length (the logits of one batch)",
        a.batch_size as f64
            * max_length.min(loaded.model.context()) as f64
            * loaded.model.vocab_size() as f64
            * 8.0,
    )?;
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
