//! Every fused kernel against the composite candle expression it replaces: values and
//! gradients, in f32 and f64, on shapes large enough to take the multi-threaded path
//! and small ones that stay on one thread; and whole models with the fused paths on
//! and off.

use attn::nn::fused;
use attn::rng::Rng;
use candle_core::{DType, Device, Tensor, Var, D};

fn randn(rng: &mut Rng, shape: &[usize], dtype: DType, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32 * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        1e-10
    } else {
        2e-5
    }
}

/// Gradients of sum(f(inputs) ⊙ r) with respect to each input, `r` random.
fn grads(inputs: &[Tensor], f: &dyn Fn(&[Tensor]) -> Tensor, seed: u64) -> (Tensor, Vec<Tensor>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = randn(&mut Rng::new(seed), out.dims(), out.dtype(), 1.0);
    let loss = (&out * &r).unwrap().sum_all().unwrap();
    let store = loss.backward().unwrap();
    let g = ts
        .iter()
        .map(|t| {
            store
                .get(t)
                .expect("a gradient reaches every input")
                .clone()
        })
        .collect();
    (out, g)
}

fn compare(
    name: &str,
    inputs: &[Tensor],
    fused_f: &dyn Fn(&[Tensor]) -> Tensor,
    reference: &dyn Fn(&[Tensor]) -> Tensor,
) {
    let dtype = inputs[0].dtype();
    let (a, ga) = grads(inputs, fused_f, 9);
    let (b, gb) = grads(inputs, reference, 9);
    let d = max_diff(&a, &b) / 1f64.max(max_abs(&b));
    assert!(
        d < tol(dtype),
        "{name} {dtype:?}: values differ by {d} (relative)"
    );
    for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
        let d = max_diff(x, y);
        let scale = 1f64.max(max_abs(y));
        assert!(
            d / scale < tol(dtype) * 5.0,
            "{name} {dtype:?}: gradient {i} differs by {d} (scale {scale})"
        );
    }
    eprintln!("{name} {dtype:?} {:?}: ok", inputs[0].dims());
}

const SHAPES: [&[usize]; 3] = [&[3, 5, 7], &[4, 64, 96], &[2, 700, 64]];

#[test]
fn gelu_matches_the_formula() {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let x = randn(&mut Rng::new(1), shape, dtype, 2.0);
            compare(
                "gelu",
                &[x],
                &|t| fused::gelu_tanh(&t[0]).unwrap(),
                // The formula written out: candle's own gelu backward uses constants
                // rounded to six digits.
                &|t| {
                    let x = &t[0];
                    let inner = ((x + (x.powf(3.0).unwrap() * 0.044715).unwrap()).unwrap()
                        * (2.0 / std::f64::consts::PI).sqrt())
                    .unwrap();
                    ((x * 0.5).unwrap() * (inner.tanh().unwrap() + 1.0).unwrap()).unwrap()
                },
            );
        }
    }
}

#[test]
fn bias_add_matches_broadcast_add() {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let mut rng = Rng::new(8);
            let x = randn(&mut rng, shape, dtype, 1.0);
            let b = randn(&mut rng, &[*shape.last().unwrap()], dtype, 1.0);
            compare(
                "add_bias",
                &[x, b],
                &|t| fused::add_bias(&t[0], &t[1]).unwrap(),
                &|t| t[0].broadcast_add(&t[1]).unwrap(),
            );
        }
    }
}

#[test]
fn layer_norm_matches_the_composite() {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let mut rng = Rng::new(2);
            let d = *shape.last().unwrap();
            let x = (randn(&mut rng, shape, dtype, 1.5) + 0.3).unwrap();
            let w = (randn(&mut rng, &[d], dtype, 0.2) + 1.0).unwrap();
            let b = randn(&mut rng, &[d], dtype, 0.2);
            compare(
                "layer_norm",
                &[x, w, b],
                &|t| fused::layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
                &|t| {
                    let mean = t[0].mean_keepdim(D::Minus1).unwrap();
                    let xc = t[0].broadcast_sub(&mean).unwrap();
                    let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                    let xn = xc
                        .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                        .unwrap();
                    xn.broadcast_mul(&t[1])
                        .unwrap()
                        .broadcast_add(&t[2])
                        .unwrap()
                },
            );
        }
    }
}

#[test]
fn softmax_and_causal_softmax_match_the_composite() {
    for dtype in [DType::F32, DType::F64] {
        for shape in SHAPES {
            let x = randn(&mut Rng::new(3), shape, dtype, 3.0);
            compare(
                "softmax",
                &[x.clone()],
                &|t| fused::softmax(&t[0], 0.7).unwrap(),
                &|t| candle_nn::ops::softmax(&(&t[0] * 0.7).unwrap(), D::Minus1).unwrap(),
            );
        }
        // Causal: [B, H, tq, tk] with tk = offset + tq, offsets 0 (training) and 5 (cache).
        for (tq, offset) in [(9, 0), (4, 5), (1, 12), (130, 0)] {
            let tk = tq + offset;
            let x = randn(&mut Rng::new(4), &[2, 3, tq, tk], dtype, 3.0);
            let mask: Vec<f32> = (0..tq)
                .flat_map(|i| {
                    (0..tk).map(move |j| {
                        if j <= offset + i {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            compare(
                "causal_softmax",
                &[x],
                &|t| fused::causal_softmax(&t[0], 0.125).unwrap(),
                &|t| {
                    let s = (&t[0] * 0.125).unwrap().broadcast_add(&mask).unwrap();
                    candle_nn::ops::softmax(&s, D::Minus1).unwrap()
                },
            );
        }
    }
}

#[test]
fn cross_entropy_matches_log_softmax_with_smoothing_and_weights() {
    for dtype in [DType::F32, DType::F64] {
        for (n, v) in [(5, 7), (96, 65), (300, 1000)] {
            let mut rng = Rng::new(5);
            let x = randn(&mut rng, &[n, v], dtype, 2.0);
            let t: Vec<u32> = (0..n).map(|_| rng.below(v) as u32).collect();
            let t = Tensor::new(t.as_slice(), &Device::Cpu).unwrap();
            // Some rows weigh nothing (padding), the rest unequal.
            let w: Vec<f32> = (0..n)
                .map(|i| {
                    if i % 4 == 3 {
                        0.0
                    } else {
                        0.5 + (i % 3) as f32
                    }
                })
                .collect();
            let w = Tensor::new(w.as_slice(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            for eps in [0.0, 0.1] {
                compare(
                    "cross_entropy",
                    &[x.clone()],
                    &|a| fused::cross_entropy(&a[0], &t, &w, eps).unwrap(),
                    &|a| {
                        let logp = candle_nn::ops::log_softmax(&a[0], D::Minus1).unwrap();
                        let nll = logp
                            .gather(&t.unsqueeze(1).unwrap(), 1)
                            .unwrap()
                            .squeeze(1)
                            .unwrap()
                            .neg()
                            .unwrap();
                        let smooth = logp.mean(D::Minus1).unwrap().neg().unwrap();
                        let per = ((nll * (1.0 - eps)).unwrap() + (smooth * eps).unwrap()).unwrap();
                        (per * &w).unwrap().sum_all().unwrap()
                    },
                );
            }
        }
    }
    // A target outside the vocabulary is an error, not a read out of bounds.
    let x = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
    let w = Tensor::ones(2, DType::F32, &Device::Cpu).unwrap();
    let e = fused::cross_entropy(&x, &t, &w, 0.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 4"), "{e}");
}

#[test]
fn adamw_in_place_matches_the_tensor_expression() {
    use attn::nn::{Init, ParamBuilder};
    use attn::train::optimizer::{AdamW, AdamWConfig};
    use std::collections::HashMap;
    let cfg = AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: 0.1,
    };
    let run = |on: bool| -> Vec<Tensor> {
        fused::set_enabled(on);
        let mut pb = ParamBuilder::init(Rng::new(6), &Device::Cpu);
        pb.get("w", &[300, 200], Init::Normal { std: 0.5 }).unwrap();
        pb.get("b", &[200], Init::Normal { std: 0.5 }).unwrap();
        let params = pb.finish().unwrap();
        let mut opt = AdamW::new(&params, cfg).unwrap();
        let mut rng = Rng::new(7);
        for step in 0..4 {
            let grads: HashMap<String, Tensor> = params
                .iter()
                .map(|(n, v)| (n.clone(), randn(&mut rng, v.dims(), DType::F32, 1.0)))
                .collect();
            opt.step(&grads, 1e-2 * (step + 1) as f64).unwrap();
        }
        let mut out: Vec<Tensor> = params
            .iter()
            .map(|(_, v)| v.as_tensor().copy().unwrap())
            .collect();
        out.extend(opt.state_tensors().into_values());
        fused::set_enabled(true);
        out
    };
    let (a, b) = (run(true), run(false));
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        let d = max_diff(x, y);
        assert!(d < 1e-6, "AdamW differs by {d}");
    }
}

#[test]
fn small_matmul_matches_candle_matmul_both_layouts() {
    // Decoding shapes: 1–4 rows, GPT-2 Conv1D [k, n] and Linear [n, k] weights, sizes
    // that leave tails after the 32- and 8-wide SIMD steps and split over threads.
    for (m, k, n) in [(1, 5, 3), (1, 768, 2304), (3, 100, 1037), (4, 64, 50)] {
        let mut rng = Rng::new(10);
        let x = randn(&mut rng, &[m, k], DType::F32, 1.0);
        let w_kn = randn(&mut rng, &[k, n], DType::F32, 0.1);
        let w_nk = randn(&mut rng, &[n, k], DType::F32, 0.1);
        compare(
            "small_matmul [k, n]",
            &[x.clone(), w_kn],
            &|t| fused::small_matmul(&t[0], &t[1], false).unwrap(),
            &|t| t[0].matmul(&t[1]).unwrap(),
        );
        compare(
            "small_matmul [n, k]",
            &[x, w_nk],
            &|t| fused::small_matmul(&t[0], &t[1], true).unwrap(),
            &|t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        );
    }
}

#[test]
fn panel_matmul_matches_candle_matmul_values_and_gradients() {
    // Training shapes: many rows (past the row-blocked path at 256), widths that leave
    // partial 32-column panels, both weight layouts.
    for (m, k, n) in [(8, 5, 3), (40, 64, 100), (300, 70, 37)] {
        let mut rng = Rng::new(12);
        let x = randn(&mut rng, &[m, k], DType::F32, 1.0);
        let w_kn = randn(&mut rng, &[k, n], DType::F32, 0.1);
        let w_nk = randn(&mut rng, &[n, k], DType::F32, 0.1);
        compare(
            "panel_matmul [k, n]",
            &[x.clone(), w_kn],
            &|t| fused::panel_matmul(&t[0], &t[1], false).unwrap(),
            &|t| t[0].matmul(&t[1]).unwrap(),
        );
        compare(
            "panel_matmul [n, k]",
            &[x, w_nk],
            &|t| fused::panel_matmul(&t[0], &t[1], true).unwrap(),
            &|t| t[0].matmul(&t[1].t().unwrap()).unwrap(),
        );
    }
}
