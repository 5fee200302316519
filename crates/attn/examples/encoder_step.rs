//! Time BERT's training step on the engine (forward, backward, AdamW) at a fine-tuning
//! shape: `cargo run --release --example encoder_step -- MODEL_DIR BATCH TOKENS STEPS`.
//! Every sequence has exactly TOKENS tokens (ids drawn from the vocabulary), so the
//! shapes match a padded batch of transformers without padding.

use attn::train::encoder::NativeEncoder;
use attn::train::fit::Trainable;
use attn::train::optimizer::AdamWConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let b: usize = args.get(2).map_or(32, |s| s.parse().unwrap());
    let t: usize = args.get(3).map_or(64, |s| s.parse().unwrap());
    let steps: usize = args.get(4).map_or(5, |s| s.parse().unwrap());
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let lora = std::env::var("LORA_R")
        .ok()
        .map(|r| attn::models::bert::LoraConfig {
            r: r.parse().unwrap(),
            lora_alpha: 16.0,
        });
    let mut enc = NativeEncoder::load_with_head(&dir, &labels, 0, lora).unwrap();
    let v = enc.config.vocab_size as u64;
    let mut rng = attn::rng::Rng::new(1);
    let seqs: Vec<Vec<u32>> = (0..b)
        .map(|_| (0..t).map(|_| (rng.next_u64() % v) as u32).collect())
        .collect();
    let ys: Vec<u32> = (0..b).map(|i| (i % 2) as u32).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
    let opt = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut times = vec![];
    for i in 0..steps + 1 {
        let t0 = std::time::Instant::now();
        enc.zero_grads();
        let loss = enc
            .forward_backward(&refs, None, &ys, Some(i as u64))
            .unwrap();
        enc.adamw_step(&opt, 2e-5, 1.0);
        let dt = t0.elapsed().as_secs_f64();
        if i > 0 {
            times.push(dt);
        }
        eprintln!("step {i}: loss {loss:.4}, {dt:.3} s");
    }
    if attn::train::profile::enabled() {
        let total: f64 = times.iter().sum::<f64>() + 1e-12;
        let mut rows = attn::train::profile::report();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (name, secs, calls) in rows {
            eprintln!(
                "{name:>22}: {:7.1} ms/step ({:4.1}%), {calls} calls",
                secs * 1e3 / (steps + 1) as f64,
                100.0 * secs / total * steps as f64 / (steps + 1) as f64
            );
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"batch\": {b}, \"tokens\": {t}, \"isa\": \"{}\", \"median_step_s\": {:.4}}}",
        attn::kernels::isa_name(),
        times[times.len() / 2]
    );
}
