//! Fuzz smoke test for request bodies: the `request_json` fuzz target of `fuzz/` (JSON
//! parsing, `Fields`, `gen_params`, `parse_messages`, chat templates, prompt encoding)
//! run without a fuzzer, on every committed seed and regression input and on a few
//! thousand deterministic mutations of them. A panic fails the test with the input saved.
#![allow(dead_code)]

#[path = "../../../fuzz/src/known.rs"]
mod known;
#[path = "../../../fuzz/src/mutate.rs"]
mod mutate;
#[path = "../../../fuzz/src/request_json.rs"]
mod request_json;
#[path = "../../../fuzz/src/scratch.rs"]
mod scratch;
#[path = "../../../fuzz/src/smoke.rs"]
mod smoke;

#[test]
fn fuzz_smoke_request_json() {
    scratch::cap_address_space(4096);
    let t = request_json::Target::new();
    let fuzz = smoke::fuzz_dir(env!("CARGO_MANIFEST_DIR"));
    smoke::replay(&fuzz, "request_json", 4000, 0x7265_7175_6573, |d| t.run(d));
}
