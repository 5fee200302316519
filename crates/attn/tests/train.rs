//! The training loop: resuming equals not stopping, a half-written checkpoint never
//! hides the last good one, and the loss goes down on real text.

mod common;

use attn::data::Encoding;
use attn::train::{DataSpec, Event, TrainConfig, Trainer, CHECKPOINT_DIR};
use common::{losses, synthetic_text, tiny_config};

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let dir = common::temp_dir("resume");
    let data_file = dir.join("data.txt");
    synthetic_text(&data_file);
    let data = DataSpec::text(vec![data_file], Encoding::Utf8);
    let full = losses(&mut Trainer::new(tiny_config(6), data.clone(), &dir.join("a")).unwrap());
    assert_eq!(full.len(), 6);

    let out_b = dir.join("b");
    let first = losses(&mut Trainer::new(tiny_config(3), data.clone(), &out_b).unwrap());
    assert_eq!(first, full[..3]);
    // Simulate a kill between the two renames of a checkpoint replacement: only the
    // previous folder (renamed to .old) and a half-written temporary folder remain.
    let ckpt = out_b.join(CHECKPOINT_DIR);
    std::fs::rename(&ckpt, out_b.join(format!("{CHECKPOINT_DIR}.old"))).unwrap();
    std::fs::create_dir_all(out_b.join(format!("{CHECKPOINT_DIR}.tmp"))).unwrap();
    std::fs::write(
        out_b.join(format!("{CHECKPOINT_DIR}.tmp/model.safetensors")),
        b"partial",
    )
    .unwrap();

    let mut resumed = Trainer::resume(&out_b, Some(6), None).unwrap();
    assert_eq!(resumed.step(), 3);
    let rest = losses(&mut resumed);
    assert_eq!(
        rest,
        full[3..],
        "resumed losses differ from the uninterrupted run"
    );
    // The best model folder is a loadable HF folder.
    attn::checkpoint::load_decoder(&out_b).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loss_falls_on_real_shakespeare() {
    let Some(data_dir) = common::data_dir() else {
        return;
    };
    let dir = common::temp_dir("shakespeare");
    let data = DataSpec::text(
        vec![data_dir.join("tinyshakespeare/input.txt")],
        Encoding::Utf8,
    );
    let config = TrainConfig {
        max_iters: 60,
        eval_interval: 60,
        eval_iters: 4,
        lr_decay_iters: 60,
        warmup_iters: 10,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(config, data, &dir).unwrap();
    assert_eq!(
        t.vocab_size(),
        65,
        "tinyshakespeare has 65 distinct characters"
    );
    let mut evals = vec![];
    t.run(&mut |e| {
        if let Event::Eval(e) = e {
            evals.push(e.val_loss.unwrap())
        }
    })
    .unwrap();
    // ln(65) ≈ 4.17 at the start; 60 steps of the CPU recipe get well below 3.
    assert!(evals[0] > 4.0, "{evals:?}");
    assert!(*evals.last().unwrap() < 3.0, "{evals:?}");
    std::fs::remove_dir_all(&dir).ok();
}
