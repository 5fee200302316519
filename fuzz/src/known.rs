//! Panics that are already known and reported (fuzz/README.md, "Findings"), by where
//! they happen: [`guard`] catches those and lets every other panic through, so that the
//! fuzzer goes on looking for new bugs instead of finding the same one again, and the
//! smoke tests can replay the inputs that found them. Each entry goes once the bug is
//! fixed (an entry that is never hit any more costs nothing, but hides nothing either).

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Once;

/// `(source file suffix, panic message prefix, finding)`: a panic raised in a file whose
/// path ends with the suffix, with a message that starts with the prefix.
pub const KNOWN: &[(&str, &str, &str)] = &[(
    // tokenizers 0.23: `DecoderWrapper::deserialize` unwraps the result of parsing the
    // "decoder" value, so a tokenizer.json whose decoder is not well-formed JSON panics
    // instead of failing (`{"decoder":{`).
    "src/decoders/mod.rs",
    "Helper",
    "F1: tokenizer.json with a malformed \"decoder\" value panics in tokenizers",
)];

thread_local! {
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static HIT: Cell<Option<&'static str>> = const { Cell::new(None) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let next = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(Cell::get) {
                let file = info.location().map_or("", |l| l.file());
                let msg = info
                    .payload()
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| info.payload().downcast_ref::<&str>().copied())
                    .unwrap_or("");
                if let Some(&(_, _, finding)) = KNOWN
                    .iter()
                    .find(|(f, m, _)| file.ends_with(f) && msg.starts_with(m))
                {
                    HIT.with(|h| h.set(Some(finding)));
                    return;
                }
            }
            // Not known: the previous hook (libFuzzer's aborts, the test's prints).
            next(info)
        }));
    });
}

/// Run `f`; `Err(finding)` when it hit a known panic. Any other panic goes on as if
/// there were no guard.
pub fn guard<R>(f: impl FnOnce() -> R) -> Result<R, &'static str> {
    install_hook();
    GUARDED.with(|g| g.set(true));
    HIT.with(|h| h.set(None));
    let r = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(false));
    match r {
        Ok(v) => Ok(v),
        Err(payload) => match HIT.with(Cell::take) {
            Some(finding) => Err(finding),
            None => resume_unwind(payload),
        },
    }
}
