//! Defences against hostile or careless input, in one place:
//!
//! - **memory budgets**: estimate what a request needs before allocating it, and refuse
//!   with an error naming the flag or field, the estimate and the memory available
//!   ([`check_memory`]), instead of letting the allocator abort the process;
//! - **input files**: a path that should be a readable file but is a folder, a FIFO or a
//!   device is named for what it is ([`regular_file`]);
//! - **output folders**: a folder that holds a model is not written into without
//!   `--overwrite`, and never when it is the input model ([`OutputDir`]); one writer per
//!   folder at a time ([`DirLock`]); stale temporaries of dead runs are removed
//!   ([`clean_stale_temporaries`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

// ---------------------------------------------------------------------------------------
// Memory

/// Bytes this process can still allocate and touch: the least of the machine's available
/// memory (RAM not needed by others, plus free swap), the address-space limit
/// (`ulimit -v`) less what is already mapped, and the cgroup's limit less its use.
/// `None` when none of these can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let mut best: Option<u64> = None;
    let mut take = |v: u64| best = Some(best.map_or(v, |b| b.min(v)));
    if let Ok(info) = std::fs::read_to_string("/proc/meminfo") {
        let field = |name: &str| -> Option<u64> {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        };
        if let Some(avail) = field("MemAvailable:") {
            take(avail + field("SwapFree:").unwrap_or(0));
        }
    }
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } == 0
            && lim.rlim_cur != libc::RLIM_INFINITY
        {
            let used = std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmSize:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<u64>().ok())
                })
                .map_or(0, |kib| kib * 1024);
            // rlim_t is u64 here but not on every target.
            #[allow(clippy::unnecessary_cast)]
            take((lim.rlim_cur as u64).saturating_sub(used));
        }
    }
    let cg = Path::new("/sys/fs/cgroup");
    if let (Ok(max), Ok(cur)) = (
        std::fs::read_to_string(cg.join("memory.max")),
        std::fs::read_to_string(cg.join("memory.current")),
    ) {
        if let (Ok(max), Ok(cur)) = (max.trim().parse::<u64>(), cur.trim().parse::<u64>()) {
            take(max.saturating_sub(cur));
        }
    }
    best
}

/// A byte count for people: "512 B", "3.2 MiB", "1.5 TiB", "3.7e9 TiB".
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else if v >= 1e6 {
        format!("{v:.1e} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuse a request that needs about `bytes` (an estimate, computed in f64 so that it
/// cannot overflow) when more than the available memory: the error names `what` (a flag
/// or config field), the estimate and what is available.
pub fn check_memory(what: &str, bytes: f64) -> Result<()> {
    if !bytes.is_finite() || bytes > (1u64 << 62) as f64 {
        return Err(Error::invalid(
            what,
            format!(
                "needs about {} of memory, far more than any machine has",
                human_bytes(bytes)
            ),
        ));
    }
    if let Some(avail) = available_memory() {
        if bytes > avail as f64 {
            return Err(Error::invalid(
                what,
                format!(
                    "needs about {} of memory but about {} is available",
                    human_bytes(bytes),
                    human_bytes(avail as f64)
                ),
            ));
        }
    }
    Ok(())
}

/// `n` copies of `value`, or an error naming `what` when the memory is not there
/// (checked, then reserved fallibly: a failed reservation is an error, not an abort).
pub fn try_filled<T: Clone>(what: &str, n: usize, value: T) -> Result<Vec<T>> {
    let bytes = n as f64 * std::mem::size_of::<T>().max(1) as f64;
    check_memory(what, bytes)?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        Error::invalid(
            what,
            format!("cannot allocate {} of memory", human_bytes(bytes)),
        )
    })?;
    v.resize(n, value);
    Ok(v)
}

/// A config or flag value that must be a finite number above zero (an epsilon, a
/// temperature, a learning rate).
pub fn positive_finite(name: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            name,
            format!("{v} must be a finite number above 0"),
        ))
    }
}

/// A dropout probability: in [0, 1).
pub fn probability(name: &str, p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::invalid(name, format!("{p} is not in [0, 1)")))
    }
}

// ---------------------------------------------------------------------------------------
// Input files

/// What a path is, in words, when it is not a regular file.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Check that `path` names an existing regular file (following symlinks): a missing
/// path is "not found", and a folder, FIFO, device or socket is named for what it is,
/// since reading one would block, never end, or fail with a confusing message.
pub fn regular_file(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::bad_file(path, "file not found"))
        }
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(Error::bad_file(
            path,
            format!("is {}, not a regular file", kind_of(&m)),
        )),
    }
}

/// Read a whole regular file (see [`regular_file`]), refusing files larger than
/// `max_bytes` with an error that names the file and the limit.
pub fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    regular_file(path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    if len > max_bytes {
        return Err(Error::bad_file(
            path,
            format!(
                "is {}, more than the {} this reader accepts",
                human_bytes(len as f64),
                human_bytes(max_bytes as f64)
            ),
        ));
    }
    check_memory(&path.display().to_string(), len as f64)?;
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

// ---------------------------------------------------------------------------------------
// Output folders

/// Files whose presence marks a folder as holding a model, a tokenizer or a training run.
const MODEL_MARKERS: [&str; 6] = [
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "checkpoint",
    "adapter_model.safetensors",
];

/// The first of [`MODEL_MARKERS`] that `dir` holds.
pub fn model_marker(dir: &Path) -> Option<&'static str> {
    MODEL_MARKERS
        .into_iter()
        .find(|m| dir.join(m).symlink_metadata().is_ok())
}

/// `path` made absolute and free of `.`, `..` and symlinks, as far as it exists (the
/// part that does not exist yet is appended as given, less `.` and `..`).
pub fn resolve_path(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    // Find the longest existing prefix, canonicalise it, and re-append the rest.
    let mut existing = abs.clone();
    let mut rest: Vec<std::ffi::OsString> = vec![];
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                match part.to_str() {
                    Some(".") => {}
                    Some("..") => {
                        out.pop();
                    }
                    _ => out.push(part),
                }
            }
            return out;
        }
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => {
                // `..` at the end, or the root: pop it and carry on.
                if let Some(parent) = existing.parent() {
                    rest.push(
                        existing
                            .file_name()
                            .map_or("..".into(), |n| n.to_os_string()),
                    );
                    existing = parent.to_path_buf();
                } else {
                    return abs;
                }
            }
        }
    }
}

/// Where a command writes its results, checked before anything is written: never the
/// folder of one of the inputs (nor a folder that contains one), and not a folder that
/// already holds a model unless `overwrite` is set.
pub struct OutputDir;

impl OutputDir {
    /// Check `out` (the value of `flag`, usually `--out`) against the `inputs` the
    /// command reads (`..` and symlinks resolved).
    pub fn check(flag: &str, out: &Path, inputs: &[&Path], overwrite: bool) -> Result<()> {
        let o = resolve_path(out);
        for input in inputs {
            let i = resolve_path(input);
            if o == i || i.starts_with(&o) {
                return Err(Error::invalid(
                    flag,
                    format!(
                        "{} is (or contains) the input {}: --out must be a different folder",
                        out.display(),
                        input.display()
                    ),
                ));
            }
        }
        if let Ok(meta) = std::fs::symlink_metadata(out) {
            if !meta.is_dir() && !meta.file_type().is_symlink() {
                return Err(Error::invalid(
                    flag,
                    format!("{} exists and is not a folder", out.display()),
                ));
            }
            if !overwrite {
                if let Some(marker) = model_marker(out) {
                    return Err(Error::invalid(
                        flag,
                        format!(
                            "{} already holds a model ({marker}); pass --overwrite to replace it, or choose another folder",
                            out.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An exclusive lock on an output folder for as long as the value lives, so that two
/// runs never write into one folder at once. The lock file (`.attn.lock`) holds the
/// holder's PID; a second run gets an error naming it.
pub struct DirLock {
    #[allow(dead_code)]
    file: std::fs::File,
    path: PathBuf,
}

impl DirLock {
    pub const FILE: &'static str = ".attn.lock";

    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(Self::FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                return Err(Error::invalid(
                    "--out",
                    format!(
                        "{} is in use by another attn run{}; wait for it to finish or choose another folder",
                        dir.display(),
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" (PID {holder})")
                        }
                    ),
                ));
            }
        }
        let mut f = &file;
        let _ = f.set_len(0);
        let _ = write!(f, "{}", std::process::id());
        let _ = f.flush();
        Ok(DirLock { file, path })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether process `pid` is alive (on Linux; elsewhere every PID counts as alive, so
/// nothing is removed).
fn pid_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Remove the temporaries that attn's own atomic writes leave when a run dies:
/// `.NAME.PID.tmp` files of dead PIDs, and `checkpoint.tmp` (called once the folder is
/// locked, so no live run of ours is writing it). Returns what was removed.
pub fn clean_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut removed = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = if name == "checkpoint.tmp" {
            true
        } else if let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
            rest.rsplit_once('.')
                .and_then(|(_, pid)| pid.parse::<u32>().ok())
                .is_some_and(|pid| pid != std::process::id() && !pid_alive(pid))
        } else {
            false
        };
        if stale {
            let p = e.path();
            let ok = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p).is_ok()
            } else {
                std::fs::remove_file(&p).is_ok()
            };
            if ok {
                removed.push(p);
            }
        }
    }
    removed
}

/// Open `path` for appending without following a symlink at its last component (a
/// link planted in an output folder must not redirect our writes).
pub fn open_append_no_follow(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path).map_err(|e| {
        if path.is_symlink() {
            Error::bad_file(
                path,
                "is a symbolic link; attn does not write through links in its output folder (remove it)",
            )
        } else {
            Error::io(path, e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(3.0 * 1024.0 * 1024.0), "3.0 MiB");
        assert!(human_bytes(1e30).ends_with("TiB"));
    }

    #[test]
    fn huge_requests_are_refused_and_small_ones_pass() {
        let e = check_memory("--thing", 1e25).unwrap_err().to_string();
        assert!(e.contains("--thing") && e.contains("memory"), "{e}");
        check_memory("--thing", 1024.0).unwrap();
        assert!(try_filled("--n", usize::MAX / 2, 0u8).is_err());
        assert_eq!(try_filled("--n", 3, 7u8).unwrap(), vec![7, 7, 7]);
    }

    #[test]
    fn non_regular_files_are_named() {
        let e = regular_file(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = regular_file(&std::env::temp_dir()).unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        let e = regular_file(Path::new("/no/such/file"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn output_folder_rules() {
        let root = std::env::temp_dir().join(format!("attn-guard-{}", std::process::id()));
        let model = root.join("model");
        std::fs::create_dir_all(&model).unwrap();
        std::fs::write(model.join("config.json"), "{}").unwrap();
        // The input itself, through `..` and through a symlink.
        assert!(OutputDir::check("--out", &model, &[&model], true).is_err());
        let dotted = model.join("..").join("model");
        assert!(OutputDir::check("--out", &dotted, &[&model], true).is_err());
        let link = root.join("link");
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&model, &link).unwrap();
        #[cfg(unix)]
        assert!(OutputDir::check("--out", &link, &[&model], true).is_err());
        // A model folder needs --overwrite; an empty or new one does not.
        let other = root.join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("model.safetensors"), "x").unwrap();
        let e = OutputDir::check("--out", &other, &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--overwrite"), "{e}");
        OutputDir::check("--out", &other, &[], true).unwrap();
        OutputDir::check("--out", &root.join("new/deeper"), &[&model], false).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("attn-lock-{}", std::process::id()));
        let first = DirLock::acquire(&dir).unwrap();
        let e = DirLock::acquire(&dir).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        drop(first);
        DirLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_runs_only() {
        let dir = std::env::temp_dir().join(format!("attn-stale-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("checkpoint.tmp")).unwrap();
        let dead = dir.join(".model.safetensors.999999999.tmp");
        let mine = dir.join(format!(".model.safetensors.{}.tmp", std::process::id()));
        let other = dir.join("notes.tmp");
        for f in [&dead, &mine, &other] {
            std::fs::write(f, "x").unwrap();
        }
        let removed = clean_stale_temporaries(&dir);
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!dead.exists() && !dir.join("checkpoint.tmp").exists());
        assert!(mine.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn appends_do_not_follow_links() {
        let dir = std::env::temp_dir().join(format!("attn-nofollow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.join("metrics.jsonl");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = open_append_no_follow(&link)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
