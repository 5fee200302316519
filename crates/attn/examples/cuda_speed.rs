//! Times the CUDA backend's operations at GPT-2-small shapes on the GPU found, with
//! each figure's floor from the device's measured ceilings (`scripts/cuda_ops_reference.py`
//! times PyTorch's equivalents at the same shapes, for a side-by-side table):
//!
//!     cargo run --release --example cuda_speed [REPEATS]
//!
//! Prints one line per operation: milliseconds (mean of REPEATS after one warm-up), and
//! TFLOP/s for products or GB/s (bytes read + written once) for memory-bound ones.

use attn::kernels::cpu::{AdamWStep, Heads};
use attn::kernels::cuda::{Buf, Gpu};

fn rand(gpu: &Gpu, n: usize, seed: u64) -> Buf<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    gpu.upload(&v).unwrap()
}

fn main() -> attn::Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map_or(20, |s| s.parse().expect("REPEATS"));
    let gpu = Gpu::open(0)?;
    println!("{} ({})", gpu.info().name, attn::kernels::cuda::versions()?);
    let time = |f: &dyn Fn() -> attn::Result<()>| -> attn::Result<f64> {
        f()?;
        let ms = gpu.time_ms(|| {
            for _ in 0..reps {
                f()?;
            }
            Ok(())
        })?;
        Ok(ms as f64 / reps as f64)
    };
    let flops = |name: &str, ms: f64, fl: f64| {
        println!("{name:<48} {ms:9.3} ms {:8.1} TFLOP/s", fl / ms / 1e9)
    };
    let bytes = |name: &str, ms: f64, by: f64| {
        println!("{name:<48} {ms:9.3} ms {:8.0} GB/s", by / ms / 1e6)
    };

    // Copy bandwidth (the memory ceiling): 1 GiB device to device.
    let n = 1 << 28;
    let (x, y) = (gpu.zeros(n)?, gpu.zeros(n)?);
    bytes(
        "copy 1 GiB device to device",
        time(&|| gpu.copy(&x, &y))?,
        8.0 * n as f64,
    );
    drop((x, y));

    for &(m, k, nn) in &[
        (4096usize, 4096usize, 4096usize),
        (8192, 768, 2304),
        (8192, 768, 50257),
    ] {
        let (a, b, c) = (
            rand(&gpu, m * k, 1),
            rand(&gpu, k * nn, 2),
            gpu.zeros(m * nn)?,
        );
        let fl = 2.0 * (m * k * nn) as f64;
        flops(
            &format!("f32 gemm {m}x{k}·{k}x{nn}"),
            time(&|| gpu.gemm(false, false, m, nn, k, &a, &b, &c, false))?,
            fl,
        );
        let (ha, hb) = (gpu.to_bf16(&a)?, gpu.to_bf16(&b)?);
        flops(
            &format!("bf16 gemm {m}x{k}·{k}x{nn} (f32 out)"),
            time(&|| gpu.gemm_bf16(false, false, m, nn, k, &ha, &hb, &c, false))?,
            fl,
        );
    }
    {
        let s = 8192;
        let (a, b, c) = (
            rand(&gpu, s * s, 3),
            rand(&gpu, s * s, 4),
            gpu.zeros(s * s)?,
        );
        let (ha, hb) = (gpu.to_bf16(&a)?, gpu.to_bf16(&b)?);
        flops(
            "bf16 gemm 8192³",
            time(&|| gpu.gemm_bf16(false, false, s, s, s, &ha, &hb, &c, false))?,
            2.0 * (s * s * s) as f64,
        );
    }

    // GPT-2 small, batch 8 × 1024 tokens.
    let (b, t, ch, v) = (8usize, 1024usize, 768usize, 50257usize);
    let m = b * t;
    let x = rand(&gpu, m * ch, 5);
    let (w, bias) = (rand(&gpu, ch, 6), rand(&gpu, ch, 7));
    let (out, stats) = (gpu.zeros(m * ch)?, gpu.zeros(2 * m)?);
    bytes(
        "layer norm 8192x768",
        time(&|| gpu.layer_norm(&x, &w, Some(&bias), 1e-5, m, &out, &stats))?,
        8.0 * (m * ch) as f64,
    );
    let (dx, dw, db) = (gpu.zeros(m * ch)?, gpu.zeros(ch)?, gpu.zeros(ch)?);
    bytes(
        "layer norm backward 8192x768",
        time(&|| gpu.layer_norm_backward(&out, &x, &stats, &w, m, &dx, &dw, Some(&db)))?,
        4.0 * 4.0 * (m * ch) as f64,
    );
    let u = rand(&gpu, m * 4 * ch, 8);
    let act = gpu.zeros(m * 4 * ch)?;
    bytes(
        "bias + GELU 8192x3072 (value and derivative)",
        time(&|| gpu.bias_gelu(&u, None, &act, m, 4 * ch))?,
        12.0 * (m * 4 * ch) as f64,
    );
    drop((u, act));
    let logits = rand(&gpu, m * v, 9);
    let targets = gpu.upload(&(0..m).map(|i| (i * 7919 % v) as u32).collect::<Vec<_>>())?;
    bytes(
        "cross-entropy + gradient 8192x50257",
        time(&|| {
            gpu.cross_entropy(&logits, v, &targets, 0.0, Some(1.0))
                .map(|_| ())
        })?,
        8.0 * (m * v) as f64,
    );
    drop(logits);
    let heads = Heads {
        n: 12,
        kv: 12,
        dim: 64,
    };
    let qkv = rand(&gpu, m * 3 * ch, 10);
    let (probs, y) = (gpu.zeros(b * 12 * t * t)?, gpu.zeros(m * ch)?);
    let att_fl = 4.0 * (b * 12 * t * t * 64) as f64; // two products, full squares
    flops(
        "attention forward b8 t1024 12x64 (cuBLAS, full)",
        time(&|| gpu.attention(&qkv, b, t, heads, None, &probs, &y, None))?,
        att_fl,
    );
    let dqkv = gpu.zeros(m * 3 * ch)?;
    flops(
        "attention backward b8 t1024 12x64",
        time(&|| gpu.attention_backward(&y, &qkv, &probs, b, t, heads, &dqkv, None))?,
        2.0 * att_fl,
    );
    drop((qkv, probs, y, dqkv));
    let np = 124_439_808;
    let (p, g, m1, v1) = (
        rand(&gpu, np, 11),
        rand(&gpu, np, 12),
        gpu.zeros(np)?,
        gpu.zeros(np)?,
    );
    let step = AdamWStep {
        lr: 1e-4,
        decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        bc1: 0.1,
        bc2: 0.05,
        eps: 1e-8,
        grad_scale: 1.0,
    };
    bytes(
        "AdamW 124M parameters",
        time(&|| gpu.adamw(&p, &g, &m1, &v1, &[(0, np, true)], step))?,
        28.0 * np as f64,
    );
    bytes(
        "sum of squares 124M",
        time(&|| gpu.sum_squares(&g).map(|_| ()))?,
        4.0 * np as f64,
    );
    Ok(())
}
