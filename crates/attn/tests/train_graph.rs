//! Exact resume on the tensor-graph trainer too (`ATTN_TRAINER=graph`, the path models
//! the native step does not cover take). Its own test binary: the variable is read when
//! a trainer is built, and must not leak into the other tests' process.
mod common;

use attn::data::Encoding;
use attn::train::{DataSpec, Trainer};
use candle_core::Device;
use common::{losses, synthetic_text, tiny_config};

#[test]
fn graph_trainer_resumes_exactly() {
    std::env::set_var("ATTN_TRAINER", "graph");
    let dir = common::temp_dir("graph-resume");
    let data_file = dir.join("data.txt");
    synthetic_text(&data_file);
    let data = DataSpec {
        files: vec![data_file],
        encoding: Encoding::Utf8,
    };
    let dev = Device::Cpu;
    let mut full_run = Trainer::new(tiny_config(6), data.clone(), &dir.join("a"), &dev).unwrap();
    assert_eq!(full_run.engine(), "graph");
    let full = losses(&mut full_run);
    let first =
        losses(&mut Trainer::new(tiny_config(3), data.clone(), &dir.join("b"), &dev).unwrap());
    assert_eq!(first, full[..3]);
    let mut resumed = Trainer::resume(&dir.join("b"), Some(6), None, &dev).unwrap();
    assert_eq!(resumed.engine(), "graph");
    assert_eq!(
        losses(&mut resumed),
        full[3..],
        "graph trainer: resume differs"
    );
    std::fs::remove_dir_all(&dir).ok();
}
