//! Time `translate train`'s step on the engine (forward, backward, clipping, AdamW) on
//! real sentence pairs: `cargo run --release --example translate_step -- MODEL_DIR SRC
//! TGT STEPS [BATCH]`. MODEL_DIR is a Marian or T5 folder (`attn translate train`,
//! `attn summarize train`, `attn pretrain`); batch
//! k is pairs k·BATCH .. (k+1)·BATCH of the files, encoded as `translate train` encodes
//! them. `scripts/translate_step_reference.py` runs transformers on the same batches.
//! Prints target tokens per second over the steps after the first.

use attn::tasks::translate::Translator;
use attn::train::encdec::EncDecModel;
use attn::train::encdec::PairTrainer;
use attn::train::fit::Trainable;
use attn::train::optimizer::AdamWConfig;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let (src, tgt) = (read(&args[2]), read(&args[3]));
    let steps: usize = args.get(4).map_or(10, |s| s.parse().unwrap());
    let b: usize = args.get(5).map_or(64, |s| s.parse().unwrap());
    let tr = Translator::load(&dir).unwrap();
    let mut model = EncDecModel::load(&dir).unwrap();
    let enc = |s: &str| tr.encode_src(&attn::data::normalize(s)).unwrap().0;
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = src
        .lines()
        .zip(tgt.lines())
        .take((steps + 1) * b)
        .map(|(s, t)| (enc(s.trim()), enc(t.trim())))
        .collect();
    let opt = AdamWConfig {
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-9,
        weight_decay: 0.0,
    };
    let (mut tokens, mut seconds) = (0usize, 0f64);
    for (i, chunk) in pairs.chunks(b).enumerate() {
        let batch: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|(s, t)| (s.as_slice(), t.as_slice()))
            .collect();
        let t0 = std::time::Instant::now();
        model.zero_grads();
        let loss = model.forward_backward(&batch, 0.1, Some(i as u64)).unwrap();
        let norm = model.grad_norm();
        model.adamw_step(&opt, 1e-4, if norm > 1.0 { 1.0 / norm } else { 1.0 });
        let dt = t0.elapsed().as_secs_f64();
        let n: usize = chunk.iter().map(|p| p.1.len()).sum();
        if i > 0 {
            tokens += n;
            seconds += dt;
        }
        eprintln!("step {i}: loss {loss:.4}, {n} target tokens, {dt:.3} s");
    }
    println!(
        "{{\"impl\": \"attn\", \"model\": \"{}\", \"batch\": {b}, \"steps\": {steps}, \"isa\": \"{}\", \"target_tokens\": {tokens}, \"seconds\": {seconds:.3}, \"tokens_per_s\": {:.1}}}",
        model.model_type(),
        attn::kernels::isa_name(),
        tokens as f64 / seconds
    );
}
