//! Prefill speed of the inference engine on a model folder, for profiling:
//! `cargo run --release -p attn --example prefill -- MODEL [TOKENS] [REPEATS]`.
//! Runs a prompt of TOKENS (default 128) token ids from an empty cache REPEATS times
//! (default 20) and prints the best tokens/s.

use std::time::Instant;

use attn::engine::{Decoder, Want};

fn main() -> attn::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: prefill MODEL [TOKENS] [REPEATS]");
        std::process::exit(2);
    };
    let n: usize = args.get(1).map_or(Ok(128), |s| s.parse()).expect("TOKENS");
    let repeats: usize = args.get(2).map_or(Ok(20), |s| s.parse()).expect("REPEATS");
    let dec = Decoder::load(dir.as_ref(), None)?;
    let ids: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7919) % dec.vocab_size() as u32)
        .collect();
    let mut best = f64::MAX;
    for _ in 0..repeats {
        let mut st = dec.new_state();
        let t = Instant::now();
        dec.forward(&mut [&mut st], &[&ids], Want::Last)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!(
        "{n} tokens: best {:.1} ms, {:.0} tokens/s ({})",
        best * 1e3,
        n as f64 / best,
        attn::kernels::isa_name()
    );
    Ok(())
}
