//! Speed of the training step's causal attention at one shape, forward and backward:
//! `cargo run --release -p attn --example attention_speed -- B T HEADS KV_HEADS HEAD_DIM
//! [THREADS] [REPEATS] [SETS]`. Prints the best of REPEATS (default 200) for each pass, in
//! microseconds and in GFLOP/s of the products over the causal triangle (the weights'
//! softmax and gradient not counted), on a pool of THREADS threads (default 1: the
//! trainer gives each thread a shard of the batch). With SETS > 1, the calls take their
//! inputs and outputs from that many sets of buffers in turn, so that they come from
//! memory rather than cache, as in a training step (16 sets of the CPU recipe's shape,
//! 6 64 4 4 32, are about 30 MB: both passes then take about 1.45 times as long as with
//! one set on a Zen 3 machine, while 4 sets, within its L3, take no longer than one).

use attn::kernels::cpu::{attention, attention_backward, isa_name, Heads};

#[path = "common/mod.rs"]
mod common;

fn main() {
    let args = common::numbers(
        "attention_speed B T HEADS KV_HEADS HEAD_DIM [THREADS] [REPEATS] [SETS]",
        5,
    );
    let [b, t, n, kv, dim] = [args[0], args[1], args[2], args[3], args[4]];
    let threads = args.get(5).copied().unwrap_or(1);
    let repeats = args.get(6).copied().unwrap_or(200);
    let heads = Heads { n, kv, dim };
    let pool = common::pool(threads);
    let fill = common::fill;
    let sets = args.get(7).copied().unwrap_or(1).max(1);
    let qkvs: Vec<Vec<f32>> = (0..sets)
        .map(|s| fill(b * t * heads.width(), 1 + s))
        .collect();
    let dys: Vec<Vec<f32>> = (0..sets)
        .map(|s| fill(b * t * heads.q_width(), 2 + s))
        .collect();
    let mut probss: Vec<Vec<f32>> = (0..sets).map(|_| vec![0f32; b * n * t * t]).collect();
    let mut ys: Vec<Vec<f32>> = (0..sets)
        .map(|_| vec![0f32; b * t * heads.q_width()])
        .collect();
    let mut dqkvs: Vec<Vec<f32>> = (0..sets)
        .map(|_| vec![0f32; b * t * heads.width()])
        .collect();
    let mut at = 0usize;
    let best = |f: &mut dyn FnMut()| common::best_of(repeats, f);
    // Two products forward and four backward, each over the causal triangle.
    let flops = (b * n) as f64 * 2.0 * (t * (t + 1) / 2 * dim) as f64;
    pool.install(|| {
        let fwd = best(&mut || {
            at = (at + 1) % sets;
            attention(
                &qkvs[at],
                b,
                t,
                heads,
                None,
                &mut probss[at],
                &mut ys[at],
                None,
            )
        });
        let bwd = best(&mut || {
            at = (at + 1) % sets;
            let (dy, qkv, probs) = (&dys[at], &qkvs[at], &probss[at]);
            attention_backward(dy, qkv, probs, b, t, heads, None, &mut dqkvs[at], None)
        });
        println!(
            "{} B {b} T {t} heads {n}/{kv} dim {dim}, {threads} thread(s): forward {:.1} µs \
             ({:.1} GFLOP/s), backward {:.1} µs ({:.1} GFLOP/s), best of {repeats}",
            isa_name(),
            fwd * 1e6,
            2.0 * flops / fwd / 1e9,
            bwd * 1e6,
            4.0 * flops / bwd / 1e9,
        );
    });
}
