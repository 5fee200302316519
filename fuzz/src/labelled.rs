//! Target `labelled`: `attn::data::labelled::read_labelled` on TSV, CSV, JSONL and
//! class-folder data (the format is chosen by the file's extension, as the CLI's
//! `classify` commands do), then the train/validation split of what it read.
//!
//! The first byte of an input chooses the format (its low 3 bits: see [`FORMATS`]) and
//! the encoding (its top bit: Latin-1, else UTF-8); the rest is the file. For the
//! class-folder format the rest is cut at 0xFF bytes into files `neg.txt`, `pos.txt`,
//! `neutral`, … (one file per class, one text per line).

use attn::data::labelled::{read_labelled, split_holdout};
use attn::data::Encoding;

use crate::scratch::Scratch;

/// File names by the low 3 bits of the first byte; `None` is the class folder.
pub const FORMATS: [Option<&str>; 8] = [
    Some("data.tsv"),
    Some("data.csv"),
    Some("data.jsonl"),
    Some("data.json"),
    Some("data.txt"),
    None,
    Some("DATA.CSV"),
    Some("data"),
];

/// The class folder's file names, in order.
pub const CLASS_FILES: [&str; 4] = ["neg.txt", "pos.txt", "neutral", ".hidden"];

/// The first byte of an input for a format (an index into [`FORMATS`]) and encoding.
pub fn selector(format: usize, latin1: bool) -> u8 {
    (format as u8 & 7) | if latin1 { 0x80 } else { 0 }
}

pub struct Target {
    scratch: Scratch,
}

impl Default for Target {
    fn default() -> Self {
        Self::new()
    }
}

impl Target {
    pub fn new() -> Target {
        Target {
            scratch: Scratch::new("labelled"),
        }
    }

    /// Feed one input; returns the number of examples read (0 on an error).
    pub fn run(&self, data: &[u8]) -> usize {
        let Some((&sel, body)) = data.split_first() else {
            return 0;
        };
        let encoding = if sel & 0x80 != 0 {
            Encoding::Latin1
        } else {
            Encoding::Utf8
        };
        let path = match FORMATS[usize::from(sel & 7)] {
            Some(name) => self.scratch.write(name, body),
            None => {
                self.scratch.remove("classes");
                let dir = self.scratch.path().join("classes");
                std::fs::create_dir_all(&dir).expect("create the class folder");
                for (name, part) in CLASS_FILES.iter().zip(body.split(|&b| b == 0xFF)) {
                    std::fs::write(dir.join(name), part).expect("write a class file");
                }
                dir
            }
        };
        let Ok(examples) = read_labelled(&path, encoding) else {
            return 0;
        };
        let n = examples.len();
        for fraction in [0.1, 0.5, 0.99] {
            let _ = split_holdout(examples.clone(), fraction, u64::from(sel));
        }
        n
    }
}
