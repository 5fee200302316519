//! Labelled text for classification: TSV (`label<TAB>text`), CSV with a header naming
//! `label` and `text` columns, JSONL (`{"label": …, "text": …}`), or a folder with one
//! file per class (the file name, less a `.txt` ending, is the label; one text per line).

use std::path::Path;

use crate::data::{normalize, read_text, Encoding};
use crate::rng::Rng;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub label: String,
    pub text: String,
}

fn bad_line(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::bad_file(path, format!("line {line}: {msg}"))
}

/// Read a labelled dataset, choosing the format from the path: a folder, `.csv`,
/// `.jsonl`/`.json`, otherwise TSV.
pub fn read_labelled(path: &Path, encoding: Encoding) -> Result<Vec<Example>> {
    let examples = if path.is_dir() {
        read_folder(path, encoding)?
    } else {
        let text = read_text(path, encoding)?;
        match path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
        {
            Some(e) if e == "csv" => parse_csv(path, &text)?,
            Some(e) if e == "jsonl" || e == "json" => parse_jsonl(path, &text)?,
            _ => parse_tsv(path, &text)?,
        }
    };
    if examples.is_empty() {
        return Err(Error::bad_file(
            path,
            "no labelled examples (the file is empty)",
        ));
    }
    Ok(examples)
}

fn example(path: &Path, line: usize, label: &str, text: &str) -> Result<Example> {
    let label = label.trim();
    if label.is_empty() {
        return Err(bad_line(path, line, "the label is empty"));
    }
    let text = normalize(text).trim().to_string();
    if text.is_empty() {
        return Err(bad_line(path, line, "the text is empty"));
    }
    Ok(Example {
        label: label.to_string(),
        text,
    })
}

fn parse_tsv(path: &Path, text: &str) -> Result<Vec<Example>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((label, body)) = line.split_once('\t') else {
            return Err(bad_line(path, i + 1, "no tab: expected label<TAB>text"));
        };
        out.push(example(path, i + 1, label, body)?);
    }
    Ok(out)
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Example>> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| bad_line(path, i + 1, format!("not valid JSON: {e}")))?;
        let label = match &v["label"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return Err(bad_line(path, i + 1, "no \"label\" (a string or number)")),
        };
        let Some(body) = v["text"].as_str() else {
            return Err(bad_line(path, i + 1, "no \"text\" string"));
        };
        out.push(example(path, i + 1, &label, body)?);
    }
    Ok(out)
}

/// Split CSV text into records of fields (RFC 4180: quoted fields may hold commas,
/// newlines and doubled quotes). Returns (line number, fields) per record.
fn csv_records(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = vec![];
    let mut fields = vec![];
    let mut field = String::new();
    let (mut in_quotes, mut line, mut start_line) = (false, 1usize, 1usize);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, in_quotes) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', true) => in_quotes = false,
            ('"', false) if field.is_empty() => in_quotes = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            ('\n', false) => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                    records.push((start_line, std::mem::take(&mut fields)));
                }
                fields.clear();
                line += 1;
                start_line = line;
            }
            ('\r', false) => {}
            (c, _) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
        }
    }
    if in_quotes {
        return Err(bad_line(path, start_line, "a quoted field is never closed"));
    }
    if !field.is_empty() || !fields.is_empty() {
        fields.push(field);
        records.push((start_line, fields));
    }
    Ok(records)
}

fn parse_csv(path: &Path, text: &str) -> Result<Vec<Example>> {
    let records = csv_records(path, text)?;
    let Some((_, header)) = records.first() else {
        return Ok(vec![]);
    };
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(li), Some(ti)) = (col("label"), col("text")) else {
        return Err(bad_line(
            path,
            1,
            format!("the header {header:?} must name a \"label\" and a \"text\" column"),
        ));
    };
    let mut out = vec![];
    for (line, fields) in &records[1..] {
        if fields.len() <= li.max(ti) {
            return Err(bad_line(
                path,
                *line,
                format!("{} fields, the header has {}", fields.len(), header.len()),
            ));
        }
        out.push(example(path, *line, &fields[li], &fields[ti])?);
    }
    Ok(out)
}

fn read_folder(dir: &Path, encoding: Encoding) -> Result<Vec<Example>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    let mut out = vec![];
    for f in &files {
        let name = f.file_name().and_then(|s| s.to_str()).unwrap_or("");
        let label = name.strip_suffix(".txt").unwrap_or(name).to_string();
        let text = read_text(f, encoding)?;
        for (i, line) in text.lines().enumerate() {
            if !line.trim().is_empty() {
                out.push(example(f, i + 1, &label, line)?);
            }
        }
    }
    if files.len() < 2 {
        return Err(Error::bad_file(
            dir,
            "a class folder needs at least two files, one per class",
        ));
    }
    Ok(out)
}

/// Shuffle with `seed` and hold out the last `fraction` (at least one example).
pub fn split_holdout(
    mut examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::invalid(
            "val-fraction",
            format!("{fraction} is not in (0, 1)"),
        ));
    }
    let mut rng = Rng::new(seed);
    for i in (1..examples.len()).rev() {
        let j = rng.below(i + 1);
        examples.swap(i, j);
    }
    let n_val = ((examples.len() as f64 * fraction).round() as usize).max(1);
    if n_val >= examples.len() {
        return Err(Error::invalid(
            "data",
            "too few examples to hold some out for validation",
        ));
    }
    let val = examples.split_off(examples.len() - n_val);
    Ok((examples, val))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("x")
    }

    #[test]
    fn formats_parse_and_errors_name_the_line() {
        let tsv = parse_tsv(p(), "pos\tgreat film\n\nneg\tdull, slow\n").unwrap();
        assert_eq!(tsv.len(), 2);
        assert_eq!(tsv[1].text, "dull, slow");
        let e = parse_tsv(p(), "pos\tok\nno label here\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("no tab"), "{e}");
        let csv = parse_csv(
            p(),
            "text,label\n\"a, \"\"quoted\"\" text\",pos\n\"multi\nline\",neg\n",
        )
        .unwrap();
        assert_eq!(csv[0].text, "a, \"quoted\" text");
        assert_eq!(csv[0].label, "pos");
        assert_eq!(csv[1].text, "multi\nline");
        assert!(parse_csv(p(), "a,b\n1,2\n")
            .unwrap_err()
            .to_string()
            .contains("label"));
        let j = parse_jsonl(
            p(),
            "{\"label\": 1, \"text\": \"x\"}\n{\"label\": \"b\", \"text\": \"y\"}\n",
        )
        .unwrap();
        assert_eq!(j[0].label, "1");
        let e = parse_jsonl(p(), "{\"text\": \"x\"}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("label"), "{e}");
        assert!(parse_tsv(p(), "\tno label\n")
            .unwrap_err()
            .to_string()
            .contains("label is empty"));
    }

    #[test]
    fn holdout_is_deterministic() {
        let ex: Vec<Example> = (0..100)
            .map(|i| Example {
                label: (i % 2).to_string(),
                text: i.to_string(),
            })
            .collect();
        let (a, b) = split_holdout(ex.clone(), 0.1, 7).unwrap();
        let (c, d) = split_holdout(ex, 0.1, 7).unwrap();
        assert_eq!((a.len(), b.len()), (90, 10));
        assert_eq!(b, d);
        assert_eq!(a, c);
    }
}
