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
