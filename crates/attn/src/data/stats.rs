//! A corpus described in one streaming pass: lines, documents (blocks between blank
//! lines), characters, bytes, tokens (with a tokenizer), the rate of exact duplicate
//! lines (by the hash of their normalised text), personal data by kind, and the mix of
//! scripts (the share of letters in each Unicode script family).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use rayon::prelude::*;

use super::pii::{self, PiiType};
use super::stream::LineBatches;
use crate::tokenizer::Tokenizer;
use crate::Result;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub files: usize,
    pub lines: u64,
    pub empty_lines: u64,
    /// Lines skipped as not valid UTF-8 (with `skip_invalid`; not counted elsewhere).
    pub invalid_skipped: u64,
    /// Blocks of non-empty lines between blank lines.
    pub documents: u64,
    pub chars: u64,
    pub bytes: u64,
    pub tokens: Option<u64>,
    /// Non-empty lines whose normalised text an earlier line already had.
    pub duplicate_lines: u64,
    pub duplicate_rate: f64,
    /// Matches of personal data by kind, and the lines holding any.
    pub pii: BTreeMap<String, u64>,
    pub lines_with_pii: u64,
    /// Letters by script family, as shares of all letters.
    pub scripts: BTreeMap<String, f64>,
}

/// The script family of a letter.
fn script(c: char) -> &'static str {
    match c as u32 {
        0x0000..=0x024F | 0x1E00..=0x1EFF => "latin",
        0x0370..=0x03FF => "greek",
        0x0400..=0x052F => "cyrillic",
        0x0590..=0x05FF => "hebrew",
        0x0600..=0x06FF | 0x0750..=0x077F => "arabic",
        0x0900..=0x0DFF => "indic",
        0x0E00..=0x0E7F => "thai",
        0x3040..=0x30FF => "kana",
        0x1100..=0x11FF | 0xAC00..=0xD7AF => "hangul",
        0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x2FFFF => "han",
        _ => "other",
    }
}

/// Describe `files` (UTF-8), counting tokens with `tokenizer` when given; with
/// `skip_invalid`, lines that are not UTF-8 are skipped and counted.
pub fn stats(
    files: &[PathBuf],
    tokenizer: Option<&Tokenizer>,
    skip_invalid: bool,
) -> Result<Stats> {
    let mut s = Stats {
        files: files.len(),
        tokens: tokenizer.map(|_| 0),
        ..Default::default()
    };
    let mut seen: HashSet<u128> = HashSet::new();
    let mut letters: BTreeMap<&'static str, u64> = BTreeMap::new();
    for f in files {
        let mut lines = LineBatches::open(f)?.skip_invalid(skip_invalid);
        let mut in_doc = false;
        loop {
            let batch = lines.next_batch(8192)?;
            if batch.is_empty() {
                break;
            }
            type Row = (u128, Vec<PiiType>, Vec<(&'static str, u64)>, u64, u64);
            let rows: Vec<Result<Row>> = batch
                .par_iter()
                .map(|l| {
                    let norm = super::dedup::normalise(l);
                    let key = if norm.is_empty() {
                        0
                    } else {
                        super::dedup::exact_key(&norm)
                    };
                    let kinds = pii::find(l, &pii::ALL).into_iter().map(|m| m.ty).collect();
                    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
                    for c in l.chars().filter(|c| c.is_alphabetic()) {
                        *by.entry(script(c)).or_default() += 1;
                    }
                    let tokens = match tokenizer {
                        Some(t) => t.encode(l)?.len() as u64,
                        None => 0,
                    };
                    Ok((
                        key,
                        kinds,
                        by.into_iter().collect(),
                        l.chars().count() as u64,
                        tokens,
                    ))
                })
                .collect();
            for (l, row) in batch.iter().zip(rows) {
                let (key, kinds, by, chars, tokens) = row?;
                s.lines += 1;
                s.bytes += l.len() as u64 + 1;
                s.chars += chars;
                if let Some(t) = s.tokens.as_mut() {
                    *t += tokens;
                }
                if key == 0 {
                    s.empty_lines += 1;
                    in_doc = false;
                    continue;
                }
                if !in_doc {
                    s.documents += 1;
                    in_doc = true;
                }
                if !seen.insert(key) {
                    s.duplicate_lines += 1;
                }
                if !kinds.is_empty() {
                    s.lines_with_pii += 1;
                }
                for k in kinds {
                    *s.pii.entry(k.name().to_string()).or_default() += 1;
                }
                for (name, n) in by {
                    *letters.entry(name).or_default() += n;
                }
            }
        }
        s.invalid_skipped += lines.skipped();
    }
    let nonempty = s.lines - s.empty_lines;
    s.duplicate_rate = if nonempty > 0 {
        s.duplicate_lines as f64 / nonempty as f64
    } else {
        0.0
    };
    let total: u64 = letters.values().sum();
    s.scripts = letters
        .into_iter()
        .map(|(k, n)| (k.to_string(), n as f64 / total.max(1) as f64))
        .collect();
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_documents_duplicates_pii_and_scripts() {
        let dir = std::env::temp_dir().join(format!("attn-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.txt");
        std::fs::write(
            &p,
            "Hello world\nhello  world\nHello world\n\n你好世界 mail a@b.co\n",
        )
        .unwrap();
        let s = stats(std::slice::from_ref(&p), None, false).unwrap();
        assert_eq!((s.lines, s.empty_lines, s.documents), (5, 1, 2));
        assert_eq!(
            s.duplicate_lines, 1,
            "the exact repeat (case differs in the other)"
        );
        assert_eq!(s.pii.get("email"), Some(&1));
        assert_eq!(s.chars, 11 + 12 + 11 + 16, "the empty line has none");
        let han = s.scripts["han"];
        let latin = s.scripts["latin"];
        // Letters: 3 × 10 + 8 Latin ("mail a@b.co"), 4 Han.
        assert!(
            (han - 4.0 / 42.0).abs() < 1e-12 && (latin - 38.0 / 42.0).abs() < 1e-12,
            "{:?}",
            s.scripts
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
