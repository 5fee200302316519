//! `attn classify` and `attn eval classify` end to end, and their bad-input errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .output()
        .expect("the attn binary runs")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-clfcli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fails_with(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    for n in needles {
        assert!(line.contains(n), "{n:?} not in {line:?}");
    }
}

fn tsv(dir: &Path, name: &str, n: usize) -> PathBuf {
    let p = dir.join(name);
    let mut s = String::new();
    for i in 0..n {
        let (label, word) = if i % 2 == 0 {
            ("pos", "good")
        } else {
            ("neg", "bad")
        };
        s.push_str(&format!(
            "{label}\tthe film was {word} {}\n",
            ["indeed", "really", "overall"][i % 3]
        ));
    }
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn eval_classify_matches_scikit_learn() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../attn/tests/fixtures/classification/cases.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let dir = temp("evalclf");
    for case in cases.iter().filter(|c| {
        ["multiclass", "unseen_label_in_pred", "unicode_labels"]
            .contains(&c["name"].as_str().unwrap())
    }) {
        let write = |k: &str| {
            let p = dir.join(k);
            let lines: Vec<&str> = case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            std::fs::write(&p, lines.join("\n") + "\n").unwrap();
            p
        };
        let (gold, pred) = (write("gold"), write("pred"));
        let o = attn(&[
            "eval",
            "classify",
            "--pred",
            pred.to_str().unwrap(),
            "--gold",
            gold.to_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let want = &case["expected"];
        let keys: Vec<&String> = got.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        assert!(
            (got["accuracy"].as_f64().unwrap() - want["accuracy"].as_f64().unwrap()).abs() < 1e-12
        );
        for avg in ["macro", "micro", "weighted"] {
            assert!(
                (got[avg]["f1"].as_f64().unwrap() - want[avg]["f1"].as_f64().unwrap()).abs()
                    < 1e-12
            );
        }
        assert_eq!(got["confusion_matrix"], want["confusion_matrix"]);
    }
    let short = dir.join("short");
    std::fs::write(&short, "a\n").unwrap();
    fails_with(
        &attn(&[
            "eval",
            "classify",
            "--pred",
            short.to_str().unwrap(),
            "--gold",
            dir.join("gold").to_str().unwrap(),
        ]),
        &["same number of lines"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_predict_eval_and_bad_input() {
    let dir = temp("train");
    let train = tsv(&dir, "train.tsv", 120);
    let out = dir.join("model");
    let o = attn(&[
        "classify",
        "train",
        "--data",
        train.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--preset",
        "bert-tiny",
        "--tokenizer",
        "char",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["best_val_accuracy"].as_f64().unwrap() > 0.9, "{s}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["id2label"]["0"], "neg");
    assert_eq!(cfg["label2id"]["pos"], 1);

    let mut child = Command::new(env!("CARGO_BIN_EXE_attn"))
        .args([
            "classify",
            "predict",
            "--model",
            out.to_str().unwrap(),
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"the film was good indeed\nthe film was bad really\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["label"], "pos");
    assert_eq!(lines[1]["label"], "neg");
    let total: f64 = lines[0]["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5);

    let test = tsv(&dir, "test.tsv", 10);
    let o = attn(&[
        "classify",
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        test.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["per_class"]["pos"]["support"], 5);

    let m = out.to_str().unwrap();
    let unseen = dir.join("unseen.tsv");
    std::fs::write(&unseen, "neutral\tthe film was fine\n").unwrap();
    fails_with(
        &attn(&[
            "classify",
            "eval",
            "--model",
            m,
            "--data",
            unseen.to_str().unwrap(),
        ]),
        &["\"neutral\"", "never seen"],
    );
    let nolabel = dir.join("nolabel.tsv");
    std::fs::write(&nolabel, "pos\tgood\na line without a label\n").unwrap();
    let o2 = dir.join("o2");
    fails_with(
        &attn(&[
            "classify",
            "train",
            "--data",
            nolabel.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
        ]),
        &["nolabel.tsv", "line 2", "tab"],
    );
    let empty = dir.join("empty.tsv");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        &attn(&[
            "classify",
            "train",
            "--data",
            empty.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
        ]),
        &["empty.tsv", "empty"],
    );
    let latin = dir.join("latin.tsv");
    std::fs::write(&latin, b"pos\tcaf\xe9\n").unwrap();
    fails_with(
        &attn(&[
            "classify",
            "train",
            "--data",
            latin.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
        ]),
        &["latin.tsv", "byte offset 7", "--encoding latin1"],
    );
    let one = dir.join("one.tsv");
    std::fs::write(&one, "pos\ta\npos\tb\npos\tc\n").unwrap();
    fails_with(
        &attn(&[
            "classify",
            "train",
            "--data",
            one.to_str().unwrap(),
            "--out",
            o2.to_str().unwrap(),
            "--val-fraction",
            "0.3",
        ]),
        &["only one label"],
    );
    std::fs::remove_dir_all(&dir).ok();
}
