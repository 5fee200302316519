//! The replay loop of the smoke tests: every committed seed and regression input of a
//! target, then deterministic mutations of them (see [`crate::mutate`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::known::guard;
use crate::mutate::{mutate, read_dir_files, Rng};

/// The repository's `fuzz/` folder, from a test crate's manifest folder.
pub fn fuzz_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir).join("../../fuzz")
}

#[derive(Debug, Default)]
pub struct Report {
    pub seeds: usize,
    pub regressions: usize,
    pub mutations: usize,
    /// Inputs the target accepted (a loaded model, a parsed request...).
    pub accepted: usize,
    /// Inputs that hit a known panic ([`crate::known::KNOWN`]), by finding.
    pub known: std::collections::BTreeMap<&'static str, usize>,
    pub seconds: f64,
}

/// Run `run` on every file of `fuzz/corpus/<target>` and `fuzz/regressions/<target>`,
/// then on `mutations` mutants of them drawn with `seed`. A seed named `valid-*` must be
/// accepted (so that the corpus keeps reaching past the first check as the parsers
/// change). A known panic ([`crate::known`]) is counted, any other panic fails with the
/// input saved to a file; the input being run is also
/// kept in `<temp>/attn-fuzz-smoke-<target>.current`, for an abort (which no test can
/// catch).
pub fn replay(
    fuzz_dir: &Path,
    target: &str,
    mutations: usize,
    seed: u64,
    mut run: impl FnMut(&[u8]) -> bool,
) -> Report {
    let t0 = Instant::now();
    let seeds = read_dir_files(&fuzz_dir.join("corpus").join(target));
    let regressions = read_dir_files(&fuzz_dir.join("regressions").join(target));
    assert!(
        !seeds.is_empty(),
        "no seed corpus in {}",
        fuzz_dir.join("corpus").join(target).display()
    );
    let current = std::env::temp_dir().join(format!("attn-fuzz-smoke-{target}.current"));
    let mut report = Report {
        seeds: seeds.len(),
        regressions: regressions.len(),
        mutations,
        ..Report::default()
    };
    let mut check = |what: &str, data: &[u8]| -> bool {
        std::fs::write(&current, data).expect("keep the current input");
        match catch_unwind(AssertUnwindSafe(|| guard(|| run(data)))) {
            Ok(Ok(accepted)) => {
                report.accepted += usize::from(accepted);
                accepted
            }
            Ok(Err(k)) => {
                *report.known.entry(k.finding).or_default() += 1;
                false
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                let saved = std::env::temp_dir()
                    .join(format!("attn-fuzz-smoke-{target}-crash-{:016x}", fnv(data)));
                std::fs::write(&saved, data).expect("save the crashing input");
                panic!(
                    "target {target} panicked on {what} ({} bytes, saved as {}): {msg}\n\
                     the input: {}\n\
                     add it to fuzz/regressions/{target}/ once the bug is fixed",
                    data.len(),
                    saved.display(),
                    data.escape_ascii()
                );
            }
        }
    };
    for (name, data) in seeds.iter().chain(&regressions) {
        let accepted = check(name, data);
        assert!(
            accepted || !name.starts_with("valid-"),
            "target {target}: the seed {name} is meant to be valid but was refused; \
             regenerate the seeds (fuzz/README.md) or fix the seed"
        );
    }
    let all: Vec<Vec<u8>> = seeds
        .iter()
        .chain(&regressions)
        .map(|(_, d)| d.clone())
        .collect();
    let mut rng = Rng::new(seed);
    for i in 0..mutations {
        let base = rng.below(all.len());
        let m = mutate(&mut rng, &all[base], &all);
        check(&format!("mutation {i} of seed {base}"), &m);
    }
    let _ = std::fs::remove_file(&current);
    report.seconds = t0.elapsed().as_secs_f64();
    eprintln!("fuzz smoke {target}: {report:?}");
    report
}

/// FNV-1a, to name a saved input by its content.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
