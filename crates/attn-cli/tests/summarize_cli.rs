//! `attn pretrain` (span corruption), `attn summarize train --model` and `attn
//! summarize` end to end on synthetic documents: a stopped pre-training run resumed
//! equals the run never stopped; its folder fine-tunes into a summarizer whose output
//! has one line per document; bad options are named.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn attn(args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attn"));
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    match stdin {
        Some(p) => cmd.stdin(std::fs::File::open(p).unwrap()),
        None => cmd.stdin(Stdio::null()),
    };
    cmd.output().expect("the attn binary runs")
}

fn ok(args: &[&str]) -> Output {
    let o = attn(args, None);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-sumcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Documents of 6 to 13 words of a small vocabulary; the "summary" of a document is its
/// first two words.
fn write_docs(dir: &Path, n: usize) -> (PathBuf, PathBuf) {
    let words = [
        "river", "moon", "autumn", "wind", "mountain", "friend", "wine", "night", "spring", "rain",
        "boat", "cloud",
    ];
    let mut state = 99u64;
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let (docs, pairs) = (dir.join("docs.txt"), dir.join("pairs.tsv"));
    let mut d = std::fs::File::create(&docs).unwrap();
    let mut p = std::fs::File::create(&pairs).unwrap();
    for _ in 0..n {
        let k = 6 + next(8);
        let doc: Vec<&str> = (0..k).map(|_| words[next(words.len())]).collect();
        writeln!(d, "{}", doc.join(" ")).unwrap();
        writeln!(p, "{}\t{}", doc.join(" "), doc[..2].join(" ")).unwrap();
    }
    (docs, pairs)
}

#[test]
fn pretraining_resumes_exactly_and_fine_tunes_into_a_summarizer() {
    let dir = temp_dir("pretrain");
    let (docs, pairs) = write_docs(&dir, 300);
    let pre = |out: &Path, steps: &str| {
        ok(&[
            "pretrain",
            "--data",
            docs.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--holdout",
            "0",
            "--valid-size",
            "20",
            "--vocab",
            "char",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--ffn",
            "24",
            "--max-len",
            "96",
            "--batch-size",
            "8",
            "--max-steps",
            steps,
            "--eval-interval",
            "6",
            "--lr",
            "3e-3",
            "--warmup",
            "5",
        ]);
    };
    let (straight, stopped) = (dir.join("straight"), dir.join("stopped"));
    pre(&straight, "18");
    pre(&stopped, "12");
    let o = ok(&[
        "pretrain",
        "--resume",
        "--out",
        stopped.to_str().unwrap(),
        "--max-steps",
        "18",
        "--json",
    ]);
    // The summary names the pre-training's measure: the loss itself, not minus it.
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let loss = summary["best_val_loss"].as_f64().unwrap();
    assert!(loss > 0.0 && loss.is_finite(), "{summary}");
    assert!(summary.get("best_val_bleu").is_none(), "{summary}");
    let log = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(log(&stopped).lines().count(), 3, "{}", log(&stopped));
    assert!(log(&stopped).contains("val_loss"));
    assert_eq!(log(&stopped), log(&straight));
    let weights = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(weights(&stopped), weights(&straight));
    // The pre-trained folder is a T5 with sentinels, and fine-tunes into a summarizer.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "t5");
    let tok = std::fs::read_to_string(straight.join("tokenizer.json")).unwrap();
    assert!(tok.contains("<extra_id_0>") && tok.contains("<extra_id_99>"));
    let sum = dir.join("sum");
    let o = ok(&[
        "summarize",
        "train",
        "--pairs",
        pairs.to_str().unwrap(),
        "--model",
        straight.to_str().unwrap(),
        "--out",
        sum.to_str().unwrap(),
        "--holdout",
        "20",
        "--valid-size",
        "20",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--eval-interval",
        "6",
        "--bleu-sample",
        "5",
        "--dropout",
        "0.25",
        "--json",
    ]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["steps"], 12);
    // --dropout replaces the pre-trained model's own (0.1 here) for the fine-tuning.
    let tuned: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sum.join("config.json")).unwrap()).unwrap();
    let rate = |c: &serde_json::Value| c["dropout_rate"].as_f64().unwrap();
    assert!((rate(&cfg) - 0.1).abs() < 1e-6, "{cfg}");
    assert_eq!(rate(&tuned), 0.25, "{tuned}");
    assert!(summary["best_val_rouge_l"].as_f64().is_some(), "{summary}");
    assert!(summary.get("best_val_bleu").is_none(), "{summary}");
    assert!(log(&sum).contains("val_rouge_l"), "{}", log(&sum));
    let held = sum.join("holdout.src");
    let o = attn(
        &[
            "summarize",
            "--model",
            sum.to_str().unwrap(),
            "--beam",
            "2",
            "--max-len",
            "6",
            "--min-len",
            "1",
            "--no-repeat-ngram-size",
            "2",
        ],
        Some(&held),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 20);
    // Bad options are named.
    let o = attn(
        &[
            "summarize",
            "--model",
            sum.to_str().unwrap(),
            "--max-len",
            "3",
            "--min-len",
            "5",
        ],
        Some(&held),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--min-len"));
    let o = attn(&["summarize"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("summarize train"));
    let o = attn(
        &["pretrain", "--out", dir.join("x").to_str().unwrap()],
        None,
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--data"));
    std::fs::remove_dir_all(&dir).ok();
}
