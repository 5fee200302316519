//! Personal-data detection on the labelled synthetic set of `scripts/make_pii_fixtures.py`
//! (2,500 lines, English and Chinese, valid values and look-alikes): precision and recall
//! of exact spans, per kind, at least 0.99.

use std::collections::BTreeMap;

use attn::data::pii::{find, PiiType, ALL};
use serde_json::Value;

#[test]
fn precision_and_recall_per_kind_are_at_least_099() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pii/cases.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    // (true positives, found, labelled) per kind.
    let mut counts: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    let mut misses = Vec::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let t = v["text"].as_str().unwrap();
        // Character offsets to byte offsets.
        let bytes: Vec<usize> = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect();
        let want: Vec<(usize, usize, String)> = v["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let (a, b) = (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                );
                (bytes[a], bytes[b], s[2].as_str().unwrap().to_string())
            })
            .collect();
        let got = find(t, &ALL);
        for w in &want {
            counts
                .entry(PiiType::parse(&w.2).unwrap().name())
                .or_default()
                .2 += 1;
        }
        for g in &got {
            let e = counts.entry(g.ty.name()).or_default();
            e.1 += 1;
            if want
                .iter()
                .any(|w| w.0 == g.start && w.1 == g.end && w.2 == g.ty.name())
            {
                e.0 += 1;
            } else {
                misses.push(format!(
                    "extra {} {:?} in {t:?}",
                    g.ty.name(),
                    &t[g.start..g.end]
                ));
            }
        }
        for w in &want {
            if !got
                .iter()
                .any(|g| w.0 == g.start && w.1 == g.end && w.2 == g.ty.name())
            {
                misses.push(format!("missed {} {:?} in {t:?}", w.2, &t[w.0..w.1]));
            }
        }
    }
    for m in misses.iter().take(20) {
        eprintln!("{m}");
    }
    for (kind, (tp, found, labelled)) in &counts {
        let (p, r) = (
            *tp as f64 / (*found).max(1) as f64,
            *tp as f64 / (*labelled).max(1) as f64,
        );
        eprintln!("{kind:>12}: precision {p:.4} ({tp}/{found}), recall {r:.4} ({tp}/{labelled})");
        assert!(p >= 0.99 && r >= 0.99, "{kind}: precision {p}, recall {r}");
    }
    assert_eq!(counts.len(), ALL.len());
}
