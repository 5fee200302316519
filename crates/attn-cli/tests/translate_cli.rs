//! `attn translate train` and `attn translate` end to end on a small synthetic pair of
//! "languages": the Tatoeba-style TSV with --reverse, the held-out test files, batched
//! decoding equal to one-at-a-time decoding, scoring with `attn eval bleu`, bad input.

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

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-trcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// TSV lines "target words<TAB>source words<TAB>attribution": the second column is the
/// one to translate from, so training needs --reverse.
fn write_pairs(path: &Path, n: usize) {
    let a = [
        "red", "blue", "cat", "dog", "runs", "sleeps", "big", "small",
    ];
    let b = [
        "rot", "blau", "katze", "hund", "rennt", "schläft", "groß", "klein",
    ];
    let mut state = 12345u64;
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..n {
        let k = 2 + next(4);
        let idx: Vec<usize> = (0..k).map(|_| next(a.len())).collect();
        let en: Vec<&str> = idx.iter().map(|&i| a[i]).collect();
        let de: Vec<&str> = idx.iter().map(|&i| b[i]).collect();
        writeln!(f, "{}\t{}\tCC-BY test", de.join(" "), en.join(" ")).unwrap();
    }
}

#[test]
fn trains_from_tsv_reversed_decodes_in_batches_and_scores() {
    let dir = temp_dir("e2e");
    let tsv = dir.join("pairs.tsv");
    write_pairs(&tsv, 1200);
    let model = dir.join("model");
    let m = model.to_str().unwrap();
    let o = attn(
        &[
            "translate",
            "train",
            "--pairs",
            tsv.to_str().unwrap(),
            "--reverse",
            "--holdout",
            "40",
            "--valid-size",
            "40",
            "--out",
            m,
            "--d-model",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--ffn",
            "64",
            "--max-len",
            "16",
            "--dropout",
            "0",
            "--vocab-size",
            "300",
            "--lr",
            "3e-3",
            "--warmup",
            "50",
            "--max-steps",
            "600",
            "--batch-size",
            "32",
            "--eval-interval",
            "300",
            "--bleu-sample",
            "40",
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        summary["best_val_bleu"].as_f64().unwrap() > 60.0,
        "{summary}\n{}",
        stderr(&o)
    );
    // The held-out test side is the TSV's second column (reversed), 40 lines each.
    let src = std::fs::read_to_string(model.join("holdout.src")).unwrap();
    let tgt = std::fs::read_to_string(model.join("holdout.tgt")).unwrap();
    assert_eq!(src.lines().count(), 40);
    assert_eq!(tgt.lines().count(), 40);
    assert!(src.contains("cat") || src.contains("dog"), "{src}");
    assert!(tgt.contains("katze") || tgt.contains("hund"), "{tgt}");
    let metrics = std::fs::read_to_string(model.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2);

    // Batched beam search gives what one-sentence-at-a-time beam search gives.
    let holdout = model.join("holdout.src");
    let one = attn(
        &[
            "translate",
            "--model",
            m,
            "--beam",
            "3",
            "--batch-size",
            "1",
        ],
        Some(&holdout),
    );
    let many = attn(
        &[
            "translate",
            "--model",
            m,
            "--beam",
            "3",
            "--batch-size",
            "7",
        ],
        Some(&holdout),
    );
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(many.status.success(), "{}", stderr(&many));
    assert_eq!(one.stdout, many.stdout);
    let greedy = attn(
        &[
            "translate",
            "--model",
            m,
            "--beam",
            "1",
            "--batch-size",
            "16",
        ],
        Some(&holdout),
    );
    assert!(greedy.status.success(), "{}", stderr(&greedy));
    assert_eq!(String::from_utf8_lossy(&greedy.stdout).lines().count(), 40);

    let hyp = dir.join("hyp.txt");
    std::fs::write(&hyp, &many.stdout).unwrap();
    let o = attn(
        &[
            "eval",
            "bleu",
            "--hyp",
            hyp.to_str().unwrap(),
            "--ref",
            model.join("holdout.tgt").to_str().unwrap(),
            "--json",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let bleu: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    eprintln!("validation: {summary}\ntest: {bleu}");
    assert!(bleu["score"].as_f64().unwrap() > 60.0, "{bleu}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_translation_input_is_named() {
    let dir = temp_dir("bad");
    let (s, t) = (dir.join("a.de"), dir.join("a.en"));
    std::fs::write(&s, "eins\nzwei\ndrei\n").unwrap();
    std::fs::write(&t, "one\ntwo\n").unwrap();
    let out = dir.join("m");
    let o = attn(
        &[
            "translate",
            "train",
            "--src",
            s.to_str().unwrap(),
            "--tgt",
            t.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("error:") && e.contains("a.en"), "{e}");
    assert!(!e.contains("panicked"), "{e}");

    let o = attn(
        &["translate", "--model", dir.join("nope").to_str().unwrap()],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));

    let tsv = dir.join("p.tsv");
    write_pairs(&tsv, 30);
    let o = attn(
        &[
            "translate",
            "train",
            "--pairs",
            tsv.to_str().unwrap(),
            "--holdout",
            "20",
            "--valid-size",
            "20",
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--holdout 20"), "{}", stderr(&o));

    // A --model that is not an encoder-decoder is refused before the held-out pairs
    // would be written to --out.
    let bert = dir.join("bert");
    std::fs::create_dir_all(&bert).unwrap();
    std::fs::write(bert.join("config.json"), r#"{"model_type": "bert"}"#).unwrap();
    let out2 = dir.join("m2");
    let o = attn(
        &[
            "translate",
            "train",
            "--pairs",
            tsv.to_str().unwrap(),
            "--holdout",
            "5",
            "--valid-size",
            "5",
            "--model",
            bert.to_str().unwrap(),
            "--out",
            out2.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.starts_with("error:") && e.contains("bert"), "{e}");
    assert!(!out2.join("holdout.src").exists(), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A run continued with --resume from its checkpoint (written at every evaluation)
/// is the run that was never stopped: the same log line for line and the same weights;
/// --resume on a folder without a checkpoint says so.
#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let dir = temp_dir("resume");
    let tsv = dir.join("pairs.tsv");
    write_pairs(&tsv, 400);
    let args = |out: &Path, steps: &str| -> Vec<String> {
        [
            "translate",
            "train",
            "--pairs",
            tsv.to_str().unwrap(),
            "--holdout",
            "0",
            "--valid-size",
            "20",
            "--out",
            out.to_str().unwrap(),
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--ffn",
            "32",
            "--max-len",
            "12",
            "--vocab-size",
            "280",
            "--lr",
            "3e-3",
            "--warmup",
            "10",
            "--max-steps",
            steps,
            "--batch-size",
            "16",
            "--eval-interval",
            "10",
            "--bleu-sample",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |a: Vec<String>| {
        let a: Vec<&str> = a.iter().map(|s| s.as_str()).collect();
        let o = attn(&a, None);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let (straight, stopped) = (dir.join("straight"), dir.join("stopped"));
    run(args(&straight, "30"));
    run(args(&stopped, "20"));
    let o = attn(
        &[
            "translate",
            "train",
            "--resume",
            "--out",
            stopped.to_str().unwrap(),
            "--max-steps",
            "30",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let log = |d: &Path| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
    assert_eq!(log(&stopped).lines().count(), 3);
    assert_eq!(log(&stopped), log(&straight));
    let weights = |d: &Path| std::fs::read(d.join("checkpoint/model.safetensors")).unwrap();
    assert_eq!(weights(&stopped), weights(&straight));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = attn(
        &[
            "translate",
            "train",
            "--resume",
            "--out",
            empty.to_str().unwrap(),
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no checkpoint"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}
