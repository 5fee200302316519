//! Text files read line by line in batches, so that a corpus of any size goes through in
//! bounded memory; every line is checked as UTF-8, an error naming the file, the line and
//! the byte offset (or, when asked, the line skipped and counted). Output files are
//! written as they go to hidden temporaries and put in place together when the command
//! succeeds ([`Outputs`]), so that a failed or killed command leaves no output half
//! written.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Bytes of text read by the data commands' readers in this process, for progress
/// displays (a count, never reset).
static READ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The bytes of input the data readers have read so far in this process.
pub fn bytes_read() -> u64 {
    READ.load(std::sync::atomic::Ordering::Relaxed)
}

/// Count `n` bytes as read (see [`bytes_read`]).
pub(crate) fn count_read(n: usize) {
    READ.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
}

/// The longest line accepted (a file without line breaks is not a corpus of lines).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// A text file's lines, without their terminators (`\n`, or `\r\n`).
pub struct LineBatches {
    reader: BufReader<File>,
    path: PathBuf,
    /// Byte offset of the next line, and its number (from 1).
    offset: u64,
    line: u64,
    done: bool,
    /// Skip lines that are not UTF-8 (counted in `skipped`) instead of failing.
    skip_invalid: bool,
    skipped: u64,
}

impl LineBatches {
    pub fn open(path: &Path) -> Result<Self> {
        crate::guard::regular_file(path)?;
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(LineBatches {
            reader: BufReader::with_capacity(1 << 20, f),
            path: path.to_path_buf(),
            offset: 0,
            line: 1,
            done: false,
            skip_invalid: false,
            skipped: 0,
        })
    }

    /// Skip the lines that are not valid UTF-8, counting them, instead of failing.
    pub fn skip_invalid(mut self, yes: bool) -> Self {
        self.skip_invalid = yes;
        self
    }

    /// The lines skipped so far as not valid UTF-8.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The number of the next line (from 1).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Up to `max_lines` lines (fewer at the end of the file; none after it).
    pub fn next_batch(&mut self, max_lines: usize) -> Result<Vec<String>> {
        Ok(self
            .next_numbered(max_lines)?
            .into_iter()
            .map(|(_, l)| l)
            .collect())
    }

    /// [`Self::next_batch`], each line with its number in the file (from 1; skipped
    /// lines keep their numbers).
    pub fn next_numbered(&mut self, max_lines: usize) -> Result<Vec<(u64, String)>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < max_lines && !self.done {
            buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 2)
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(&self.path, e))?;
            count_read(n);
            if n == 0 {
                self.done = true;
                break;
            }
            let ended = buf.last() == Some(&b'\n');
            if !ended && n > MAX_LINE_BYTES {
                return Err(Error::bad_file(
                    &self.path,
                    format!(
                        "line {} (byte {}) is longer than {} MiB",
                        self.line,
                        self.offset,
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            let mut text = &buf[..];
            if let Some(t) = text.strip_suffix(b"\n") {
                text = t.strip_suffix(b"\r").unwrap_or(t);
            }
            match std::str::from_utf8(text) {
                Ok(s) => out.push((self.line, s.to_string())),
                Err(_) if self.skip_invalid => self.skipped += 1,
                Err(e) => {
                    return Err(Error::bad_file(
                        &self.path,
                        format!(
                            "line {} is not valid UTF-8 (byte {}); pass --skip-invalid to skip such lines",
                            self.line,
                            self.offset + e.valid_up_to() as u64
                        ),
                    ))
                }
            }
            self.offset += n as u64;
            self.line += 1;
            if !ended {
                self.done = true;
            }
        }
        Ok(out)
    }
}

/// Check that `files` can each give their name to an output file in one folder: at
/// least one, each with a file name, no two alike.
pub fn output_names(files: &[PathBuf]) -> Result<()> {
    if files.is_empty() {
        return Err(Error::invalid("input", "give at least one file"));
    }
    let mut names = std::collections::HashSet::new();
    for f in files {
        let name = f
            .file_name()
            .ok_or_else(|| Error::bad_file(f, "has no file name"))?;
        if !names.insert(name.to_owned()) {
            return Err(Error::invalid(
                "input",
                format!(
                    "two inputs are named {}: outputs keep the input names, so they must differ",
                    name.to_string_lossy()
                ),
            ));
        }
    }
    Ok(())
}

/// The files a command writes into one folder. Each is written to a hidden temporary
/// beside its final name; [`Outputs::commit`] puts them all in place once everything
/// succeeded. Dropped without a commit (an error), the temporaries are removed; those
/// of a killed run are removed by the next run in the folder.
pub struct Outputs {
    dir: PathBuf,
    /// Temporaries complete and flushed, with their final paths.
    kept: Vec<(PathBuf, PathBuf)>,
}

/// One output file being written (see [`Outputs`]).
pub struct Staged {
    tmp: PathBuf,
    dst: PathBuf,
    w: Option<BufWriter<File>>,
}

const PARTIAL: &str = ".attn-partial-";

impl Outputs {
    /// Outputs into `dir` (created if need be); temporaries that a run no longer alive
    /// left there are removed.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for e in std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            // Only names this writes: `.NAME.attn-partial-PID-SEQ`.
            let Some((pid, seq)) = name
                .strip_prefix('.')
                .and_then(|n| n.rsplit_once(PARTIAL))
                .and_then(|(_, tail)| tail.split_once('-'))
            else {
                continue;
            };
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            if !digits(pid) || !digits(seq) {
                continue;
            }
            let alive = pid
                .parse::<i32>()
                .is_ok_and(|p| p == std::process::id() as i32 || process_alive(p));
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(Outputs {
            dir: dir.to_path_buf(),
            kept: Vec::new(),
        })
    }

    /// Start writing the output file `name`.
    pub fn create(&self, name: &str) -> Result<Staged> {
        let dst = self.dir.join(name);
        // Unique per file, so that a name written again does not clobber the first
        // until it is kept.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{name}{PARTIAL}{}-{seq}", std::process::id()));
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staged {
            tmp,
            dst,
            w: Some(BufWriter::with_capacity(1 << 20, f)),
        })
    }

    /// Write the whole output file `name` at once.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let mut s = self.create(name)?;
        s.write_all(bytes)?;
        self.keep(s)
    }

    /// Write the output file `name` as pretty-printed JSON.
    pub fn write_json(&mut self, name: &str, value: &serde_json::Value) -> Result<()> {
        self.write(name, crate::checkpoint::json_text(value).as_bytes())
    }

    /// A finished file: flushed to disk, to be put in place by [`Outputs::commit`]. A
    /// file kept earlier under the same name is replaced.
    pub fn keep(&mut self, mut s: Staged) -> Result<()> {
        let w = s.w.take().expect("a staged file is kept once");
        let flushed = w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(e) = flushed {
            let _ = std::fs::remove_file(&s.tmp);
            return Err(Error::io(&s.dst, e));
        }
        let (tmp, dst) = (std::mem::take(&mut s.tmp), std::mem::take(&mut s.dst));
        self.forget(&dst);
        self.kept.push((tmp, dst));
        Ok(())
    }

    /// Where the kept file `name` is while it waits for the commit.
    pub fn staged_path(&self, name: &str) -> Option<&Path> {
        let dst = self.dir.join(name);
        self.kept
            .iter()
            .find(|(_, d)| *d == dst)
            .map(|(t, _)| t.as_path())
    }

    /// Forget the kept file `name` (its temporary is removed).
    pub fn discard(&mut self, name: &str) {
        self.forget(&self.dir.join(name));
    }

    /// Drop the kept file bound for `dst`, if any, removing its temporary.
    fn forget(&mut self, dst: &Path) {
        if let Some(i) = self.kept.iter().position(|(_, d)| d == dst) {
            let (old, _) = self.kept.remove(i);
            let _ = std::fs::remove_file(old);
        }
    }

    /// Put every kept file in place, in the order kept (so a command keeps its index
    /// or report last, and a folder with the report holds every output). The renames
    /// are ordered, not one atomic step: if one fails, those before it are in place,
    /// the rest are removed, and the report is not written.
    pub fn commit(mut self) -> Result<()> {
        while !self.kept.is_empty() {
            let (tmp, dst) = &self.kept[0];
            std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
            self.kept.remove(0);
        }
        Ok(())
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        for (tmp, _) in &self.kept {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Staged {
    /// Overwrite `bytes` at `offset` (a header whose counts are known at the end), then
    /// go on writing at the end.
    pub fn patch(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let w = self
            .w
            .as_mut()
            .expect("a staged file is written before it is kept");
        let io = |e| Error::io(&self.dst, e);
        w.seek(SeekFrom::Start(offset)).map_err(io)?;
        w.write_all(bytes).map_err(io)?;
        w.seek(SeekFrom::End(0)).map_err(io)?;
        Ok(())
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.w
            .as_mut()
            .expect("a staged file is written before it is kept")
            .write_all(bytes)
            .map_err(|e| Error::io(&self.dst, e))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.w.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // Signal 0 checks existence; EPERM means it exists under another user.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_in_batches_and_bad_bytes_are_located() {
        let dir = std::env::temp_dir().join(format!("attn-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        std::fs::write(&p, b"one\r\ntwo\n\nfour").unwrap();
        let mut l = LineBatches::open(&p).unwrap();
        assert_eq!(l.next_batch(2).unwrap(), ["one", "two"]);
        assert_eq!(l.next_batch(5).unwrap(), ["", "four"]);
        assert!(l.next_batch(5).unwrap().is_empty());
        std::fs::write(&p, b"ok\nbad \xff here\n").unwrap();
        let e = LineBatches::open(&p)
            .unwrap()
            .next_batch(9)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("byte 7"), "{e}");
        let mut l = LineBatches::open(&p).unwrap().skip_invalid(true);
        assert_eq!(l.next_batch(9).unwrap(), ["ok"]);
        assert_eq!(l.skipped(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn outputs_appear_together_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("attn-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let listing = || {
            let mut v: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // A killed run's leftover (a pid that cannot be alive) is cleared.
        std::fs::write(dir.join(format!(".x{PARTIAL}{}-0", i32::MAX)), b"old").unwrap();
        // A file of the user's that merely looks alike stays.
        std::fs::write(dir.join(format!("notes{PARTIAL}v2")), b"mine").unwrap();
        let mut o = Outputs::new(&dir).unwrap();
        assert_eq!(listing(), [format!("notes{PARTIAL}v2")]);
        std::fs::remove_file(dir.join(format!("notes{PARTIAL}v2"))).unwrap();
        o.write("a", b"first").unwrap();
        let mut b = o.create("b").unwrap();
        b.write_all(b"second").unwrap();
        o.keep(b).unwrap();
        assert_eq!(listing().len(), 2);
        assert!(listing().iter().all(|n| n.contains(PARTIAL)));
        // Failed before the commit: nothing is left.
        drop(o);
        assert!(listing().is_empty(), "{:?}", listing());
        let mut o = Outputs::new(&dir).unwrap();
        o.write("a", b"one").unwrap();
        o.write("a", b"two").unwrap();
        let unkept = o.create("c").unwrap();
        drop(unkept);
        o.commit().unwrap();
        assert_eq!(listing(), ["a"]);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"two");
        std::fs::remove_dir_all(&dir).ok();
    }
}
