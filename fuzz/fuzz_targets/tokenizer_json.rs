//! cargo fuzz target `tokenizer_json`: see `src/tokenizer_json.rs` for what an input is and what it reaches.
#![no_main]

use std::sync::OnceLock;

use attn_fuzz::known::{guard, note};
use attn_fuzz::scratch::{cap_address_space, fuzz_cap_mib};
use attn_fuzz::tokenizer_json::Target;

libfuzzer_sys::fuzz_target!(
    init: cap_address_space(fuzz_cap_mib()),
    |data: &[u8]| {
        static TARGET: OnceLock<Target> = OnceLock::new();
        let target = TARGET.get_or_init(Target::new);
        // A known panic (src/known.rs) is not a new finding: noted once per place.
        if let Err(k) = guard(|| target.run(data)) {
            note(&k, data, std::path::Path::new("artifacts/tokenizer_json"));
        }
    }
);
