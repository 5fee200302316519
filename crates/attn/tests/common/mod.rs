//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A test input that is absent: a failure, so that no test passes without its data,
/// unless skips were asked for with `ATTN_ALLOW_SKIPS=1` (never under `CI=true`); then
/// `None`, said on stderr.
pub fn missing(what: &str, dir: &std::path::Path) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let allowed = std::env::var("ATTN_ALLOW_SKIPS").is_ok_and(|v| v == "1");
    if ci || !allowed {
        panic!(
            "the {what} {} is missing{}: put it there, point the variable at it, or set \
             ATTN_ALLOW_SKIPS=1 to skip the tests that need it",
            dir.display(),
            if ci { " under CI" } else { "" }
        );
    }
    eprintln!(
        "skipping (ATTN_ALLOW_SKIPS=1): no {what} at {}",
        dir.display()
    );
    None
}

/// The shared data folder: `$ATTN_DATA_DIR`, else `../shared/data` beside the workspace.
/// Absent, it is a failure (see [`missing`]).
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    missing("shared data folder (ATTN_DATA_DIR)", &dir)
}

/// A fresh empty temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared models folder (`$ATTN_MODELS_DIR`, else `../shared/models`), with the same
/// rule as [`data_dir`].
pub fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    missing("shared models folder (ATTN_MODELS_DIR)", &dir)
}

/// Copy every file of `src` into a fresh folder `dst`.
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The (step, loss) of every training step of a run to its end.
pub fn losses(t: &mut attn::train::Trainer) -> Vec<(usize, f64)> {
    let mut out = vec![];
    t.run(&mut |e| {
        if let attn::train::Event::Step(s) = e {
            out.push((s.step, s.loss))
        }
    })
    .unwrap();
    out
}

/// A small language with structure to learn, written to `path`, and a tiny model and
/// schedule to train on it (dropout on, so that resuming must restore the RNG).
pub fn synthetic_text(path: &std::path::Path) {
    // A small language with structure to learn: words from a fixed list.
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far",
    ];
    let mut rng = attn::rng::Rng::new(9);
    let text: String = (0..3000)
        .map(|i| {
            let w = words[rng.below(words.len())];
            if i % 12 == 11 {
                format!("{w}.\n")
            } else {
                format!("{w} ")
            }
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

pub fn tiny_config(max_iters: usize) -> attn::train::TrainConfig {
    attn::train::TrainConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 16,
        dropout: 0.1,
        batch_size: 4,
        grad_accum: 2,
        max_iters,
        warmup_iters: 2,
        lr_decay_iters: 6,
        eval_interval: 3,
        eval_iters: 2,
        log_interval: 1,
        ..attn::train::TrainConfig::default()
    }
}
