//! Speed of the training step's matrix products at one shape, for comparing instruction
//! sets (`ATTN_ISA=avx2` caps the choice):
//! `cargo run --release -p attn --example gemm_speed -- M K N [THREADS] [REPEATS]`.
//! Times `y [M, N] = x [M, K] · Wᵀ` (the forward product, `W [N, K]` as stored),
//! `dx [M, K] = dy · W` (the input gradient), `dW [N, K] += dyᵀ · x` (the weight
//! gradient of `W` stored `[out, in]`, as Llama's and BERT's) and `dW [K, N] += xᵀ · dy`
//! with the bias gradient (stored `[in, out]`, as GPT-2's) on a pool of THREADS threads
//! (default 1: the trainer gives each thread its own shard), and prints the best of
//! REPEATS (default 50) for each, in GFLOP/s. The best is not the typical call: on a
//! shared 2-core VM the mean of warm calls ran about 13% slower (384 128 384: 472 µs mean
//! against 418 µs best), which is also how fast the training step's products run.

use attn::kernels::cpu::{gemm, gemm_tn_acc, isa_name, Rhs};

#[path = "common/mod.rs"]
mod common;

fn main() {
    let args = common::numbers("gemm_speed M K N [THREADS] [REPEATS]", 3);
    let [m, k, n] = [args[0], args[1], args[2]];
    let threads = args.get(3).copied().unwrap_or(1);
    let repeats = args.get(4).copied().unwrap_or(50);
    let pool = common::pool(threads);
    let fill = common::fill;
    let (x, w, dy) = (fill(m * k, 1), fill(n * k, 2), fill(m * n, 3));
    let (mut y, mut dx, mut dw) = (vec![0f32; m * n], vec![0f32; m * k], vec![0f32; n * k]);
    let mut dwb = vec![0f32; (k + 1) * n];
    let (mut panels, mut xpack) = (Vec::new(), Vec::new());
    let flops = 2.0 * (m * k * n) as f64;
    let best = |f: &mut dyn FnMut()| common::best_of(repeats, f);
    pool.install(|| {
        let fwd = best(&mut || gemm(&x, m, k, n, Rhs::Nt(&w), &mut y, &mut panels));
        let dgrad = best(&mut || gemm(&dy, m, n, k, Rhs::Nn(&w), &mut dx, &mut panels));
        let wgrad =
            best(&mut || gemm_tn_acc(&dy, m, n, &x, k, &mut dw, (&mut panels, &mut xpack), false));
        let wgrad_t =
            best(&mut || gemm_tn_acc(&x, m, k, &dy, n, &mut dwb, (&mut panels, &mut xpack), true));
        println!(
            "{} M {m} K {k} N {n}, {threads} thread(s): forward {:.1}, input grad {:.1}, \
             weight grad {:.1}, [in, out] weight grad {:.1} GFLOP/s (best of {repeats}: \
             {:.0} / {:.0} / {:.0} / {:.0} µs)",
            isa_name(),
            flops / fwd / 1e9,
            flops / dgrad / 1e9,
            flops / wgrad / 1e9,
            flops / wgrad_t / 1e9,
            fwd * 1e6,
            dgrad * 1e6,
            wgrad * 1e6,
            wgrad_t * 1e6
        );
    });
}
