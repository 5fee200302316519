//! Classification metrics against scikit-learn (fixtures from
//! scripts/make_classification_fixtures.py).

use attn::metrics::classification_report;

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12, "{what}: {a} vs scikit-learn {b}");
}

#[test]
fn matches_scikit_learn_on_every_case() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/classification/cases.json"
    ))
    .unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(cases.len() >= 9);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let list = |k: &str| -> Vec<String> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let got = classification_report(&list("gold"), &list("pred"))
            .unwrap()
            .to_json();
        let want = &case["expected"];
        close(
            got["accuracy"].as_f64().unwrap(),
            want["accuracy"].as_f64().unwrap(),
            &format!("{name} accuracy"),
        );
        for avg in ["macro", "micro", "weighted"] {
            for m in ["precision", "recall", "f1"] {
                close(
                    got[avg][m].as_f64().unwrap(),
                    want[avg][m].as_f64().unwrap(),
                    &format!("{name} {avg} {m}"),
                );
            }
        }
        let want_classes = want["per_class"].as_object().unwrap();
        assert_eq!(
            got["per_class"].as_object().unwrap().len(),
            want_classes.len(),
            "{name}: classes"
        );
        for (label, w) in want_classes {
            let g = &got["per_class"][label];
            for m in ["precision", "recall", "f1"] {
                close(
                    g[m].as_f64().unwrap(),
                    w[m].as_f64().unwrap(),
                    &format!("{name} {label} {m}"),
                );
            }
            assert_eq!(g["support"], w["support"], "{name} {label} support");
        }
        assert_eq!(
            got["confusion_matrix"], want["confusion_matrix"],
            "{name} confusion matrix"
        );
    }
}

#[test]
fn mismatched_lengths_are_an_error() {
    let a = vec!["x".to_string(); 3];
    let b = vec!["x".to_string(); 2];
    let e = classification_report(&a, &b).unwrap_err().to_string();
    assert!(e.contains("same number of lines"), "{e}");
    assert!(classification_report(&[], &[]).is_err());
}
