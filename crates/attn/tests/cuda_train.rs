//! The decoder trainer on a CUDA GPU against the same trainer on the CPU: the loss and
//! every gradient of one step with dropout (GPT-2, and a Llama with grouped key/value
//! heads, RoPE and SwiGLU), and the loss curve of 200 AdamW steps of a GPT-2 (each
//! step's loss within 1e-3 of the CPU run's). Transformers' own gradients on the GPU:
//! `engine_parity.rs`.
//!
//! Without a GPU the tests print why and pass (`ATTN_REQUIRE_GPU=1` makes that a
//! failure, for the device script).

mod common;

use attn::engine::DecoderSpec;
use attn::kernels::cuda::{Gpu, Precision};
use attn::models::gpt2::Gpt2Config;
use attn::rng::Rng;
use attn::train::native::NativeDecoder;
use attn::train::optimizer::AdamWConfig;

fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

fn gpt2(
    vocab: usize,
    ctx: usize,
    c: usize,
    layers: usize,
    heads: usize,
    dropout: f32,
    seed: u64,
) -> NativeDecoder {
    let mut config = Gpt2Config::new(vocab, ctx, c, layers, heads);
    config.set_dropout(dropout);
    let spec = DecoderSpec::from_gpt2(&config).unwrap();
    let pdrop = (config.embd_pdrop, config.attn_pdrop, config.resid_pdrop);
    NativeDecoder::init(&spec, pdrop, seed, 0.02).unwrap()
}

/// A Llama (grouped key/value heads, RoPE, SwiGLU, untied head) from the transformers
/// fixture, with attention dropout.
fn llama() -> NativeDecoder {
    let dir = common::hf_fixture("llama-gqa");
    let (spec, _) = attn::engine::io::read_spec(&dir).unwrap();
    let tensors = attn::checkpoint::read_weights(&dir).unwrap();
    NativeDecoder::from_plain(&spec, (0.0, 0.1, 0.0), tensors).unwrap()
}

/// One training step's loss and gradients on the CPU and on the GPU, from the same
/// weights and dropout seed, each gradient within `bound` of its tensor's largest value.
fn same_step(
    make: &dyn Fn() -> NativeDecoder,
    vocab: usize,
    (b, t): (usize, usize),
    (precision, bound): (Precision, f32),
    what: &str,
) {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    gpu.set_precision(precision);
    let what = format!("{what} ({})", precision.name());
    let x = ids(b * t, vocab, 1);
    let y = ids(b * t, vocab, 2);
    let mut cpu_model = make();
    cpu_model.set_shards(1);
    cpu_model.zero_grads();
    let want = cpu_model.forward_backward(&x, &y, b, t, 1.0, 77).unwrap();
    let mut on_gpu = make();
    on_gpu.to_gpu(gpu).unwrap();
    on_gpu.zero_grads();
    let got = on_gpu.forward_backward(&x, &y, b, t, 1.0, 77).unwrap();
    let loss_bound = if precision == Precision::F32 {
        1e-5
    } else {
        1e-2
    };
    assert!(
        (got - want).abs() < loss_bound * want.abs(),
        "{what}: loss {got} on the GPU, {want} on the CPU"
    );
    on_gpu.sync_to_host().unwrap();
    let (gg, cg) = (on_gpu.gradients(), cpu_model.gradients());
    assert_eq!(gg.len(), cg.len());
    let mut worst = 0f32;
    for (name, (want, _)) in &cg {
        let got = &gg[name].0;
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let d = got
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            d <= bound * scale,
            "{what}: gradient of {name} differs by {d} (largest {scale})"
        );
        worst = worst.max(d / scale);
    }
    eprintln!(
        "{what}: loss {got:.6} (CPU {want:.6}), {} gradients within {worst:.1e} of the largest",
        cg.len()
    );
}

/// bf16 operands round to 8-bit mantissas (relative error up to 2⁻⁹ each); a gradient
/// passes through a few such products, each summing many rounded terms, so it keeps
/// about two significant digits: 5e-2 of each tensor's largest value bounds it.
const BF16: (Precision, f32) = (Precision::Bf16, 5e-2);
const F32: (Precision, f32) = (Precision::F32, 1e-4);

#[test]
fn a_gpt2_step_with_dropout_matches_the_cpu() {
    for p in [F32, BF16] {
        same_step(
            &|| gpt2(97, 40, 48, 2, 4, 0.1, 5),
            97,
            (3, 33),
            p,
            "GPT-2 with dropout 0.1",
        );
    }
}

#[test]
fn a_llama_step_with_attention_dropout_matches_the_cpu() {
    for p in [F32, BF16] {
        same_step(
            &llama,
            64,
            (2, 12),
            p,
            "Llama (GQA, RoPE, SwiGLU) with attention dropout",
        );
    }
}

/// Token ids with structure to learn: a repeating phrase with random substitutions.
fn corpus(n: usize, vocab: usize) -> Vec<u32> {
    let mut rng = Rng::new(9);
    let phrase: Vec<u32> = (0..23).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
    (0..n)
        .map(|i| {
            if rng.below(10) == 0 {
                rng.below(vocab) as u32
            } else {
                phrase[i % phrase.len()]
            }
        })
        .collect()
}

fn train(mut model: NativeDecoder, steps: usize, (b, t): (usize, usize), data: &[u32]) -> Vec<f64> {
    let opt = AdamWConfig {
        beta1: 0.9,
        beta2: 0.99,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let mut rng = Rng::new(3);
    let mut losses = Vec::new();
    for step in 0..steps {
        let mut x = Vec::with_capacity(b * t);
        let mut y = Vec::with_capacity(b * t);
        for _ in 0..b {
            let s = rng.below(data.len() - t - 1);
            x.extend_from_slice(&data[s..s + t]);
            y.extend_from_slice(&data[s + 1..s + t + 1]);
        }
        model.zero_grads();
        losses.push(
            model
                .forward_backward(&x, &y, b, t, 1.0, step as u64)
                .unwrap(),
        );
        let norm = model.grad_norm();
        assert!(norm.is_finite(), "step {step}: gradient norm {norm}");
        let lr = 1e-3 * ((step + 1) as f64 / 20.0).min(1.0);
        model.adamw_step(&opt, lr, if norm > 1.0 { 1.0 / norm } else { 1.0 });
    }
    losses
}

#[test]
fn two_hundred_gpt2_steps_follow_the_cpu_loss_curve() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    drop(gpu);
    let (vocab, b, t) = (65, 16, 64);
    let data = corpus(20_000, vocab);
    let make = || gpt2(vocab, t, 128, 4, 4, 0.1, 8);
    let mut cpu_model = make();
    cpu_model.set_shards(1);
    let want = train(cpu_model, 200, (b, t), &data);
    assert!(
        want[199] < want[0] - 1.0,
        "the run did not learn: {} -> {}",
        want[0],
        want[199]
    );
    // f32 follows the CPU to 1e-3; bf16 (mixed precision) to 5e-2, its rounding.
    for (precision, bound) in [(Precision::F32, 1e-3), (Precision::Bf16, 5e-2)] {
        let g = Gpu::open(0).unwrap();
        g.set_precision(precision);
        let mut on_gpu = make();
        on_gpu.to_gpu(g).unwrap();
        let got = train(on_gpu, 200, (b, t), &data);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        let p = precision.name();
        for s in [0, 49, 99, 149, 199] {
            eprintln!(
                "step {:>3}: loss {:.5} on the GPU ({p}), {:.5} on the CPU",
                s + 1,
                got[s],
                want[s]
            );
        }
        eprintln!("{p}: largest difference over 200 steps: {worst:.2e}");
        assert!(
            worst <= bound,
            "the GPU's loss curve ({p}) left the CPU's by {worst}"
        );
    }
}
