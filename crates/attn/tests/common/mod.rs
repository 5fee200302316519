//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder: `$ATTN_DATA_DIR`, else `../shared/data` beside the workspace.
/// Returns None (and says so) when it is absent, except under CI, where it must exist.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the shared data folder {} is missing under CI",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no data folder at {} (set ATTN_DATA_DIR)",
        dir.display()
    );
    None
}

/// A fresh empty temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared models folder (`$ATTN_MODELS_DIR`, else `../shared/models`), with the same
/// rule as [`data_dir`]: absent is a skip locally and a failure under CI.
pub fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "the shared models folder {} is missing under CI",
            dir.display()
        );
    }
    eprintln!(
        "skipping: no models folder at {} (set ATTN_MODELS_DIR)",
        dir.display()
    );
    None
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
