//! `attn eval bleu` and `attn eval chrf` on files, against sacreBLEU fixtures.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .output()
        .expect("the attn binary runs")
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../attn/tests/fixtures/bleu/cases.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Write a case's hypotheses and reference streams to files, if no line holds a newline.
fn files(c: &Value, dir: &std::path::Path) -> Option<(PathBuf, Vec<PathBuf>)> {
    let lines = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let hyps = lines(&c["hyps"]);
    let refs: Vec<Vec<String>> = c["refs"].as_array().unwrap().iter().map(lines).collect();
    if hyps
        .iter()
        .chain(refs.iter().flatten())
        .any(|l| l.contains('\n') || l.contains('\r'))
    {
        return None;
    }
    let name = c["name"].as_str().unwrap();
    let hyp = dir.join(format!("{name}.hyp"));
    std::fs::write(&hyp, hyps.join("\n") + "\n").unwrap();
    let refs = refs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let p = dir.join(format!("{name}.ref{i}"));
            std::fs::write(&p, r.join("\n") + "\n").unwrap();
            p
        })
        .collect();
    Some((hyp, refs))
}

#[test]
fn cli_scores_and_signatures_match_sacrebleu() {
    let dir = std::env::temp_dir().join(format!("attn-bleucli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut n = 0;
    for c in cases() {
        let metric = c["metric"].as_str().unwrap();
        let o = &c["options"];
        let default_bleu = metric == "bleu"
            && o["smooth_method"] == "exp"
            && o["effective_order"] == false
            && o["max_ngram_order"] == 4;
        let default_chrf = metric == "chrf" && o["eps_smoothing"] == false;
        if !(default_bleu || default_chrf) {
            continue;
        }
        let Some((hyp, refs)) = files(&c, &dir) else {
            continue;
        };
        let mut args: Vec<String> = vec![
            "eval".into(),
            metric.into(),
            "--hyp".into(),
            hyp.to_string_lossy().into(),
            "--json".into(),
        ];
        for r in &refs {
            args.push("--ref".into());
            args.push(r.to_string_lossy().into());
        }
        if o["lowercase"] == true {
            args.push("--lowercase".into());
        }
        if default_bleu {
            args.extend(["--tokenize".into(), o["tokenize"].as_str().unwrap().into()]);
        } else {
            for (flag, key) in [
                ("--word-order", "word_order"),
                ("--char-order", "char_order"),
            ] {
                args.extend([flag.into(), o[key].to_string()]);
            }
            args.extend(["--beta".into(), o["beta"].to_string()]);
            if o["whitespace"] == true {
                args.push("--whitespace".into());
            }
        }
        let out = attn(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = &c["expected"];
        let d = (got["score"].as_f64().unwrap() - want["score"].as_f64().unwrap()).abs();
        assert!(
            d <= 1e-9,
            "{}: {} vs {}",
            c["name"],
            got["score"],
            want["score"]
        );
        assert_eq!(got["signature"], want["signature"], "{}", c["name"]);
        n += 1;
    }
    assert!(n >= 20, "only {n} cases ran through the CLI");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mismatched_files_and_sentence_mode() {
    let dir = std::env::temp_dir().join(format!("attn-bleucli2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (h, r, r2) = (dir.join("h"), dir.join("r"), dir.join("r2"));
    std::fs::write(&h, "the cat sat on the mat\n\na b\n").unwrap();
    std::fs::write(&r, "the cat sat on a mat\nsomething\na b c\n").unwrap();
    std::fs::write(&r2, "only one line\n").unwrap();
    let o = attn(&[
        "eval",
        "bleu",
        "--hyp",
        h.to_str().unwrap(),
        "--ref",
        r2.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.starts_with("error:")
            && err.contains("1 lines")
            && err.contains("has 3"),
        "{err}"
    );
    let o = attn(&[
        "eval",
        "bleu",
        "--hyp",
        h.to_str().unwrap(),
        "--ref",
        r.to_str().unwrap(),
        "--sentence",
        "--json",
    ]);
    assert!(o.status.success());
    let lines: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(
        lines[1]["score"].as_f64().unwrap(),
        0.0,
        "an empty hypothesis scores 0"
    );
    assert!(lines[1]["signature"].as_str().unwrap().contains("eff:yes"));
    std::fs::remove_dir_all(&dir).ok();
}
