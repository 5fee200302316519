//! MinHash signatures against the `datasketch` package's (fixtures written by
//! `scripts/make_minhash_fixtures.py`): the permutation parameters drawn from NumPy's
//! `RandomState(seed)`, the shingles, every signature value and the Jaccard estimates,
//! for both of datasketch's schemes.

use attn::data::minhash::{jaccard, shingles, MinHasher, Scheme, Shingle};
use serde_json::Value;

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

#[test]
fn signatures_equal_datasketch_value_for_value() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minhash/cases.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = doc["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let mut compared = 0;
    for case in doc["cases"].as_array().unwrap() {
        let scheme = Scheme::parse(case["scheme"].as_str().unwrap()).unwrap();
        let kind = Shingle::parse(case["shingle"].as_str().unwrap()).unwrap();
        let (n, k) = (
            case["num_perm"].as_u64().unwrap() as usize,
            case["ngram"].as_u64().unwrap() as usize,
        );
        let m = MinHasher::new(n, case["seed"].as_u64().unwrap(), scheme).unwrap();
        let (a, b) = m.parameters();
        assert_eq!(a, u64s(&case["a"]).as_slice(), "{case:.80}: a");
        assert_eq!(b, u64s(&case["b"]).as_slice(), "b");
        let mut sigs = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let want_sh: Vec<&str> = case["shingles"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert_eq!(shingles(t, k, kind), want_sh, "shingles of text {i}");
            let got: Vec<u64> = m
                .signature_of(t, k, kind)
                .into_iter()
                .map(u64::from)
                .collect();
            assert_eq!(
                got,
                u64s(&case["signatures"][i]),
                "{scheme:?} signature of text {i}"
            );
            sigs.push(m.signature_of(t, k, kind));
            compared += got.len();
        }
        for p in case["jaccard"].as_array().unwrap() {
            let (i, j) = (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            );
            assert_eq!(
                jaccard(&sigs[i], &sigs[j]),
                p[2].as_f64().unwrap(),
                "jaccard {i} {j}"
            );
        }
    }
    eprintln!("{compared} signature values equal datasketch's");
    assert!(compared > 10_000);
}
