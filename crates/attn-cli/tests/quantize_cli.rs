//! `attn quantize` end to end on a tiny trained model: f16, q8 and q4 folders, their
//! perplexity against the f32 model (and the f32 figure against `eval perplexity`),
//! generation and benchmarking from them, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn attn(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_attn"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the attn binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

fn fails_with(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("attn-quant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train(dir: &Path, corpus: &Path, n_embd: &str) -> PathBuf {
    let out = dir.join(format!("model-{n_embd}"));
    let o = attn(
        &[
            "train",
            "--data",
            corpus.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-iters",
            "60",
            "--n-layer",
            "2",
            "--n-head",
            "2",
            "--n-embd",
            n_embd,
            "--block-size",
            "32",
            "--batch-size",
            "8",
            "--eval-interval",
            "30",
            "--eval-iters",
            "2",
            "--warmup-iters",
            "5",
            "--lr-decay-iters",
            "60",
            "--dropout",
            "0",
            "--json",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

#[test]
fn quantize_writes_smaller_folders_that_score_close_to_f32() {
    let dir = temp("e2e");
    let corpus = dir.join("corpus.txt");
    let text =
        "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs.\n";
    std::fs::write(&corpus, text.repeat(80)).unwrap();
    let model = train(&dir, &corpus, "32");
    let m = model.to_str().unwrap();
    let c = corpus.to_str().unwrap();

    // (The engine's perplexity itself is checked against transformers' in
    // crates/attn/tests/engine_parity.rs.)
    let native = json(&attn(
        &["eval", "perplexity", "--model", m, "--data", c, "--json"],
        &[],
    ));
    let n = native["perplexity"].as_f64().unwrap();

    // Relative perplexity change on this model and text, measured: f16 2.2e-5, q8
    // 1.0e-4, q4 2.3e-3; the bounds are about 2.5x those.
    for (dtype, name, max_change) in [
        ("f16", "f16", 6e-5),
        ("q8", "q8_0", 2.5e-4),
        ("q4", "q4_0", 6e-3),
    ] {
        let out = dir.join(dtype);
        let o = out.to_str().unwrap();
        let v = json(&attn(
            &[
                "quantize",
                "--model",
                m,
                "--out",
                o,
                "--dtype",
                dtype,
                "--eval-data",
                c,
                "--json",
            ],
            &[],
        ));
        assert_eq!(v["dtype"], name);
        assert!(
            v["bytes_after"].as_u64().unwrap() < v["bytes_before"].as_u64().unwrap(),
            "{v}"
        );
        assert!(
            (v["perplexity_f32"].as_f64().unwrap() - n).abs() < 1e-4 * n,
            "{v}"
        );
        let change = v["perplexity_change"].as_f64().unwrap();
        eprintln!("{dtype}: perplexity change {change:.4e}");
        assert!(
            change.abs() < max_change,
            "{dtype}: perplexity change {change}"
        );
        // The folder works for eval, generation and the benchmark.
        let p = json(&attn(
            &["eval", "perplexity", "--model", o, "--data", c, "--json"],
            &[],
        ));
        assert!(
            (p["perplexity"].as_f64().unwrap() - v["perplexity"].as_f64().unwrap()).abs()
                < 1e-6 * n
        );
        let g = attn(
            &[
                "generate",
                "--model",
                o,
                "--prompt",
                "the quick",
                "--max-new-tokens",
                "12",
                "--seed",
                "1",
            ],
            &[],
        );
        assert!(g.status.success() && !g.stdout.is_empty(), "{}", stderr(&g));
        let b = json(&attn(
            &[
                "bench",
                "generate",
                "--model",
                o,
                "--max-new-tokens",
                "4",
                "--json",
            ],
            &[],
        ));
        assert_eq!(b["weight_type"], name);
        assert_eq!(b["engine"], "native");
        // Prompts of 8- and 4-bit weights are multiplied in bf16 only where the CPU has
        // AVX-512 BF16, is AMD's (Intel's run them faster in f32) and the instruction
        // set is not capped below AVX-512.
        let capped = std::env::var("ATTN_ISA").is_ok_and(|v| v == "avx2" || v == "portable");
        // The vendor as the library reads it (its own test checks that reading against
        // /proc/cpuinfo).
        #[cfg(target_arch = "x86_64")]
        let bf16 = attn::kernels::cpu::vendor_is_amd()
            && std::is_x86_feature_detected!("avx512bf16")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        let bf16 = false;
        let quantized = dtype == "q8" || dtype == "q4";
        let want = if quantized && bf16 && !capped {
            "bf16"
        } else {
            "f32"
        };
        assert_eq!(b["prompt_arithmetic"], want, "{dtype}");
        let avx2 = json(&attn(
            &[
                "bench",
                "generate",
                "--model",
                o,
                "--max-new-tokens",
                "2",
                "--json",
            ],
            &[("ATTN_ISA", "avx2")],
        ));
        assert_eq!(
            avx2["prompt_arithmetic"], "f32",
            "{dtype} with ATTN_ISA=avx2"
        );
    }

    // Bad input: each a one-line error naming the problem.
    fails_with(
        &attn(
            &[
                "quantize",
                "--model",
                m,
                "--out",
                dir.join("x").to_str().unwrap(),
                "--dtype",
                "q3",
            ],
            &[],
        ),
        "q3",
    );
    fails_with(
        &attn(
            &["quantize", "--model", m, "--out", m, "--dtype", "q8"],
            &[],
        ),
        "different folder",
    );
    fails_with(
        &attn(
            &[
                "quantize",
                "--model",
                "/no/such/model",
                "--out",
                dir.join("y").to_str().unwrap(),
                "--dtype",
                "q8",
            ],
            &[],
        ),
        "not found",
    );
    let narrow = train(&dir, &corpus, "16");
    fails_with(
        &attn(
            &[
                "quantize",
                "--model",
                narrow.to_str().unwrap(),
                "--out",
                dir.join("z").to_str().unwrap(),
                "--dtype",
                "q4",
            ],
            &[],
        ),
        "multiple of 32",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bandwidth_benchmark_reports_a_rate() {
    let v = json(&attn(
        &[
            "bench",
            "bandwidth",
            "--mib",
            "16",
            "--repeats",
            "2",
            "--json",
        ],
        &[],
    ));
    assert!(v["read_gb_per_sec"].as_f64().unwrap() > 0.1, "{v}");
    fails_with(
        &attn(&["bench", "bandwidth", "--mib", "0"], &[]),
        "at least 1",
    );
}
