//! Every operation of the CUDA backend, forward and backward, against the CPU engine on
//! fresh random inputs (relative error ‖gpu − cpu‖ / ‖cpu‖ ≤ 1e-4 in f32; dropout masks
//! bit for bit; bf16 products within 1e-2, the rounding of 8-bit mantissas).
//!
//! On a machine without a GPU (CI, laptops) the test prints why and passes: the CUDA
//! libraries are opened at run time, and their absence is the expected case there. With
//! `ATTN_REQUIRE_GPU=1` a missing GPU fails it instead (the device script sets this).

mod common;

use attn::kernels::cpu::{self, Dropout, Heads, Rhs};
use attn::kernels::cuda::{Buf, Gpu, Precision};

/// Fresh values in [−1, 1) from a xorshift seeded per call.
fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let (mut d, mut w) = (0f64, 0f64);
    for (&g, &x) in got.iter().zip(want) {
        assert!(g.is_finite(), "non-finite value {g} where the CPU has {x}");
        d += (g as f64 - x as f64).powi(2);
        w += (x as f64).powi(2);
    }
    (d / w.max(1e-30)).sqrt()
}

struct Check<'a> {
    gpu: &'a Gpu,
    worst: Vec<(String, f64, f64)>,
}

impl Check<'_> {
    fn up(&self, x: &[f32]) -> Buf<f32> {
        self.gpu.upload(x).unwrap()
    }
    fn down(&self, b: &Buf<f32>) -> Vec<f32> {
        self.gpu.download(b).unwrap()
    }
    /// Compares a downloaded buffer with the CPU's values (only the first `want.len()`).
    fn same(&mut self, what: &str, got: &Buf<f32>, want: &[f32], bound: f64) {
        let got = self.down(got);
        let e = rel(&got[..want.len()], want);
        println!("{what:<44} rel. error {e:.2e} (bound {bound:.0e})");
        self.worst.push((what.to_string(), e, bound));
    }
}

fn gemms(c: &mut Check) {
    for &(m, k, n) in &[(37usize, 70usize, 53usize), (256, 768, 2304)] {
        let a = rand(m * k, 1);
        let b = rand(k * n, 2);
        let bt = rand(n * k, 3);
        let mut panels = Vec::new();
        let (ga, gb, gbt) = (c.up(&a), c.up(&b), c.up(&bt));
        let out = c.gpu.alloc::<f32>(m * n).unwrap();
        let mut want = vec![0f32; m * n];
        cpu::gemm(&a, m, k, n, Rhs::Nn(&b), &mut want, &mut panels);
        c.gpu
            .gemm(false, false, m, n, k, &ga, &gb, &out, false)
            .unwrap();
        c.same(&format!("gemm {m}x{k}·{k}x{n}"), &out, &want, 1e-4);
        cpu::gemm(&a, m, k, n, Rhs::Nt(&bt), &mut want, &mut panels);
        c.gpu
            .gemm(false, true, m, n, k, &ga, &gbt, &out, false)
            .unwrap();
        c.same(&format!("gemm {m}x{k}·({n}x{k})ᵀ"), &out, &want, 1e-4);
        // Weight gradient dw [k, n] += aᵀ·dy, with the bias gradient (column sums) after it.
        let dy = rand(m * n, 4);
        let init = rand(k * n + n, 5);
        let mut dw = init.clone();
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        cpu::gemm_tn_acc(&a, m, k, &dy, n, &mut dw, (&mut s1, &mut s2), true);
        let gdw = c.up(&init[..k * n]);
        let gdb = c.up(&init[k * n..]);
        let gdy = c.up(&dy);
        c.gpu
            .gemm(true, false, k, n, m, &ga, &gdy, &gdw, true)
            .unwrap();
        c.gpu.col_sums_acc(&gdy, m, n, &gdb).unwrap();
        c.same(
            &format!("weight grad += {m}x{k}ᵀ·{m}x{n}"),
            &gdw,
            &dw[..k * n],
            1e-4,
        );
        c.same(
            &format!("bias grad += Σ rows of {m}x{n}"),
            &gdb,
            &dw[k * n..],
            1e-4,
        );
        // GELU: act = gelu(a·b + bias), then the gradient through it.
        let bias = rand(n, 6);
        let (mut deriv, mut act) = (vec![0f32; m * n], vec![0f32; m * n]);
        cpu::gemm_bias_gelu(
            &a,
            m,
            k,
            n,
            Rhs::Nn(&b),
            &bias,
            &mut deriv,
            &mut act,
            &mut panels,
        );
        let gact = c.gpu.alloc::<f32>(m * n).unwrap();
        c.gpu
            .gemm(false, false, m, n, k, &ga, &gb, &out, false)
            .unwrap();
        c.gpu
            .bias_gelu(&out, Some(&c.up(&bias)), &gact, m, n)
            .unwrap();
        c.same("gelu(x·w + b)", &gact, &act, 1e-4);
        c.same("gelu'(x·w + b)", &out, &deriv, 1e-4);
        let d2 = rand(m * k, 7);
        let mut want2 = vec![0f32; m * n];
        cpu::gemm_gelu_grad(&d2, m, k, n, Rhs::Nn(&b), &deriv, &mut want2, &mut panels);
        let g2 = c.gpu.alloc::<f32>(m * n).unwrap();
        c.gpu
            .gemm(false, false, m, n, k, &c.up(&d2), &gb, &g2, false)
            .unwrap();
        c.gpu.mul_into(&g2, &out, m * n).unwrap();
        c.same("(dy·w) ⊙ gelu'", &g2, &want2, 1e-4);
        // The tensor cores' arithmetic for f32 buffers: TF32 (10-bit mantissas) and bf16
        // (8-bit) operands with f32 sums; their rounding bounds the error.
        for (p, bound) in [(Precision::Tf32, 2e-3), (Precision::Bf16, 1e-2)] {
            cpu::gemm(&a, m, k, n, Rhs::Nt(&bt), &mut want, &mut panels);
            c.gpu.set_precision(p);
            c.gpu
                .gemm(false, true, m, n, k, &ga, &gbt, &out, false)
                .unwrap();
            c.gpu.set_precision(Precision::F32);
            c.same(
                &format!("{} gemm {m}x{k}·({n}x{k})ᵀ", p.name()),
                &out,
                &want,
                bound,
            );
        }
        // bf16 operands, f32 accumulation.
        cpu::gemm(&a, m, k, n, Rhs::Nn(&b), &mut want, &mut panels);
        let (ha, hb) = (c.gpu.to_bf16(&ga).unwrap(), c.gpu.to_bf16(&gb).unwrap());
        c.gpu
            .gemm_bf16(false, false, m, n, k, &ha, &hb, &out, false)
            .unwrap();
        c.same(&format!("bf16 gemm {m}x{k}·{k}x{n}"), &out, &want, 1e-2);
    }
}

fn norms(c: &mut Check) {
    for &(m, n) in &[(5usize, 37usize), (300, 768)] {
        for bias in [true, false] {
            let name = if bias { "layer norm" } else { "RMS norm" };
            let x: Vec<f32> = rand(m * n, 10).iter().map(|v| 3.0 * v + 0.5).collect();
            let w = rand(n, 11);
            let b = rand(n, 12);
            let (mut out, mut stats) = (vec![0f32; m * n], vec![0f32; 2 * m]);
            cpu::layer_norm(
                &x,
                &w,
                bias.then_some(&b[..]),
                1e-5,
                m,
                &mut out,
                &mut stats,
            );
            let (gx, gw, gb) = (c.up(&x), c.up(&w), c.up(&b));
            let (gout, gstats) = (c.gpu.alloc(m * n).unwrap(), c.gpu.alloc(2 * m).unwrap());
            c.gpu
                .layer_norm(&gx, &gw, bias.then_some(&gb), 1e-5, m, &gout, &gstats)
                .unwrap();
            c.same(&format!("{name} {m}x{n}"), &gout, &out, 1e-4);
            let g = rand(m * n, 13);
            let (mut dx, mut dw, mut db) = (rand(m * n, 14), rand(n, 15), rand(n, 16));
            let (gdx, gdw, gdb) = (c.up(&dx), c.up(&dw), c.up(&db));
            cpu::layer_norm_backward(
                &g,
                &x,
                &stats,
                &w,
                m,
                &mut dx,
                &mut dw,
                bias.then_some(&mut db[..]),
            );
            c.gpu
                .layer_norm_backward(
                    &c.up(&g),
                    &gx,
                    &gstats,
                    &gw,
                    m,
                    &gdx,
                    &gdw,
                    bias.then_some(&gdb),
                )
                .unwrap();
            c.same(&format!("{name} backward dx"), &gdx, &dx, 1e-4);
            c.same(&format!("{name} backward dw"), &gdw, &dw, 1e-4);
            if bias {
                c.same(&format!("{name} backward db"), &gdb, &db, 1e-4);
            }
        }
    }
}

fn losses(c: &mut Check) {
    for &(m, v) in &[(7usize, 50usize), (64, 50257)] {
        for eps in [0.0f32, 0.1] {
            let logits: Vec<f32> = rand(m * v, 20).iter().map(|x| 4.0 * x).collect();
            let targets: Vec<u32> = (0..m).map(|i| ((i * 7919 + 3) % v) as u32).collect();
            let mut want = logits.clone();
            let loss = cpu::smoothed_cross_entropy(&mut want, v, &targets, eps, Some(0.5));
            let gl = c.up(&logits);
            let got = c
                .gpu
                .cross_entropy(&gl, v, &c.gpu.upload(&targets).unwrap(), eps, Some(0.5))
                .unwrap();
            let e = (got - loss).abs() / loss.abs();
            println!(
                "{:<44} rel. error {e:.2e} (bound 1e-5)",
                format!("cross-entropy loss {m}x{v} eps {eps}")
            );
            c.worst
                .push((format!("cross-entropy loss eps {eps}"), e, 1e-5));
            c.same(
                &format!("cross-entropy gradient {m}x{v} eps {eps}"),
                &gl,
                &want,
                1e-4,
            );
        }
    }
}

fn optimiser(c: &mut Check) {
    let n = 100_003;
    let (p, g) = (rand(n, 30), rand(n, 31));
    let (m0, v0): (Vec<f32>, Vec<f32>) = (rand(n, 32), rand(n, 33).iter().map(|x| x * x).collect());
    let step = cpu::AdamWStep {
        lr: 3e-3,
        decay: 0.1,
        beta1: 0.9,
        beta2: 0.95,
        bc1: 0.19,
        bc2: 0.0975,
        eps: 1e-8,
        grad_scale: 0.7,
    };
    let segments = [
        (0, 40_000, true),
        (40_000, 40_100, false),
        (40_100, n, true),
    ];
    let (mut pc, mut mc, mut vc) = (p.clone(), m0.clone(), v0.clone());
    cpu::adamw(
        &mut pc,
        &mut g.clone(),
        &mut mc,
        &mut vc,
        &segments,
        step,
        false,
    );
    let (gp, gm, gv) = (c.up(&p), c.up(&m0), c.up(&v0));
    let gg = c.up(&g);
    c.gpu.adamw(&gp, &gg, &gm, &gv, &segments, step).unwrap();
    c.same("AdamW parameters", &gp, &pc, 1e-5);
    c.same("AdamW first moments", &gm, &mc, 1e-5);
    c.same("AdamW second moments", &gv, &vc, 1e-5);
    let (want, got) = (cpu::sum_squares(&g), c.gpu.sum_squares(&gg).unwrap());
    let e = (got - want).abs() / want;
    println!("{:<44} rel. error {e:.2e} (bound 1e-6)", "sum of squares");
    c.worst.push(("sum of squares".into(), e, 1e-6));
}

fn embeddings(c: &mut Check) {
    let (vocab, t, b, ch) = (97usize, 16usize, 3usize, 40usize);
    let wte = rand(vocab * ch, 40);
    let wpe = rand(t * ch, 41);
    let ids: Vec<u32> = (0..b * t).map(|i| ((i * 31 + 7) % 13) as u32).collect(); // repeats
    let mut want = vec![0f32; b * t * ch];
    for (r, &id) in ids.iter().enumerate() {
        for j in 0..ch {
            want[r * ch + j] = wte[id as usize * ch + j] + wpe[(r % t) * ch + j];
        }
    }
    let gids = c.gpu.upload(&ids).unwrap();
    let out = c.gpu.alloc(b * t * ch).unwrap();
    c.gpu
        .embed(&gids, &c.up(&wte), Some(&c.up(&wpe)), t, ch, &out)
        .unwrap();
    c.same("embedding (token + position)", &out, &want, 1e-6);
    let g = rand(b * t * ch, 42);
    let (mut dwte, mut dwpe) = (vec![0f64; vocab * ch], vec![0f64; t * ch]);
    for (r, &id) in ids.iter().enumerate() {
        for j in 0..ch {
            dwte[id as usize * ch + j] += g[r * ch + j] as f64;
            dwpe[(r % t) * ch + j] += g[r * ch + j] as f64;
        }
    }
    let (gdwte, gdwpe) = (
        c.gpu.zeros(vocab * ch).unwrap(),
        c.gpu.zeros(t * ch).unwrap(),
    );
    c.gpu
        .embed_backward(&gids, &c.up(&g), t, ch, &gdwte, Some(&gdwpe))
        .unwrap();
    let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
    c.same("embedding backward, tokens", &gdwte, &f(dwte), 1e-6);
    c.same("embedding backward, positions", &gdwpe, &f(dwpe), 1e-6);
}

fn dropout(c: &mut Check) {
    let n = 1 << 20;
    let x = rand(n, 50);
    let d = Dropout::new(0.1, 1234).unwrap().site(7);
    let mut want = vec![0f32; n];
    cpu::dropout_into(&x, d, &mut want);
    let out = c.gpu.alloc(n).unwrap();
    c.gpu.dropout(&c.up(&x), d, &out, n).unwrap();
    let got = c.down(&out);
    let differ = got
        .iter()
        .zip(&want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    println!(
        "{:<44} {differ} of {n} elements differ (bound 0)",
        "dropout mask"
    );
    c.worst.push(("dropout mask".into(), differ as f64, 0.0));
}

fn attention(c: &mut Check) {
    let cases = [
        (
            2usize,
            33usize,
            Heads {
                n: 4,
                kv: 2,
                dim: 16,
            },
            None,
            None,
        ),
        (
            2,
            33,
            Heads {
                n: 4,
                kv: 4,
                dim: 16,
            },
            Some(8usize),
            None,
        ),
        (
            1,
            20,
            Heads {
                n: 6,
                kv: 2,
                dim: 8,
            },
            None,
            Dropout::new(0.2, 99),
        ),
        (
            4,
            256,
            Heads {
                n: 12,
                kv: 12,
                dim: 64,
            },
            None,
            None,
        ),
    ];
    for (b, t, h, window, drop) in cases {
        let what = format!(
            "attention b{b} t{t} heads {}/{}x{}{}{}",
            h.n,
            h.kv,
            h.dim,
            window.map_or(String::new(), |w| format!(" window {w}")),
            if drop.is_some() { " dropout" } else { "" }
        );
        let qkv = rand(b * t * h.width(), 60);
        let (mut probs, mut y) = (vec![0f32; b * h.n * t * t], vec![0f32; b * t * h.q_width()]);
        cpu::attention(&qkv, b, t, h, window, &mut probs, &mut y, drop);
        let gq = c.up(&qkv);
        let (gp, gy) = (
            c.gpu.alloc(probs.len()).unwrap(),
            c.gpu.alloc(y.len()).unwrap(),
        );
        c.gpu
            .attention(&gq, b, t, h, window, &gp, &gy, drop)
            .unwrap();
        c.same(&format!("{what}: weights"), &gp, &probs, 1e-4);
        c.same(&format!("{what}: output"), &gy, &y, 1e-4);
        let dy = rand(y.len(), 61);
        let mut dqkv = vec![0f32; qkv.len()];
        cpu::attention_backward(&dy, &qkv, &probs, b, t, h, window, &mut dqkv, drop);
        let gd = c.gpu.alloc(qkv.len()).unwrap();
        c.gpu
            .attention_backward(&c.up(&dy), &gq, &gp, b, t, h, &gd, drop)
            .unwrap();
        c.same(&format!("{what}: backward"), &gd, &dqkv, 1e-4);
    }
}

fn rope_swiglu(c: &mut Check) {
    let (m, t) = (40usize, 20usize);
    let h = Heads {
        n: 4,
        kv: 2,
        dim: 16,
    };
    let table = cpu::RopeTable::new(h.dim, t, &cpu::Rope::plain(10_000.0), "test").unwrap();
    let gt = c.gpu.upload_rope(&table).unwrap();
    let x = rand(m * h.width(), 70);
    for inverse in [false, true] {
        let mut want = x.clone();
        cpu::rope(&mut want, m, t, h, &table, inverse);
        let gx = c.up(&x);
        c.gpu.rope(&gx, m, t, h, &gt, inverse).unwrap();
        c.same(
            &format!(
                "rotary positions{}",
                if inverse { " (backward)" } else { "" }
            ),
            &gx,
            &want,
            1e-5,
        );
    }
    let (m, f) = (33usize, 70usize);
    let gu = rand(m * 2 * f, 71);
    let mut act = vec![0f32; m * f];
    cpu::swiglu(&gu, m, f, &mut act);
    let ggu = c.up(&gu);
    let gact = c.gpu.alloc(m * f).unwrap();
    c.gpu.swiglu(&ggu, m, f, &gact).unwrap();
    c.same("SwiGLU", &gact, &act, 1e-5);
    let d = rand(m * f, 72);
    let mut dgu = vec![0f32; m * 2 * f];
    cpu::swiglu_backward(&d, &gu, m, f, &mut dgu);
    let gdgu = c.gpu.alloc(m * 2 * f).unwrap();
    c.gpu.swiglu_backward(&c.up(&d), &ggu, m, f, &gdgu).unwrap();
    c.same("SwiGLU backward", &gdgu, &dgu, 1e-5);
}

#[test]
fn every_operation_matches_the_cpu_engine() {
    let Some(gpu) = common::gpu_or_skip() else {
        return;
    };
    let i = gpu.info();
    println!(
        "{} (compute capability {}.{}, {} multiprocessors, {:.0} GiB); {}",
        i.name,
        i.capability.0,
        i.capability.1,
        i.multiprocessors,
        i.memory as f64 / (1u64 << 30) as f64,
        attn::kernels::cuda::versions().unwrap()
    );
    let mut c = Check {
        gpu: &gpu,
        worst: Vec::new(),
    };
    gemms(&mut c);
    norms(&mut c);
    losses(&mut c);
    optimiser(&mut c);
    embeddings(&mut c);
    dropout(&mut c);
    attention(&mut c);
    rope_swiglu(&mut c);
    gpu.sync().unwrap();
    // Asking for more memory than the card has is an error, not an abort.
    let e = gpu
        .alloc::<f32>(i.memory)
        .err()
        .expect("an allocation past the card's memory succeeded");
    assert!(e.to_string().contains("GPU memory"), "{e}");
    let bad: Vec<_> = c
        .worst
        .iter()
        .filter(|(_, e, b)| e.is_nan() || e > b)
        .collect();
    assert!(bad.is_empty(), "past their bounds: {bad:?}");
}
