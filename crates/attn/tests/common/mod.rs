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
