//! Text files read line by line in batches, so that a corpus of any size goes through in
//! bounded memory; every line is checked as UTF-8, an error naming the file, the line and
//! the byte offset.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

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
        })
    }

    /// The number of the next line (from 1).
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Up to `max_lines` lines (fewer at the end of the file; none after it).
    pub fn next_batch(&mut self, max_lines: usize) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while out.len() < max_lines && !self.done {
            buf.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 2)
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io(&self.path, e))?;
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
            let s = std::str::from_utf8(text).map_err(|e| {
                Error::bad_file(
                    &self.path,
                    format!(
                        "line {} is not valid UTF-8 (byte {})",
                        self.line,
                        self.offset + e.valid_up_to() as u64
                    ),
                )
            })?;
            out.push(s.to_string());
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
        std::fs::remove_dir_all(&dir).ok();
    }
}
