//! Text files in, clean Unicode out.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use unicode_normalization::UnicodeNormalization;

use crate::{Error, Result};

/// How the bytes of a text file are to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    #[default]
    Utf8,
    /// ISO-8859-1: every byte is the code point of the same value.
    Latin1,
}

impl FromStr for Encoding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "utf8" => Ok(Encoding::Utf8),
            "latin1" | "iso88591" => Ok(Encoding::Latin1),
            _ => Err(Error::invalid(
                "encoding",
                format!("{s:?} is not supported (expected utf8 or latin1)"),
            )),
        }
    }
}

/// Read one text file in the given encoding, without normalising it.
/// Invalid UTF-8 is an error naming the file and the byte offset of the first bad byte;
/// a folder, FIFO or device is refused for what it is (reading `/dev/urandom` would never
/// end), and a file too large for the memory left is refused before it is read.
pub fn read_text(path: &Path, encoding: Encoding) -> Result<String> {
    let bytes = crate::guard::read_file(path, u64::MAX)?;
    match encoding {
        Encoding::Utf8 => String::from_utf8(bytes).map_err(|e| Error::Encoding {
            path: path.to_path_buf(),
            encoding: "UTF-8",
            offset: e.utf8_error().valid_up_to(),
        }),
        Encoding::Latin1 => Ok(bytes.iter().map(|&b| b as char).collect()),
    }
}

/// Unicode NFC, with control characters other than newline and tab removed.
/// Windows line endings become `\n` (the `\r` is a control character).
pub fn normalize(text: &str) -> String {
    text.nfc()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .collect()
}

/// Read, normalise and concatenate several files into one corpus. Each file's text ends
/// with a newline before the next one starts. Empty files (after cleaning) are an error:
/// they are almost always a wrong path or a failed download.
pub fn read_corpus(paths: &[PathBuf], encoding: Encoding) -> Result<String> {
    if paths.is_empty() {
        return Err(Error::invalid("data", "no data file given"));
    }
    let mut out = String::new();
    for path in paths {
        let text = normalize(&read_text(path, encoding)?);
        if text.trim().is_empty() {
            return Err(Error::bad_file(path, "the file is empty (no text to use)"));
        }
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_composes_and_drops_controls() {
        // "e" + combining acute accent composes to "é"; \r, \x07 and \x00 go; \t and \n stay.
        let s = "cafe\u{301}\r\n\tbell\u{7}\u{0}!";
        assert_eq!(normalize(s), "caf\u{e9}\n\tbell!");
    }

    #[test]
    fn invalid_utf8_names_file_and_offset() {
        let dir = std::env::temp_dir().join(format!("attn-text-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.txt");
        std::fs::write(&p, b"abc\xe9def").unwrap();
        let err = read_text(&p, Encoding::Utf8).unwrap_err().to_string();
        assert!(
            err.contains("bad.txt") && err.contains("byte offset 3"),
            "{err}"
        );
        assert_eq!(read_text(&p, Encoding::Latin1).unwrap(), "abc\u{e9}def");
        std::fs::write(&p, b"  \n").unwrap();
        let err = read_corpus(std::slice::from_ref(&p), Encoding::Utf8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("empty"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
