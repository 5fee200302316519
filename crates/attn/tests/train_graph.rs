//! Exact resume on the tensor-graph trainer too (`ATTN_TRAINER=graph`, the path models
//! the native step does not cover take). Its own test binary: the variable is read when
//! a trainer is built, and must not leak into the other tests' process.
mod common;

use attn::data::Encoding;
use attn::train::{DataSpec, TrainConfig, Trainer};
use candle_core::Device;
use common::losses;

#[test]
fn graph_trainer_resumes_exactly() {
    std::env::set_var("ATTN_TRAINER", "graph");
    let dir = common::temp_dir("graph-resume");
    let data_file = dir.join("data.txt");
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog"];
    let mut rng = attn::rng::Rng::new(3);
    let text: String = (0..2000)
        .map(|_| format!("{} ", words[rng.below(words.len())]))
        .collect();
    std::fs::write(&data_file, text).unwrap();
    let data = DataSpec {
        files: vec![data_file],
        encoding: Encoding::Utf8,
    };
    let config = |max_iters| TrainConfig {
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        block_size: 16,
        dropout: 0.1,
        batch_size: 4,
        max_iters,
        warmup_iters: 2,
        lr_decay_iters: 6,
        eval_interval: 3,
        eval_iters: 2,
        log_interval: 1,
        ..TrainConfig::default()
    };
    let dev = Device::Cpu;
    let mut full_run = Trainer::new(config(6), data.clone(), &dir.join("a"), &dev).unwrap();
    assert_eq!(full_run.engine(), "graph");
    let full = losses(&mut full_run);
    let first = losses(&mut Trainer::new(config(3), data.clone(), &dir.join("b"), &dev).unwrap());
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
