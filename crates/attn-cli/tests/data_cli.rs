//! The `attn data` commands end to end: minhash's signatures equal datasketch's (the
//! fixtures of `scripts/make_minhash_fixtures.py`), dedup, scrub, pii, tokenize (and
//! `attn train --shards` on its output), stats; bad input is named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn attn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attn"))
        .args(args)
        .output()
        .unwrap()
}

/// `attn data CMD --input INPUT --out OUT EXTRA...`.
fn in_out(cmd: &str, input: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "data",
        cmd,
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    attn(&args)
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-data-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fails_with(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "should fail");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.starts_with("error: "), "{e}");
    for n in needles {
        assert!(e.contains(n), "{n:?} not in {e}");
    }
}

#[test]
fn minhash_lines_equal_datasketch() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../attn/tests/fixtures/minhash/cases.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixtures).unwrap()).unwrap();
    let texts: Vec<&str> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // Texts that are one line each (a text holding a line break is two lines here).
    let keep: Vec<usize> = (0..texts.len())
        .filter(|&i| !texts[i].contains(['\n', '\r']))
        .collect();
    let dir = temp("minhash");
    let input = dir.join("lines.txt");
    let body: String = keep.iter().map(|&i| format!("{}\n", texts[i])).collect();
    std::fs::write(&input, body).unwrap();
    let mut compared = 0;
    for case in doc["cases"].as_array().unwrap() {
        let o = attn(&[
            "data",
            "minhash",
            "--input",
            input.to_str().unwrap(),
            "--num-perm",
            &case["num_perm"].to_string(),
            "--seed",
            &case["seed"].to_string(),
            "--ngram",
            &case["ngram"].to_string(),
            "--shingle",
            case["shingle"].as_str().unwrap(),
            "--scheme",
            case["scheme"].as_str().unwrap(),
            "--json",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let lines: Vec<Value> = String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), keep.len());
        for (line, &i) in lines.iter().zip(&keep) {
            assert_eq!(
                line["signature"], case["signatures"][i],
                "text {i}, {}",
                case["scheme"]
            );
            compared += 1;
        }
    }
    assert!(compared > 100);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn minhash_bad_input_is_named() {
    let dir = temp("minhash-bad");
    let bad = dir.join("bad.txt");
    std::fs::write(&bad, b"fine line\nsecond \xc3\x28 line\n").unwrap();
    let p = bad.to_str().unwrap();
    fails_with(
        &attn(&["data", "minhash", "--input", p]),
        &["bad.txt", "line 2", "UTF-8", "byte 17"],
    );
    let missing = dir.join("missing.txt");
    fails_with(
        &attn(&["data", "minhash", "--input", missing.to_str().unwrap()]),
        &["missing.txt"],
    );
    std::fs::write(&bad, b"ok\n").unwrap();
    fails_with(
        &attn(&["data", "minhash", "--input", p, "--num-perm", "0"]),
        &["num-perm"],
    );
    fails_with(
        &attn(&["data", "minhash", "--input", p, "--seed", "4294967296"]),
        &["seed"],
    );
    fails_with(
        &attn(&["data", "minhash", "--input", p, "--shingle", "bytes"]),
        &["shingle"],
    );
    fails_with(
        &attn(&["data", "minhash", "--input", p, "--scheme", "affine16"]),
        &["scheme"],
    );
    fails_with(
        &attn(&["data", "minhash", "--input", p, "--ngram", "0"]),
        &["ngram"],
    );
    fails_with(
        &attn(&["data", "minhash", "--input", dir.to_str().unwrap()]),
        &["regular file"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn dedup_writes_kept_lines_and_refuses_bad_requests() {
    let dir = temp("dedup");
    let input = dir.join("docs.txt");
    std::fs::write(
        &input,
        "alpha beta gamma\nsomething else\nalpha  beta gamma \n",
    )
    .unwrap();
    let out = dir.join("out");
    let run = |extra: &[&str]| in_out("dedup", &input, &out, extra);
    let o = run(&["--exact", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["units"].as_u64(), v["kept"].as_u64()),
        (Some(3), Some(2))
    );
    assert_eq!(
        std::fs::read_to_string(out.join("docs.txt")).unwrap(),
        "alpha beta gamma\nsomething else\n"
    );
    // A second run into the same folder needs --overwrite.
    fails_with(&run(&["--exact"]), &["--overwrite"]);
    assert!(run(&["--exact", "--overwrite"]).status.success());
    fails_with(&run(&["--overwrite"]), &["--exact", "--near"]);
    fails_with(
        &run(&["--near", "--overwrite", "--bands", "20", "--rows", "10"]),
        &["200 permutations", "128"],
    );
    fails_with(
        &run(&["--near", "--overwrite", "--threshold", "1.5"]),
        &["threshold"],
    );
    fails_with(
        &run(&["--near", "--overwrite", "--unit", "sentence"]),
        &["unit"],
    );
    // The output folder may not hold the input.
    let o = attn(&[
        "data",
        "dedup",
        "--input",
        input.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--exact",
    ]);
    fails_with(&o, &["--out"]);
    std::fs::write(&input, b"ok\n\xff\n").unwrap();
    fails_with(
        &run(&["--exact", "--overwrite"]),
        &["docs.txt", "line 2", "UTF-8"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn scrub_masks_or_drops_lines_and_counts_kinds() {
    let dir = temp("scrub");
    let input = dir.join("notes.txt");
    std::fs::write(
        &input,
        "write to a.b+x@example.co.uk today\nno personal data, order 4111111111111112\n卡号4111-1111-1111-1111，手机13812345678\n",
    )
    .unwrap();
    let out = dir.join("out");
    let run = |extra: &[&str]| in_out("scrub", &input, &out, extra);
    let o = run(&["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["counts"],
        serde_json::json!({"email": 1, "credit-card": 1, "cn-mobile": 1})
    );
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "write to <EMAIL> today\nno personal data, order 4111111111111112\n卡号<CREDIT_CARD>，手机<CN_MOBILE>\n"
    );
    fails_with(&run(&[]), &["--overwrite"]);
    let o = run(&["--overwrite", "--mode", "remove-line", "--types", "email"]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "no personal data, order 4111111111111112\n卡号4111-1111-1111-1111，手机13812345678\n"
    );
    fails_with(
        &run(&["--overwrite", "--types", "email,ssn"]),
        &["ssn", "email, "],
    );
    fails_with(&run(&["--overwrite", "--mode", "redact"]), &["redact"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tokenize_writes_shards_an_index_and_the_tokenizer() {
    let dir = temp("tokenize");
    let text = dir.join("text.txt");
    std::fs::write(&text, "the cat sat on the mat\nthe dog ran\n".repeat(50)).unwrap();
    let tok = dir.join("tok");
    let o = attn(&[
        "tokenizer",
        "train",
        "--data",
        text.to_str().unwrap(),
        "--vocab-size",
        "280",
        "--out",
        tok.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = dir.join("shards");
    let tj = tok.join("tokenizer.json");
    let run = |extra: &[&str]| {
        let mut args = vec!["--tokenizer", tj.to_str().unwrap()];
        args.extend_from_slice(extra);
        in_out("tokenize", &text, &out, &args)
    };
    let o = run(&["--shard-tokens", "100", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["width"], 2);
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("index.json")).unwrap()).unwrap();
    let train: u64 = index["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(train, v["train_tokens"].as_u64().unwrap());
    assert_eq!(
        train + index["val"]["tokens"].as_u64().unwrap(),
        v["tokens"].as_u64().unwrap()
    );
    assert!(index["train"].as_array().unwrap().len() > 1);
    assert!(out.join("tokenizer.json").is_file() && out.join("val.bin").is_file());
    fails_with(&run(&[]), &["--overwrite"]);
    fails_with(
        &run(&["--overwrite", "--val-fraction", "1.5"]),
        &["val-fraction"],
    );
    fails_with(
        &run(&["--overwrite", "--shard-tokens", "0"]),
        &["shard-tokens"],
    );
    fails_with(&run(&["--overwrite", "--encoding", "utf16"]), &["utf16"]);

    // attn train reads the shards: their tokenizer, their split, no text.
    let model = dir.join("model");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--shards",
            out.to_str().unwrap(),
            "--out",
            model.to_str().unwrap(),
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--n-embd",
            "16",
            "--block-size",
            "16",
            "--batch-size",
            "2",
            "--max-iters",
            "3",
            "--eval-interval",
            "3",
            "--eval-iters",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        attn(&args)
    };
    let o = train(&[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["steps"], 3, "{v}");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["vocab_size"], index["vocab_size"]);
    fails_with(
        &train(&["--tokenizer", "char"]),
        &["--tokenizer", "--shards"],
    );
    fails_with(
        &train(&["--data", text.to_str().unwrap()]),
        &["--data", "--shards"],
    );
    let o = attn(&[
        "train",
        "--shards",
        dir.to_str().unwrap(),
        "--out",
        dir.join("m2").to_str().unwrap(),
    ]);
    fails_with(&o, &["index.json", "attn data tokenize"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stats_describe_a_corpus() {
    let dir = temp("stats");
    let input = dir.join("c.txt");
    std::fs::write(
        &input,
        "one line\none line\n\n第二段 call +1 415 555 0132\n",
    )
    .unwrap();
    let o = attn(&[
        "data",
        "stats",
        "--input",
        input.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["lines"], 4);
    assert_eq!(v["documents"], 2);
    assert_eq!(v["duplicate_lines"], 1);
    assert_eq!(v["pii"]["phone"], 1);
    assert!(v["scripts"]["han"].as_f64().unwrap() > 0.0);
    assert!(v["tokens"].is_null());
    fails_with(
        &attn(&[
            "data",
            "stats",
            "--input",
            dir.join("nope.txt").to_str().unwrap(),
        ]),
        &["nope.txt"],
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// `attn data pii`: one line of spans per input line, in character offsets (CJK text
/// before a span counts one per character), kinds filtered by --types; and
/// --skip-invalid on scrub skips a line that is not UTF-8 and counts it.
#[test]
fn pii_spans_are_in_characters_and_bad_lines_can_be_skipped() {
    let dir = temp("pii");
    let f = dir.join("lines.txt");
    std::fs::write(
        &f,
        "访问john@example.com了解\nnothing here\nip 10.0.0.1 and x@y.org\n",
    )
    .unwrap();
    let o = attn(&["data", "pii", "--input", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["spans"], serde_json::json!([[2, 18, "email"]]));
    assert_eq!(rows[1]["spans"], serde_json::json!([]));
    assert_eq!(
        rows[2]["spans"],
        serde_json::json!([[3, 11, "ip"], [16, 23, "email"]])
    );
    let o = attn(&[
        "data",
        "pii",
        "--input",
        f.to_str().unwrap(),
        "--types",
        "ip",
        "--json",
    ]);
    let last: Value =
        serde_json::from_str(String::from_utf8(o.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(last["spans"], serde_json::json!([[3, 11, "ip"]]));

    std::fs::write(&f, b"a@b.org\nbad \xff\n").unwrap();
    let out = dir.join("out");
    fails_with(
        &in_out("scrub", &f, &out, &[]),
        &["lines.txt", "line 2", "--skip-invalid"],
    );
    let o = in_out("scrub", &f, &out, &["--skip-invalid", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["lines"].as_u64(), v["invalid_skipped"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        std::fs::read_to_string(out.join("lines.txt")).unwrap(),
        "<EMAIL>\n"
    );
    std::fs::remove_dir_all(&dir).ok();
}
