//! BLEU and chrF against sacreBLEU 2.6.0 (fixtures from scripts/make_bleu_fixtures.py):
//! scores within 1e-9 and identical signatures.

use attn::metrics::bleu::{corpus_bleu, sentence_bleu, BleuConfig, Smooth};
use attn::metrics::chrf::{corpus_chrf, sentence_chrf, ChrfConfig};
use serde_json::Value;

fn bleu_config(o: &Value) -> BleuConfig {
    let v = o["smooth_value"].as_f64();
    BleuConfig {
        tokenize: o["tokenize"].as_str().unwrap().parse().unwrap(),
        lowercase: o["lowercase"].as_bool().unwrap(),
        smooth: match o["smooth_method"].as_str().unwrap() {
            "exp" => Smooth::Exp,
            "none" => Smooth::None,
            "floor" => Smooth::Floor(v),
            "add-k" => Smooth::AddK(v),
            s => panic!("smoothing {s}"),
        },
        effective_order: o["effective_order"].as_bool().unwrap(),
        max_order: o["max_ngram_order"].as_u64().unwrap() as usize,
    }
}

fn chrf_config(o: &Value) -> ChrfConfig {
    ChrfConfig {
        char_order: o["char_order"].as_u64().unwrap() as usize,
        word_order: o["word_order"].as_u64().unwrap() as usize,
        beta: o["beta"].as_f64().unwrap(),
        lowercase: o["lowercase"].as_bool().unwrap(),
        whitespace: o["whitespace"].as_bool().unwrap(),
        eps_smoothing: o["eps_smoothing"].as_bool().unwrap(),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn close(a: f64, b: &Value, what: &str) {
    let b = b.as_f64().unwrap();
    assert!((a - b).abs() <= 1e-9, "{what}: attn {a} vs sacreBLEU {b}");
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn bleu_and_chrf_match_sacrebleu() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bleu/cases.json"
    ))
    .unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let hyps = strings(&c["hyps"]);
        let refs: Vec<Vec<String>> = c["refs"].as_array().unwrap().iter().map(strings).collect();
        let e = &c["expected"];
        match c["metric"].as_str().unwrap() {
            "bleu" => {
                let s = corpus_bleu(&hyps, &refs, &bleu_config(&c["options"])).unwrap();
                close(s.score, &e["score"], &format!("{name} score"));
                assert_eq!(
                    s.signature,
                    e["signature"].as_str().unwrap(),
                    "{name} signature"
                );
                for (a, b) in s.precisions.iter().zip(floats(&e["precisions"])) {
                    assert!(
                        (a - b).abs() <= 1e-9,
                        "{name} precisions {:?} vs {:?}",
                        s.precisions,
                        e["precisions"]
                    );
                }
                close(s.bp, &e["bp"], &format!("{name} bp"));
                assert_eq!(
                    s.sys_len as u64,
                    e["sys_len"].as_u64().unwrap(),
                    "{name} sys_len"
                );
                assert_eq!(
                    s.ref_len as u64,
                    e["ref_len"].as_u64().unwrap(),
                    "{name} ref_len"
                );
                assert_eq!(s.counts, floats(&e["counts"]), "{name} counts");
                assert_eq!(s.totals, floats(&e["totals"]), "{name} totals");
            }
            "chrf" => {
                let s = corpus_chrf(&hyps, &refs, &chrf_config(&c["options"])).unwrap();
                close(s.score, &e["score"], &format!("{name} score"));
                assert_eq!(
                    s.signature,
                    e["signature"].as_str().unwrap(),
                    "{name} signature"
                );
            }
            "sentence_bleu" => {
                let cfg = bleu_config(&c["options"]);
                for (i, h) in hyps.iter().enumerate() {
                    let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
                    let s = sentence_bleu(h, &r, &cfg);
                    let want = &e["sentences"][i];
                    close(s.score, &want["score"], &format!("{name} sentence {i}"));
                    close(s.bp, &want["bp"], &format!("{name} sentence {i} bp"));
                    assert_eq!(
                        s.signature,
                        e["signature"].as_str().unwrap(),
                        "{name} signature"
                    );
                }
            }
            "sentence_chrf" => {
                let cfg = chrf_config(&c["options"]);
                for (i, h) in hyps.iter().enumerate() {
                    let r: Vec<&str> = refs.iter().map(|s| s[i].as_str()).collect();
                    close(
                        sentence_chrf(h, &r, &cfg).score,
                        &e["scores"][i],
                        &format!("{name} sentence {i}"),
                    );
                }
            }
            m => panic!("unknown metric {m}"),
        }
        checked += 1;
    }
    assert_eq!(checked, cases.len());
    assert!(checked >= 100);
}

#[test]
fn mismatched_streams_are_an_error() {
    let hyps = vec!["a".to_string(), "b".to_string()];
    let refs = vec![vec!["a".to_string()]];
    let e = corpus_bleu(&hyps, &refs, &BleuConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 lines") && e.contains("2 hypotheses"), "{e}");
}
