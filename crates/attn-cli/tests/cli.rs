//! The `attn` command end to end: train → generate → eval → resume on a tiny model, and
//! bad input answered with one clear `error:` line and a non-zero exit, never a panic.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .env("ATTN_DATA_DIR", "/nonexistent-attn-data")
        .output()
        .expect("the attn binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Assert a clean failure whose message mentions every `needles`.
fn fails_with(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {err}"));
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line:?}");
    }
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn corpus(dir: &Path) -> PathBuf {
    let p = dir.join("corpus.txt");
    let line =
        "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n";
    std::fs::write(&p, line.repeat(60)).unwrap();
    p
}

const TINY: &[&str] = &[
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-interval",
    "4",
    "--eval-iters",
    "2",
    "--warmup-iters",
    "1",
    "--lr-decay-iters",
    "8",
];

fn train_tiny(dir: &Path, max_iters: &str) -> (PathBuf, Output) {
    let data = corpus(dir);
    let out = dir.join("model");
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--max-iters",
        max_iters,
        "--json",
    ];
    args.extend_from_slice(TINY);
    let o = attn(&args);
    (out, o)
}

#[test]
fn train_generate_eval_resume() {
    let dir = temp("e2e");
    let (model, o) = train_tiny(&dir, "4");
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 4);
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "generation_config.json",
        "metrics.jsonl",
        "loss.png",
    ] {
        assert!(model.join(f).is_file(), "{f} missing");
    }
    let png = std::fs::read(model.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let m = model.to_str().unwrap();

    let g = attn(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "the ",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
        "--seed",
        "3",
    ]);
    assert!(g.status.success(), "{}", stderr(&g));
    let text = String::from_utf8(g.stdout.clone()).unwrap();
    assert!(text.starts_with("the "), "{text:?}");
    assert_eq!(text.trim_end_matches('\n').chars().count(), 4 + 20);
    // Greedy is deterministic; sampling with a seed too.
    let g2 = attn(&[
        "generate",
        "--model",
        m,
        "--prompt",
        "the ",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
    ]);
    assert_eq!(g.stdout, g2.stdout);
    let s1 = attn(&[
        "generate",
        "--model",
        m,
        "--max-new-tokens",
        "30",
        "--seed",
        "5",
        "--top-p",
        "0.9",
    ]);
    let s2 = attn(&[
        "generate",
        "--model",
        m,
        "--max-new-tokens",
        "30",
        "--seed",
        "5",
        "--top-p",
        "0.9",
    ]);
    assert!(s1.status.success(), "{}", stderr(&s1));
    assert_eq!(s1.stdout, s2.stdout);
    // A stop string ends the output just before it: the same sampling without the stop,
    // cut at the stop's first occurrence (a character the sample holds, not at its start).
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "the",
            "--max-new-tokens",
            "40",
            "--no-echo",
            "--seed",
            "1",
        ];
        args.extend_from_slice(extra);
        let o = attn(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8(o.stdout).unwrap()
    };
    let free = gen(&[]);
    let stop = free
        .chars()
        .find(|&c| c != '\n' && free.find(c).is_some_and(|i| i > 0))
        .unwrap_or_else(|| panic!("no usable stop character in {free:?}"))
        .to_string();
    let cut = free.find(stop.as_str()).unwrap();
    let stopped = gen(&["--stop", &stop]);
    assert_eq!(stopped.trim_end_matches('\n'), &free[..cut]);

    let ppl = attn(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--data",
        dir.join("corpus.txt").to_str().unwrap(),
        "--json",
    ]);
    assert!(ppl.status.success(), "{}", stderr(&ppl));
    let v: serde_json::Value = serde_json::from_slice(&ppl.stdout).unwrap();
    let (nll, p, n) = (
        v["nll"].as_f64().unwrap(),
        v["perplexity"].as_f64().unwrap(),
        v["tokens"].as_u64().unwrap(),
    );
    assert!((p - nll.exp()).abs() < 1e-9 * p);
    // Disjoint windows of 16 (the context): the first token of each window has no
    // context and is not scored, as in the transformers recipe.
    let chars = std::fs::read_to_string(dir.join("corpus.txt"))
        .unwrap()
        .chars()
        .count() as u64;
    assert_eq!(n, chars - chars.div_ceil(16));
    // Overlapping windows score every token but the very first, once.
    let ppl = attn(&[
        "eval",
        "perplexity",
        "--model",
        m,
        "--data",
        dir.join("corpus.txt").to_str().unwrap(),
        "--stride",
        "5",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&ppl.stdout).unwrap();
    assert_eq!(v["tokens"].as_u64().unwrap(), chars - 1);
    // A model that has learned the corpus (60 steps at a high rate) scores far below the
    // uniform ln V, and more context per scored token (overlapping windows) lower still;
    // an untrained model (about ln V both ways) fails both.
    let learned = dir.join("learned");
    let data = dir.join("corpus.txt");
    let o = attn(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        learned.to_str().unwrap(),
        "--max-iters",
        "60",
        "--n-layer",
        "1",
        "--n-head",
        "2",
        "--n-embd",
        "16",
        "--block-size",
        "16",
        "--batch-size",
        "4",
        "--eval-interval",
        "20",
        "--eval-iters",
        "2",
        "--warmup-iters",
        "1",
        "--lr",
        "1e-2",
        "--lr-decay-iters",
        "60",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let nll = |extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "perplexity",
            "--model",
            learned.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = attn(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["nll"]
            .as_f64()
            .unwrap()
    };
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(learned.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object().unwrap().len() as f64;
    let (disjoint, overlapping) = (nll(&[]), nll(&["--stride", "5"]));
    assert!(
        disjoint < 0.6 * vocab.ln(),
        "nll {disjoint} vs ln V {}",
        vocab.ln()
    );
    assert!(overlapping < disjoint, "{overlapping} vs {disjoint}");

    // Starting again over an existing run is refused; --resume continues it.
    let (_, again) = train_tiny(&dir, "4");
    fails_with(&again, &["--resume"]);
    let r = attn(&[
        "train",
        "--out",
        m,
        "--resume",
        "--max-iters",
        "8",
        "--json",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let summary: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(summary["steps"], 8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn prompt_longer_than_context_is_truncated_with_a_warning() {
    let dir = temp("longprompt");
    let (model, o) = train_tiny(&dir, "1");
    assert!(o.status.success(), "{}", stderr(&o));
    let prompt = "the lazy dog ".repeat(5); // 65 characters, context 16
    let g = attn(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &prompt,
        "--max-new-tokens",
        "5",
        "--no-echo",
    ]);
    assert!(g.status.success(), "{}", stderr(&g));
    let err = stderr(&g);
    assert!(
        err.contains("warning:") && err.contains("65 tokens") && err.contains("last 15"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_data_is_a_clear_error() {
    let dir = temp("baddata");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    fails_with(
        &attn(&["train", "--data", "/no/such/file.txt", "--out", o]),
        &["/no/such/file.txt", "not found"],
    );
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        &attn(&["train", "--data", empty.to_str().unwrap(), "--out", o]),
        &["empty.txt", "empty"],
    );
    let latin = dir.join("latin.txt");
    std::fs::write(&latin, b"caf\xe9 au lait\n".repeat(50)).unwrap();
    fails_with(
        &attn(&["train", "--data", latin.to_str().unwrap(), "--out", o]),
        &["latin.txt", "byte offset 3", "--encoding latin1"],
    );
    // No --data and no data folder: say exactly what to provide.
    fails_with(
        &attn(&["train", "--out", o]),
        &["--data", "ATTN_DATA_DIR", "tinyshakespeare/input.txt"],
    );
    // Too little text for one window.
    let short = dir.join("short.txt");
    std::fs::write(&short, "tiny\n").unwrap();
    fails_with(
        &attn(&["train", "--data", short.to_str().unwrap(), "--out", o]),
        &["block-size"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn nonsense_values_are_rejected() {
    let dir = temp("nonsense");
    let data = corpus(&dir);
    let (d, o) = (data.to_str().unwrap(), dir.join("out"));
    let o = o.to_str().unwrap();
    fails_with(
        &attn(&["train", "--data", d, "--out", o, "--lr", "-0.1"]),
        &["lr"],
    );
    fails_with(
        &attn(&["train", "--data", d, "--out", o, "--n-layer", "0"]),
        &["n-layer"],
    );
    fails_with(
        &attn(&[
            "train", "--data", d, "--out", o, "--n-embd", "10", "--n-head", "3",
        ]),
        &["n-head"],
    );
    fails_with(
        &attn(&["train", "--data", d, "--out", o, "--preset", "huge"]),
        &["preset", "shakespeare-char-cpu"],
    );
    fails_with(
        &attn(&["train", "--data", d, "--out", o, "--tokenizer", "bpe:10"]),
        &["vocab-size"],
    );
    let (model, t) = train_tiny(&dir, "1");
    assert!(t.status.success(), "{}", stderr(&t));
    let m = model.to_str().unwrap();
    fails_with(
        &attn(&["generate", "--model", m, "--top-p", "1.5"]),
        &["top-p"],
    );
    fails_with(
        &attn(&["generate", "--model", m, "--temperature", "-1"]),
        &["temperature"],
    );
    fails_with(
        &attn(&["generate", "--model", m, "--prompt", "€uro"]),
        &["U+20AC"],
    );
    fails_with(
        &attn(&[
            "eval",
            "perplexity",
            "--model",
            m,
            "--data",
            d,
            "--stride",
            "0",
        ]),
        &["stride"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn broken_model_folders_are_named() {
    let dir = temp("broken");
    let (model, t) = train_tiny(&dir, "1");
    assert!(t.status.success(), "{}", stderr(&t));
    let copy = |name: &str| -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(model.join(f), d.join(f)).unwrap();
        }
        d
    };
    let gen = |d: &Path| {
        attn(&[
            "generate",
            "--model",
            d.to_str().unwrap(),
            "--max-new-tokens",
            "2",
        ])
    };
    fails_with(&gen(&dir.join("nowhere")), &["nowhere", "not found"]);

    let d = copy("no-weights");
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    fails_with(&gen(&d), &["model.safetensors", "not found"]);

    let d = copy("bad-weights");
    std::fs::write(
        d.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage",
    )
    .unwrap();
    fails_with(&gen(&d), &["model.safetensors", "not a valid safetensors"]);

    let d = copy("truncated-weights");
    let bytes = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&gen(&d), &["model.safetensors"]);

    let d = copy("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    fails_with(&gen(&d), &["config.json", "missing"]);

    let d = copy("bad-config");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    fails_with(&gen(&d), &["config.json", "not valid JSON"]);

    let d = copy("zero-layers");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["n_layer"] = 0.into();
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    fails_with(&gen(&d), &["config.json", "n_layer"]);

    // A tokenizer with more tokens than the model's vocabulary.
    let d = copy("wrong-tokenizer");
    let big = dir.join("big");
    let data = corpus(&dir);
    let o = attn(&[
        "tokenizer",
        "train",
        "--data",
        data.to_str().unwrap(),
        "--vocab-size",
        "300",
        "--out",
        big.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::copy(big.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    fails_with(&gen(&d), &["tokenizer.json", "vocab_size"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_reports_tokens_per_second() {
    let mut args = vec!["bench", "train", "--steps", "2", "--json"];
    args.extend_from_slice(TINY);
    let o = attn(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert_eq!(v["n_layer"], 1);
    let o = attn(&[
        "bench",
        "generate",
        "--preset",
        "shakespeare-char-cpu",
        "--max-new-tokens",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["new_tokens"], 8);
    assert!(v["tokens_per_sec"].as_f64().unwrap() > 0.0);
}

/// A reader that stops early (`| head`) ends attn quietly, as it ends other Unix tools:
/// no panic from printing to a closed pipe.
#[test]
fn closed_stdout_is_not_a_panic() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = temp("pipe");
    // Per-line scores of 20,000 lines: far more than a pipe's buffer holds.
    let text = "the cat sat on the mat\n".repeat(20_000);
    let f = dir.join("lines.txt");
    std::fs::write(&f, text).unwrap();
    let f = f.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_attn"))
        .args([
            "eval",
            "rouge",
            "--hyp",
            f,
            "--ref",
            f,
            "--sentence",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("rouge1"), "{first}");
    // The reader is gone; attn must not panic writing the rest.
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.is_empty(), "{err}");
}
