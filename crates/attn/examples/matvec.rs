//! Speed of the inference engine's matrix-vector products, per weight type, against the
//! memory read bandwidth: `cargo run --release -p attn --example matvec`.
//! A product at batch 1 reads every weight once, so GB/s of weights is the figure.

use attn::kernels::cpu::quant::matmul;
use attn::kernels::{QMatrix, WeightType};

#[path = "common/mod.rs"]
mod common;

fn main() {
    let (rows, cols) = (50257usize, 768usize);
    let mut s = 1u64;
    let w: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
    for ty in [
        WeightType::F32,
        WeightType::F16,
        WeightType::Q8,
        WeightType::Q4,
    ] {
        let q = QMatrix::from_f32(&w, rows, cols, ty).unwrap();
        let mut out = vec![0f32; rows];
        matmul(&x, 1, &q, None, &mut out);
        let best = common::best_of(20, &mut || matmul(&x, 1, &q, None, &mut out));
        println!(
            "{:5} {rows}x{cols}: {:.2} ms, {:.1} GB/s of weights",
            ty.name(),
            best * 1e3,
            q.bytes() as f64 / best / 1e9
        );
    }
    // A prompt of 128 tokens through a 3072×768 matrix (GPT-2's MLP), in GFLOP/s.
    let (rows, cols, n) = (3072usize, 768usize, 128usize);
    let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
    for ty in [WeightType::F32, WeightType::Q4] {
        let q = QMatrix::from_f32(&w[..rows * cols], rows, cols, ty).unwrap();
        let mut out = vec![0f32; n * rows];
        let best = common::best_of(20, &mut || matmul(&x, n, &q, None, &mut out));
        println!(
            "{:5} {n}x{cols} · {cols}x{rows}: {:.2} ms, {:.1} GFLOP/s",
            ty.name(),
            best * 1e3,
            2.0 * (n * rows * cols) as f64 / best / 1e9
        );
    }
}
