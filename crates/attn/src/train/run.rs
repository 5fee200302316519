//! A training run's folder, the same for every task (language model, classification,
//! translation): a lock against a second run on it, `metrics.jsonl` (one JSON object
//! per line, appended, never through a planted link), and `checkpoint/`, the complete
//! state to resume from, replaced atomically as a folder. A resumed run first cuts the
//! log back to its checkpoint's step, so no line is repeated.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint;
use crate::{Error, Result};

pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoint";

/// Lock `out` for this run and remove what dead runs left there.
pub fn lock(out: &Path) -> Result<crate::guard::DirLock> {
    let lock = crate::guard::DirLock::acquire(out)?;
    for p in crate::guard::clean_stale_temporaries(out) {
        eprintln!("removed {} (left by an interrupted run)", p.display());
    }
    Ok(lock)
}

/// Append one line to `out/metrics.jsonl`.
pub fn append_metrics(out: &Path, line: &serde_json::Value) -> Result<()> {
    let path = out.join(METRICS_FILE);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut f = crate::guard::open_append_no_follow(&path)?;
    writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
}

/// Drop the lines of `out/metrics.jsonl` logged after step `step` (a checkpoint's): a
/// resumed run logs them again, and would otherwise repeat them. A line torn by a kill
/// mid-write is dropped as well.
pub fn cut_metrics(out: &Path, step: usize) -> Result<()> {
    let path = out.join(METRICS_FILE);
    if path.is_symlink() || !path.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut kept = String::new();
    let mut dropped = 0;
    for line in text.lines() {
        let keep = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v["step"].as_u64())
            .is_some_and(|s| s as usize <= step);
        if !keep {
            dropped += 1;
        } else {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    if dropped > 0 {
        checkpoint::write_atomic(&path, kept.as_bytes())?;
    }
    Ok(())
}

/// The checkpoint to resume from, if the folder has one.
pub fn checkpoint_dir(out: &Path) -> Option<PathBuf> {
    checkpoint::resolve_dir(&out.join(CHECKPOINT_DIR))
}

/// The checkpoint to resume from, or an error saying there is none.
pub fn require_checkpoint(out: &Path, written_by: &str) -> Result<PathBuf> {
    checkpoint_dir(out).ok_or_else(|| {
        Error::bad_file(
            out,
            format!(
                "no checkpoint/ folder to resume from (was this folder written by {written_by}?)"
            ),
        )
    })
}

/// Write `out/checkpoint`: `fill` writes the files into a fresh temporary folder,
/// which then replaces the old checkpoint in one rename.
pub fn write_checkpoint(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dst = out.join(CHECKPOINT_DIR);
    let tmp = out.join(format!("{CHECKPOINT_DIR}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    fill(&tmp)?;
    checkpoint::replace_dir(&tmp, &dst)
}
