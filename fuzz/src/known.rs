//! Panics that are already known and reported (fuzz/README.md, "Findings"), by where
//! they happen: [`guard`] catches those and lets every other panic through, so that the
//! fuzzer goes on looking for new bugs instead of finding the same one again, and the
//! smoke tests can replay the inputs that found them. Each entry goes once the bug is
//! fixed (an entry that is never hit any more costs nothing, but hides nothing either).
//!
//! The last entry takes any other panic raised inside the `tokenizers` crate: they are
//! one class of bug with one fix on attn's side (see the README), and the fuzzer found
//! a new one every few minutes. Each distinct place is still reported once per process
//! by [`note`], with the input that reached it.

use std::cell::RefCell;
use std::collections::HashSet;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Mutex, Once};

/// `(part of the source path, panic message prefix, finding)`.
pub const KNOWN: &[(&str, &str, &str)] = &[
    // Empty: F1-F7 (fuzz/README.md) are fixed in attn's Tokenizer, which refuses such
    // files at load and turns any panic inside the tokenizers crate into an error; the
    // regression inputs stay, and any panic now fails the smoke tests and the fuzzer.
];

/// A known panic that [`guard`] caught.
#[derive(Debug, Clone)]
pub struct Known {
    pub finding: &'static str,
    /// `file:line` of the panic.
    pub site: String,
    pub message: String,
}

thread_local! {
    static GUARDED: RefCell<bool> = const { RefCell::new(false) };
    static HIT: RefCell<Option<Known>> = const { RefCell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| *g.borrow()) {
                let (file, line) = info.location().map_or(("", 0), |l| (l.file(), l.line()));
                let msg = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("");
                if let Some(&(_, _, finding)) = KNOWN
                    .iter()
                    .find(|(f, m, _)| file.contains(f) && msg.starts_with(m))
                {
                    let k = Known {
                        finding,
                        site: format!("{file}:{line}"),
                        message: msg.chars().take(200).collect(),
                    };
                    HIT.with(|h| *h.borrow_mut() = Some(k));
                    return;
                }
            }
            // Not known: the previous hook (libFuzzer's aborts, the test's prints).
            next(info)
        }));
    });
}

/// Run `f`; `Err` when it hit a known panic. Any other panic goes on as if there were
/// no guard.
pub fn guard<R>(f: impl FnOnce() -> R) -> Result<R, Known> {
    install_hook();
    GUARDED.with(|g| *g.borrow_mut() = true);
    HIT.with(|h| *h.borrow_mut() = None);
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| *g.borrow_mut() = false);
    match r {
        Ok(v) => Ok(v),
        Err(payload) => match HIT.with(|h| h.borrow_mut().take()) {
            Some(k) => Err(k),
            None => resume_unwind(payload),
        },
    }
}

/// The first time this process meets a place (`file:line`): say so on stderr and keep
/// the input as `<dir>/known-<hash of the place>` (the fuzz log then lists every distinct known
/// panic a run reached, with an input for each).
pub fn note(k: &Known, data: &[u8], dir: &Path) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.get_or_insert_with(HashSet::new).insert(k.site.clone()) {
        return;
    }
    let hash = k.site.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let _ = std::fs::create_dir_all(dir);
    let path = dir.join(format!("known-{hash:016x}"));
    let _ = std::fs::write(&path, data);
    eprintln!(
        "KNOWN PANIC {} at {}: {} (input: {})",
        k.finding,
        k.site,
        k.message,
        path.display()
    );
}
