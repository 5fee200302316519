//! `attn data`: corpus preparation commands (streaming, both cores).

use std::io::Write;
use std::path::PathBuf;

use attn::data::dedup::{dedup, DedupConfig, Near, Unit};
use attn::data::minhash::{MinHasher, Scheme, Shingle};
use attn::data::stream::LineBatches;
use attn::{Error, Result};
use clap::{Args, Subcommand};
use rayon::prelude::*;

#[derive(Subcommand)]
pub enum DataCommand {
    /// MinHash signatures of each line of a file, equal to the `datasketch` package's:
    /// one JSON line `{"signature": [...]}` per input line.
    Minhash(MinhashArgs),
    /// Remove exact duplicates (same normalised text) and near duplicates (MinHash + LSH
    /// banding, as datasketch's MinHashLSH), keeping the first unit of each cluster; one
    /// output file per input, and dedup_report.json.
    Dedup(DedupArgs),
    /// Replace (or drop the lines holding) personal data: e-mail addresses, phone numbers,
    /// card numbers (Luhn), IBANs (mod 97), IP addresses, URLs, Chinese resident IDs
    /// (GB 11643) and mobile numbers; counts by kind in scrub_report.json.
    Scrub(ScrubArgs),
    /// Find personal data without changing anything: one JSON line per input line,
    /// `{"spans": [[start, end, "kind"], ...]}` in character offsets (what scrub masks,
    /// exposed so that it can be checked against other detectors).
    Pii(PiiArgs),
    /// Tokenize text files once into binary shards (u16 or u32 ids, a header and an
    /// index, plus a validation shard): the tokens `attn train` would make of them.
    Tokenize(TokenizeArgs),
    /// Describe a corpus: lines, documents, characters, tokens, the exact-duplicate
    /// rate, personal data by kind, the mix of scripts (JSON with --json).
    Stats(StatsArgs),
}

#[derive(Args)]
pub struct StatsArgs {
    /// Text files (UTF-8).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Count tokens with this tokenizer (tokenizer.json).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Skip lines that are not valid UTF-8, counting them in the report, instead of
    /// stopping at the first with an error naming its file and byte.
    #[arg(long)]
    skip_invalid: bool,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Text files, concatenated in this order.
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// The tokenizer (tokenizer.json), copied beside the shards.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output folder: train-NNNNN.bin, val.bin, index.json, tokenizer.json.
    #[arg(long)]
    out: PathBuf,
    /// Tokens per training shard.
    #[arg(long, default_value_t = attn::data::shards::DEFAULT_SHARD_TOKENS)]
    shard_tokens: usize,
    /// The last fraction of the tokens, held out for validation (as attn train's
    /// --val-fraction).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Encoding of the files: utf8 or latin1.
    #[arg(long, default_value = "utf8")]
    encoding: String,
    /// Drop byte sequences that are not valid UTF-8, counting them in the report,
    /// instead of stopping at the first with an error naming its file and byte.
    #[arg(long)]
    skip_invalid: bool,
    /// Replace the shards of an earlier run in --out.
    #[arg(long)]
    overwrite: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ScrubArgs {
    /// Text files (UTF-8).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output folder: the scrubbed files under the input names.
    #[arg(long)]
    out: PathBuf,
    /// Kinds to find, comma-separated (default: all of
    /// email,phone,credit-card,iban,ip,url,cn-id,cn-mobile).
    #[arg(long)]
    types: Option<String>,
    /// mask (typed placeholders such as <EMAIL>) or remove-line.
    #[arg(long, default_value = "mask")]
    mode: String,
    /// Skip lines that are not valid UTF-8, counting them in the report, instead of
    /// stopping at the first with an error naming its file and byte.
    #[arg(long)]
    skip_invalid: bool,
    /// Replace the outputs of an earlier run in --out.
    #[arg(long)]
    overwrite: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DedupArgs {
    /// Text files (UTF-8).
    #[arg(long, num_args = 1.., required = true)]
    input: Vec<PathBuf>,
    /// Output folder: the inputs' kept units under the same file names.
    #[arg(long)]
    out: PathBuf,
    /// What one document is: line, paragraph (lines between blank lines) or document
    /// (a whole file).
    #[arg(long, default_value = "line")]
    unit: String,
    /// Remove exact duplicates (NFC, whitespace runs as one space, trimmed).
    #[arg(long)]
    exact: bool,
    /// Remove near duplicates (estimated Jaccard similarity of shingle sets at or above
    /// --threshold).
    #[arg(long)]
    near: bool,
    #[arg(long, default_value_t = 0.8)]
    threshold: f64,
    #[command(flatten)]
    sketch: Sketch,
    /// Check each candidate pair's true Jaccard similarity (of the shingle sets) before
    /// joining it, in a pass of its own: clusters hold only pairs at or above
    /// --threshold, and the default bands and rows favour recall (datasketch's choice
    /// with weights 0.1 for false positives, 0.9 for false negatives).
    #[arg(long, requires = "near")]
    verify: bool,
    /// LSH bands (with --rows; default: datasketch's choice for --threshold, for at most
    /// 16,384 permutations).
    #[arg(long, requires = "rows")]
    bands: Option<usize>,
    /// Rows (permutations) per LSH band (with --bands; bands × rows ≤ --num-perm).
    #[arg(long, requires = "bands")]
    rows: Option<usize>,
    /// Also write the clusters (clusters.jsonl: each cluster's units by file and line).
    #[arg(long)]
    explain: bool,
    /// Skip lines that are not valid UTF-8, counting them in the report, instead of
    /// stopping at the first with an error naming its file and byte.
    #[arg(long)]
    skip_invalid: bool,
    /// Replace the outputs of an earlier run in --out.
    #[arg(long)]
    overwrite: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PiiArgs {
    /// Text file (UTF-8), one record per line.
    #[arg(long)]
    input: PathBuf,
    /// Kinds to find, comma-separated (default: all).
    #[arg(long)]
    types: Option<String>,
    /// One JSON object per line (the only output format).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MinhashArgs {
    /// Text file, one document per line (UTF-8).
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    sketch: Sketch,
    /// One JSON object per line (the only output format).
    #[arg(long)]
    json: bool,
}

/// MinHash's parameters, as datasketch's `MinHash(num_perm, seed)` takes them.
#[derive(Args)]
pub struct Sketch {
    /// Permutations (values per signature).
    #[arg(long, default_value_t = 128)]
    num_perm: usize,
    /// Seed of the permutations (NumPy's RandomState seed, as datasketch uses it).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Shingle size in words or characters.
    #[arg(long, default_value_t = 5)]
    ngram: usize,
    /// Shingles of words (k consecutive whitespace-separated words joined by one space)
    /// or of characters.
    #[arg(long, default_value = "word")]
    shingle: String,
    /// datasketch's permutation scheme: affine32 (its default since 2.0) or legacy.
    #[arg(long, default_value = "affine32")]
    scheme: String,
}

impl Sketch {
    /// The shingle kind and permutation scheme named.
    fn kinds(&self) -> Result<(Shingle, Scheme)> {
        Ok((Shingle::parse(&self.shingle)?, Scheme::parse(&self.scheme)?))
    }
}

pub fn run(c: DataCommand) -> Result<()> {
    match c {
        DataCommand::Minhash(a) => minhash(a),
        DataCommand::Dedup(a) => dedup_cmd(a),
        DataCommand::Scrub(a) => scrub_cmd(a),
        DataCommand::Pii(a) => pii_cmd(a),
        DataCommand::Tokenize(a) => tokenize_cmd(a),
        DataCommand::Stats(a) => stats_cmd(a),
    }
}

/// Run `f`, showing on stderr (when it is a terminal) how much of `passes` reads of
/// `inputs` is done.
fn with_progress<T>(inputs: &[PathBuf], passes: u64, f: impl FnOnce() -> Result<T>) -> Result<T> {
    use indicatif::{ProgressBar, ProgressStyle};
    let size: u64 = inputs
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let pb = ProgressBar::new(size * passes.max(1));
    pb.set_style(
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let start = attn::data::stream::bytes_read();
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Stops the display however `f` ends (a panic included, which would otherwise
    /// leave the scope waiting for it).
    struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let r = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                pb.set_position(attn::data::stream::bytes_read() - start);
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let _stop = Stop(&done);
        f()
    });
    pb.finish_and_clear();
    r
}

/// `--out` may not hold the inputs, nor (without `--overwrite`) an earlier run's
/// outputs, which `marker` (a file every run writes) shows.
fn check_out(
    out: &std::path::Path,
    inputs: &[PathBuf],
    more: &[&PathBuf],
    marker: &str,
    overwrite: bool,
) -> Result<()> {
    let all: Vec<&std::path::Path> = inputs
        .iter()
        .chain(more.iter().copied())
        .map(|p| p.as_path())
        .collect();
    attn::guard::OutputDir::check("--out", out, &all, overwrite)?;
    if !overwrite && out.join(marker).exists() {
        return Err(Error::invalid(
            "--out",
            format!(
                "{} holds an earlier run's outputs ({marker}); pass --overwrite to replace them",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// The most permutations for which dedup chooses the LSH bands and rows itself.
const MAX_CHOSEN_PERM: usize = 16_384;

fn dedup_cmd(a: DedupArgs) -> Result<()> {
    check_out(&a.out, &a.input, &[], "dedup_report.json", a.overwrite)?;
    let k = &a.sketch;
    let near = if a.near {
        crate::at_least_1("--ngram", k.ngram)?;
        crate::at_least_1("--num-perm", k.num_perm)?;
        if !(0.0..=1.0).contains(&a.threshold) {
            return Err(Error::invalid(
                "--threshold",
                format!("{} is not in [0, 1]", a.threshold),
            ));
        }
        let (shingle, scheme) = k.kinds()?;
        let (bands, rows) = match (a.bands, a.rows) {
            (Some(b), Some(r)) => (b, r),
            // datasketch's choice tries every split of the permutations (about n·ln n of
            // them, each two integrals): 0.6 s at 2,048, 2.7 s at 8,192.
            _ if k.num_perm > MAX_CHOSEN_PERM => {
                return Err(Error::invalid(
                    "--num-perm",
                    format!(
                        "{} permutations are too many to choose --bands and --rows for \
                         (at most {MAX_CHOSEN_PERM}); give both",
                        k.num_perm
                    ),
                ))
            }
            _ if a.verify => Near::weighted_bands(a.threshold, k.num_perm, 0.1, 0.9),
            _ => Near::optimal_bands(a.threshold, k.num_perm),
        };
        Some(Near {
            threshold: a.threshold,
            num_perm: k.num_perm,
            ngram: k.ngram,
            shingle,
            scheme,
            seed: k.seed,
            bands,
            rows,
            verify: a.verify,
        })
    } else {
        None
    };
    let cfg = DedupConfig {
        unit: Unit::parse(&a.unit)?,
        exact: a.exact,
        near,
        skip_invalid: a.skip_invalid,
    };
    let t0 = std::time::Instant::now();
    let passes = if a.verify { 3 } else { 2 };
    let r = with_progress(&a.input, passes, || {
        dedup(&a.input, &a.out, &cfg, a.explain)
    })?;
    eprintln!(
        "{} units: kept {}, removed {} exact and {} near duplicates in {} clusters (largest {}), {:.1} s; report in {}",
        r.units,
        r.kept,
        r.exact_duplicates,
        r.near_duplicates,
        r.clusters,
        r.largest_cluster,
        t0.elapsed().as_secs_f64(),
        a.out.join("dedup_report.json").display()
    );
    if a.json {
        crate::print_json(
            &serde_json::to_value(&r).map_err(|e| Error::invalid("report", e.to_string()))?,
        );
    }
    Ok(())
}

/// One row per line of `input` on stdout, in order, the rows of a batch of lines
/// computed on every core.
fn per_line(input: &std::path::Path, row: impl Fn(&str) -> String + Sync) -> Result<()> {
    let mut lines = LineBatches::open(input)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| Error::io("stdout", e);
    loop {
        let batch = lines.next_batch(4096)?;
        if batch.is_empty() {
            break;
        }
        let rows: Vec<String> = batch.par_iter().map(|t| row(t)).collect();
        for r in rows {
            writeln!(out, "{r}").map_err(io)?;
        }
    }
    out.flush().map_err(io)
}

fn pii_cmd(a: PiiArgs) -> Result<()> {
    use attn::data::pii::{find, PiiType, ALL};
    let types = match &a.types {
        Some(t) => PiiType::parse_list(t)?,
        None => ALL.to_vec(),
    };
    per_line(&a.input, |t| {
        let spans = find(t, &types);
        // Byte offsets to character offsets, in one walk over the line.
        let mut offsets: Vec<usize> = spans.iter().flat_map(|s| [s.start, s.end]).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let mut chars = std::collections::HashMap::with_capacity(offsets.len());
        let mut next = offsets.iter().peekable();
        for (n, (b, _)) in t.char_indices().chain([(t.len(), ' ')]).enumerate() {
            while next.peek().is_some_and(|&&o| o <= b) {
                chars.insert(*next.next().unwrap(), n);
            }
        }
        let spans: Vec<serde_json::Value> = spans
            .iter()
            .map(|s| serde_json::json!([chars[&s.start], chars[&s.end], s.ty.name()]))
            .collect();
        serde_json::json!({ "spans": spans }).to_string()
    })
}

fn minhash(a: MinhashArgs) -> Result<()> {
    let k = &a.sketch;
    crate::at_least_1("--ngram", k.ngram)?;
    let (kind, scheme) = k.kinds()?;
    let hasher = MinHasher::new(k.num_perm, k.seed, scheme)?;
    per_line(&a.input, |t| {
        let sig = hasher.signature_of(t, k.ngram, kind);
        serde_json::json!({ "signature": sig }).to_string()
    })
}

fn scrub_cmd(a: ScrubArgs) -> Result<()> {
    use attn::data::pii::{scrub, Mode, PiiType, ALL};
    check_out(&a.out, &a.input, &[], "scrub_report.json", a.overwrite)?;
    let types = match &a.types {
        Some(t) => PiiType::parse_list(t)?,
        None => ALL.to_vec(),
    };
    let mode = Mode::parse(&a.mode)?;
    let r = with_progress(&a.input, 1, || {
        scrub(&a.input, &a.out, &types, mode, a.skip_invalid)
    })?;
    eprintln!(
        "{} lines, {} with personal data ({} removed); {:?}",
        r.lines, r.lines_with_pii, r.lines_removed, r.counts
    );
    if a.json {
        crate::print_json(
            &serde_json::to_value(&r).map_err(|e| Error::invalid("report", e.to_string()))?,
        );
    }
    Ok(())
}

fn tokenize_cmd(a: TokenizeArgs) -> Result<()> {
    check_out(
        &a.out,
        &a.input,
        &[&a.tokenizer],
        attn::data::shards::INDEX,
        a.overwrite,
    )?;
    let encoding: attn::data::Encoding = a.encoding.parse()?;
    let tok = attn::tokenizer::Tokenizer::from_file(&a.tokenizer)?;
    let t0 = std::time::Instant::now();
    let cfg = attn::data::shards::TokenizeConfig {
        encoding,
        shard_tokens: a.shard_tokens,
        val_fraction: a.val_fraction,
        skip_invalid: a.skip_invalid,
        ..Default::default()
    };
    let r = with_progress(&a.input, 1, || {
        attn::data::shards::tokenize(&a.input, &tok, &a.out, &cfg)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} tokens ({} training in {} shards, {} validation) of {} bytes, u{} ids, in {:.1} s ({:.1} MB/s)",
        r.tokens,
        r.train_tokens,
        r.shards,
        r.val_tokens,
        r.bytes,
        8 * r.width,
        secs,
        r.bytes as f64 / 1e6 / secs.max(1e-9)
    );
    if a.json {
        crate::print_json(
            &serde_json::to_value(&r).map_err(|e| Error::invalid("report", e.to_string()))?,
        );
    }
    Ok(())
}

fn stats_cmd(a: StatsArgs) -> Result<()> {
    let tok = a
        .tokenizer
        .as_deref()
        .map(attn::tokenizer::Tokenizer::from_file)
        .transpose()?;
    let s = with_progress(&a.input, 1, || {
        attn::data::stats::stats(&a.input, tok.as_ref(), a.skip_invalid)
    })?;
    let v = serde_json::to_value(&s).map_err(|e| Error::invalid("stats", e.to_string()))?;
    if a.json {
        crate::print_json(&v);
    } else {
        println!(
            "{} lines ({} empty), {} documents, {} characters, {} bytes{}",
            s.lines,
            s.empty_lines,
            s.documents,
            s.chars,
            s.bytes,
            s.tokens.map_or(String::new(), |t| format!(", {t} tokens"))
        );
        println!(
            "exact duplicate lines: {} ({:.2}%)",
            s.duplicate_lines,
            100.0 * s.duplicate_rate
        );
        println!("personal data: {} lines; {:?}", s.lines_with_pii, s.pii);
        let mix: Vec<String> = s
            .scripts
            .iter()
            .map(|(k, v)| format!("{k} {:.1}%", 100.0 * v))
            .collect();
        println!("scripts (letters): {}", mix.join(", "));
    }
    Ok(())
}
