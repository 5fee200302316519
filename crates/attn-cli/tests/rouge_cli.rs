//! `attn eval rouge` on files, against the rouge-score values of
//! crates/attn/tests/fixtures/rouge/cases.json (scripts/make_rouge_fixtures.py).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const TOL: f64 = 1e-12;
const TYPES: [&str; 4] = ["rouge1", "rouge2", "rougeL", "rougeLsum"];
const KEYS: [&str; 3] = ["precision", "recall", "fmeasure"];

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .output()
        .expect("the attn binary runs")
}

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attn/tests/fixtures/rouge/cases.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-rougecli-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lines(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn write(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Compare one JSON object of attn's output with 12 fixture values.
fn check(got: &Value, want: &Value, at: &str) -> usize {
    let want: Vec<f64> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(want.len(), 12);
    let mut k = 0;
    for t in TYPES {
        for key in KEYS {
            let g = got[t][key]
                .as_f64()
                .unwrap_or_else(|| panic!("{at}: no {t}.{key} in {got}"));
            assert!(
                (g - want[k]).abs() <= TOL,
                "{at} {t}.{key}: attn {g} vs rouge-score {}",
                want[k]
            );
            k += 1;
        }
    }
    k
}

#[test]
fn cli_matches_rouge_score() {
    let f = fixture();
    let dir = temp_dir("fixture");
    let mut checked = 0;
    let mut cases = 0;
    for case in f["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (hyps, refs) = (lines(&case["hyps"]), lines(&case["refs"]));
        // A file line cannot hold a line break.
        if hyps
            .iter()
            .chain(&refs)
            .any(|l| l.contains('\n') || l.contains('\r'))
        {
            continue;
        }
        let (h, r) = (
            dir.join(format!("{name}.hyp")),
            dir.join(format!("{name}.ref")),
        );
        write(&h, &hyps);
        write(&r, &refs);
        for (key, stem) in [("nostem", false), ("stem", true)] {
            let mut args = vec![
                "eval",
                "rouge",
                "--hyp",
                h.to_str().unwrap(),
                "--ref",
                r.to_str().unwrap(),
                "--tokenize",
                case["tokenize"].as_str().unwrap(),
                "--json",
            ];
            if stem {
                args.push("--stem");
            }
            if let Some(t) = case["newline_token"].as_str() {
                args.extend(["--newline-token", t]);
            }
            let want = &case["scores"][key];
            let out = attn(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mean: Value = serde_json::from_slice(&out.stdout).unwrap();
            checked += check(&mean, &want["mean"], &format!("{name}/{key} mean"));
            assert_eq!(mean["lines"], hyps.len());

            args.push("--sentence");
            let out = attn(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let got: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            let want_lines = want["lines"].as_array().unwrap();
            assert_eq!(got.len(), want_lines.len(), "{name}/{key}");
            for (i, (g, w)) in got.iter().zip(want_lines).enumerate() {
                checked += check(g, w, &format!("{name}/{key} line {i}"));
            }
        }
        cases += 1;
    }
    std::fs::remove_dir_all(&dir).ok();
    // The fixture has some twenty one-line-per-pair cases, newline tokens and zh-char
    // among them.
    assert!(
        cases >= 15 && checked > 50_000,
        "{cases} cases, {checked} values"
    );
}

#[test]
fn human_readable_table() {
    let dir = temp_dir("table");
    let (h, r) = (dir.join("h"), dir.join("r"));
    write(&h, &["the cat sat on the mat", ""]);
    write(&r, &["the cat is on the mat", "x"]);
    let out = attn(&[
        "eval",
        "rouge",
        "--hyp",
        h.to_str().unwrap(),
        "--ref",
        r.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Line 1: 5 of 6 unigrams, 3 of 5 bigrams, LCS 5; line 2 scores 0.
    let row = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row in {text}"))
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse::<f64>().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(row("rouge1"), [0.4167, 0.4167, 0.4167]);
    assert_eq!(row("rouge2"), [0.3, 0.3, 0.3]);
    assert_eq!(row("rougeLsum"), [0.4167, 0.4167, 0.4167]);
    assert!(text.contains("mean over 2 lines"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}

fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure; stderr {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = temp_dir("bad");
    let (h, r, e) = (dir.join("h"), dir.join("r"), dir.join("empty"));
    write(&h, &["a b", "c d", "e"]);
    write(&r, &["a b", "c d"]);
    std::fs::write(&e, "").unwrap();
    let (hs, rs, es) = (
        h.to_str().unwrap(),
        r.to_str().unwrap(),
        e.to_str().unwrap(),
    );
    fails_with(
        &attn(&["eval", "rouge", "--hyp", hs, "--ref", rs]),
        &["2 lines", "has 3", "parallel"],
    );
    fails_with(
        &attn(&["eval", "rouge", "--hyp", es, "--ref", es]),
        &["no lines"],
    );
    fails_with(
        &attn(&[
            "eval",
            "rouge",
            "--hyp",
            hs,
            "--ref",
            hs,
            "--tokenize",
            "zh",
        ]),
        &["\"zh\"", "zh-char"],
    );
    fails_with(
        &attn(&[
            "eval",
            "rouge",
            "--hyp",
            hs,
            "--ref",
            hs,
            "--newline-token",
            "",
        ]),
        &["--newline-token"],
    );
    std::fs::remove_dir_all(&dir).ok();
}
