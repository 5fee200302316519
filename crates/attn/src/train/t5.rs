//! T5's training step on the engine's kernels: the encoder-decoder forward over a
//! ragged batch of (source, target) pairs (no padding computed), cross-entropy over
//! every target token (label smoothing optional), the backward pass and AdamW, with
//! parameters, gradients and moments in flat buffers under Hugging Face's names.
//!
//! The forward runs the engine's pre-norm block sublayers (`engine::block`, as T5's
//! inference does) and the attention heads of `engine::sublayers`; what T5 adds:
//! pre-norm sublayers (`x + drop(f(rms(x)))`) with a scale-only RMS norm, matrices without biases, and
//! attention scores left unscaled plus a learned bias per head and relative-position
//! bucket (`relative_attention_bias`, one table per stack, read by every layer; its
//! gradient is the sum of the score gradients of the pairs in each bucket). Dropout
//! (one rate) where transformers puts it: the embeddings' output, the attention
//! weights, each sublayer's output, the MLP's activation and the final norm's output.
//! Checked against transformers' loss and every parameter gradient (`tests/t5.rs`).
//!
//! Why one file of this length: the stack's forward and its backward are read side by
//! side (the backward undoes the forward's steps in reverse over the activations one
//! struct saves), and T5's backward pieces (pre-norm RMS sublayers, the position bias and
//! its gradient, the gated MLP) are used nowhere else.

use std::path::Path;

use rayon::prelude::*;

use super::encdec::{Forward, Pairs, Passes};
use super::flat::Flat;
use crate::engine::block;
use crate::engine::block::NormOut;
use crate::engine::io::Plain;
use crate::engine::seq2seq::{is_t5_copy, read_t5_config};
use crate::engine::sublayers::{
    drop_in_place, head_jobs, heads_backward, heads_forward, spans_of, weight_backward, Act, Dims,
    Job, Scratch,
};
use crate::kernels::cpu as k;
use crate::kernels::cpu::{Dropout, Rhs};
use crate::models::t5::{bucket_grid, head_bias, T5Act, T5Config, T5Ffn};
use crate::Result;

/// Offsets of a self-attention sublayer: q, k and v weights one after another
/// (`[3a, c]`), the output matrix `[c, a]`, the norm before it.
struct AttnAt {
    qkv: usize,
    o: usize,
    ln: usize,
}

/// Offsets of a cross-attention sublayer: q `[a, c]`, k and v one after the other
/// (`[2a, c]`), the output matrix and the norm.
struct CrossAt {
    q: usize,
    kv: usize,
    o: usize,
    ln: usize,
}

/// Offsets of an MLP sublayer: `wi` (or `wi_0` then `wi_1`), `wo`, the norm.
struct FfAt {
    wi: usize,
    wo: usize,
    ln: usize,
}

struct LayerAt {
    attn: AttnAt,
    cross: Option<CrossAt>,
    ff: FfAt,
}

#[derive(Clone, Copy)]
enum Init {
    Normal(f32),
    Ones,
}

/// Every tensor in buffer order, with its shape and initial values as transformers
/// draws them (`initializer_factor` 1).
fn schema(cfg: &T5Config) -> Vec<(String, Vec<usize>, Init)> {
    let (c, v, a, ff) = (cfg.d_model, cfg.vocab_size, cfg.inner(), cfg.d_ff);
    let (nb, nh) = (cfg.relative_attention_num_buckets, cfg.num_heads);
    let sd = |n: usize| Init::Normal((n as f32).powf(-0.5));
    let mut s = vec![("shared.weight".to_string(), vec![v, c], Init::Normal(1.0))];
    if !cfg.tied() {
        // transformers draws it N(0, 1), which puts the first logits at a standard
        // deviation of √d_model (a loss of 50 for a new model of width 256); scaled as
        // the other matrices, a new model starts near log(vocab).
        s.push(("lm_head.weight".into(), vec![v, c], sd(c)));
    }
    let gated = matches!(cfg.ffn(), Ok(T5Ffn::Gated(_)));
    let stacks = [
        ("encoder", cfg.num_layers, false),
        ("decoder", cfg.decoder_layers(), true),
    ];
    for (stack, layers, decoder) in stacks {
        for l in 0..layers {
            let p = format!("{stack}.block.{l}.layer");
            let at = format!("{p}.0.SelfAttention");
            s.push((format!("{at}.q.weight"), vec![a, c], sd(c * cfg.d_kv)));
            s.push((format!("{at}.k.weight"), vec![a, c], sd(c)));
            s.push((format!("{at}.v.weight"), vec![a, c], sd(c)));
            s.push((format!("{at}.o.weight"), vec![c, a], sd(a)));
            if l == 0 {
                s.push((
                    format!("{at}.relative_attention_bias.weight"),
                    vec![nb, nh],
                    sd(c),
                ));
            }
            s.push((format!("{p}.0.layer_norm.weight"), vec![c], Init::Ones));
            let mut f = 1;
            if decoder {
                let e = format!("{p}.1.EncDecAttention");
                s.push((format!("{e}.q.weight"), vec![a, c], sd(c * cfg.d_kv)));
                s.push((format!("{e}.k.weight"), vec![a, c], sd(c)));
                s.push((format!("{e}.v.weight"), vec![a, c], sd(c)));
                s.push((format!("{e}.o.weight"), vec![c, a], sd(a)));
                s.push((format!("{p}.1.layer_norm.weight"), vec![c], Init::Ones));
                f = 2;
            }
            let d = format!("{p}.{f}.DenseReluDense");
            if gated {
                s.push((format!("{d}.wi_0.weight"), vec![ff, c], sd(c)));
                s.push((format!("{d}.wi_1.weight"), vec![ff, c], sd(c)));
            } else {
                s.push((format!("{d}.wi.weight"), vec![ff, c], sd(c)));
            }
            s.push((format!("{d}.wo.weight"), vec![c, ff], sd(ff)));
            s.push((format!("{p}.{f}.layer_norm.weight"), vec![c], Init::Ones));
        }
        s.push((
            format!("{stack}.final_layer_norm.weight"),
            vec![c],
            Init::Ones,
        ));
    }
    s
}

/// The dropout of one step (none when evaluating): one rate, a site per place.
#[derive(Clone, Copy, Default)]
pub(crate) struct Drops(Option<Dropout>);

impl Drops {
    /// Place `site` of layer `l` of stack 0 (encoder) or 1 (decoder); layer
    /// `usize::MAX >> 24` stands for the stack's embeddings and final norm.
    fn at(&self, stack: u64, l: usize, site: u64) -> Option<Dropout> {
        self.0
            .map(|d| d.site((1 << 62) | (stack << 48) | ((l as u64) << 8) | site))
    }
    fn head(&self, stack: u64, l: usize, cross: bool, s: usize, h: usize) -> Option<Dropout> {
        self.0.map(|d| {
            d.site(
                (stack << 60)
                    ^ ((cross as u64) << 56)
                    ^ ((l as u64) << 40)
                    ^ ((s as u64) << 16)
                    ^ h as u64,
            )
        })
    }
}

const EMB: u64 = 1;
const FINAL: u64 = 2;
const SELF_OUT: u64 = 3;
const CROSS_OUT: u64 = 4;
const FF_OUT: u64 = 5;
const FF_ACT: u64 = 6;
/// The "layer" of the per-stack dropout sites.
const STACK: usize = 0xff_ffff;

/// A norm's output and statistics.
struct Normed {
    h: Vec<f32>,
    st: Vec<f32>,
}

/// A zeroed norm output for `n` rows of `c`.
fn normed(n: usize, c: usize) -> Normed {
    Normed {
        h: vec![0f32; n * c],
        st: vec![0f32; 2 * n],
    }
}

/// An attention sublayer's activations: the norm, the projections (self: `[n, 3a]`;
/// cross: queries `[n, a]` and the memory's keys and values `[m, 2a]`), each job's
/// weights, and the heads' outputs `[n, a]`.
struct AttnActs {
    norm: Normed,
    q: Vec<f32>,
    kv: Vec<f32>,
    probs: Vec<Vec<f32>>,
    y: Vec<f32>,
}

/// An MLP sublayer's activations: the norm, the first product `[n, ff]` (gated: the
/// gate's then the linear half's, `[n, 2ff]`), and the activation after dropout.
struct FfActs {
    norm: Normed,
    u: Vec<f32>,
    g: Vec<f32>,
}

/// One layer: the residual stream entering each sublayer, and their activations.
struct LayerActs {
    x: Vec<Vec<f32>>,
    attn: AttnActs,
    cross: Option<AttnActs>,
    ff: FfActs,
}

/// What the backward pass reads of a forward pass.
pub(crate) struct Saved {
    dec_in: Vec<Vec<u32>>,
    src_spans: Vec<(usize, usize)>,
    tgt_spans: Vec<(usize, usize)>,
    /// Each sequence's relative-position buckets `[len, len]` (encoder: both
    /// directions; decoder: causal).
    enc_grids: Vec<Vec<u32>>,
    dec_grids: Vec<Vec<u32>>,
    enc: Vec<LayerActs>,
    dec: Vec<LayerActs>,
    /// Each stack's last residual stream, its final norm, and its output (after
    /// dropout; the decoder's scaled for the head).
    enc_last: Vec<f32>,
    enc_final: Normed,
    memory: Vec<f32>,
    dec_last: Vec<f32>,
    dec_final: Normed,
    head_in: Vec<f32>,
}

/// A T5 model's parameters, gradients and AdamW moments.
pub struct NativeT5 {
    pub config: T5Config,
    flat: Flat,
    shared: usize,
    /// The head's matrix (the shared embedding when tied).
    head: usize,
    rel: [usize; 2],
    enc: Vec<LayerAt>,
    dec: Vec<LayerAt>,
    final_ln: [usize; 2],
    ffn: T5Ffn,
    scratch: Scratch,
}

/// `out [m, o] = x [m, i] · wᵀ` for `w [o, i]`.
fn matmul_nt(x: &[f32], m: usize, w: &[f32], o: usize, out: &mut [f32], scratch: &mut Scratch) {
    let i = w.len() / o;
    k::gemm_bias(x, m, i, o, Rhs::Nt(w), None, out, &mut scratch.panels);
}

/// The trainer's activation (forward and backward) of a T5 activation.
fn act_of(act: T5Act) -> Act {
    match act {
        T5Act::Relu => Act::Relu,
        T5Act::GeluTanh => Act::GeluTanh,
        T5Act::GeluErf => Act::GeluErf,
        T5Act::Silu => Act::Silu,
    }
}

impl NativeT5 {
    /// Load a `T5ForConditionalGeneration` folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = read_t5_config(dir)?;
        super::flat::read_folder(dir, is_t5_copy, |t| Self::from_plain(config, t))
    }

    /// A model with weights drawn as transformers initialises T5.
    pub fn init(config: T5Config, seed: u64) -> Result<Self> {
        config.validate()?;
        let plain = super::flat::draw(schema(&config), seed, |init, rng| match init {
            Init::Normal(sd) => rng.normal() as f32 * sd,
            Init::Ones => 1.0,
        })?;
        Self::from_plain(config, plain)
    }

    fn from_plain(config: T5Config, t: Plain) -> Result<Self> {
        config.validate()?;
        let ffn = config.ffn()?;
        for (stack, layers) in [
            ("encoder", config.num_layers),
            ("decoder", config.decoder_layers()),
        ] {
            super::flat::layers_present(&t, layers, |l| {
                format!("{stack}.block.{l}.layer.0.SelfAttention.q.weight")
            })?;
        }
        let (flat, at) = Flat::from_schema(schema(&config).into_iter().map(|(n, s, _)| (n, s)), t)?;
        let of = |n: String| at[&n];
        let gated = matches!(ffn, T5Ffn::Gated(_));
        let layer = |stack: &str, l: usize, decoder: bool| {
            let p = format!("{stack}.block.{l}.layer");
            let f = if decoder { 2 } else { 1 };
            let d = format!("{p}.{f}.DenseReluDense");
            LayerAt {
                attn: AttnAt {
                    qkv: of(format!("{p}.0.SelfAttention.q.weight")),
                    o: of(format!("{p}.0.SelfAttention.o.weight")),
                    ln: of(format!("{p}.0.layer_norm.weight")),
                },
                cross: decoder.then(|| CrossAt {
                    q: of(format!("{p}.1.EncDecAttention.q.weight")),
                    kv: of(format!("{p}.1.EncDecAttention.k.weight")),
                    o: of(format!("{p}.1.EncDecAttention.o.weight")),
                    ln: of(format!("{p}.1.layer_norm.weight")),
                }),
                ff: FfAt {
                    wi: of(format!("{d}.{}.weight", if gated { "wi_0" } else { "wi" })),
                    wo: of(format!("{d}.wo.weight")),
                    ln: of(format!("{p}.{f}.layer_norm.weight")),
                },
            }
        };
        let enc = (0..config.num_layers)
            .map(|l| layer("encoder", l, false))
            .collect();
        let dec = (0..config.decoder_layers())
            .map(|l| layer("decoder", l, true))
            .collect();
        let rel = |stack: &str| {
            at.get(&format!(
                "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ))
            .copied()
            .unwrap_or(0)
        };
        let shared = at["shared.weight"];
        Ok(NativeT5 {
            head: at.get("lm_head.weight").copied().unwrap_or(shared),
            shared,
            rel: [rel("encoder"), rel("decoder")],
            final_ln: [
                at["encoder.final_layer_norm.weight"],
                at["decoder.final_layer_norm.weight"],
            ],
            flat,
            enc,
            dec,
            ffn,
            scratch: Scratch::default(),
            config,
        })
    }

    super::flat::flat_accessors!();

    /// The model as the inference engine runs it (greedy and beam search).
    pub fn to_engine(&self) -> Result<crate::engine::Seq2Seq> {
        crate::engine::Seq2Seq::from_t5_tensors(self.config.clone(), self.tensors())
    }

    fn dims(&self) -> Dims {
        Dims {
            c: self.config.inner(),
            nh: self.config.num_heads,
            eps: self.config.layer_norm_epsilon as f32,
        }
    }

    fn rms(&self, x: &[f32], ln: usize) -> Normed {
        let c = self.config.d_model;
        let n = x.len() / c;
        let (mut h, mut st) = (vec![0f32; n * c], vec![0f32; 2 * n]);
        let w = &self.flat.params[ln..ln + c];
        k::layer_norm(x, w, None, self.dims().eps, n, &mut h, &mut st);
        Normed { h, st }
    }

    /// The token embeddings of `seqs`, then the embeddings' dropout.
    fn embed(&self, seqs: &[&[u32]], drop: Option<Dropout>) -> Vec<f32> {
        let c = self.config.d_model;
        let w = &self.flat.params[self.shared..];
        let mut x = Vec::with_capacity(seqs.iter().map(|s| s.len()).sum::<usize>() * c);
        for &id in seqs.iter().flat_map(|s| s.iter()) {
            x.extend_from_slice(&w[id as usize * c..][..c]);
        }
        drop_in_place(&mut x, drop);
        x
    }

    /// The biases of every (sequence, head) job from a stack's table.
    fn job_biases(&self, stack: usize, grids: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let (nb, nh) = (
            self.config.relative_attention_num_buckets,
            self.config.num_heads,
        );
        let table = &self.flat.params[self.rel[stack]..self.rel[stack] + nb * nh];
        grids
            .iter()
            .flat_map(|g| (0..nh).map(move |h| head_bias(table, g, nh, h)))
            .collect()
    }

    /// The engine's block shape for this model.
    fn shape(&self) -> block::Shape {
        let cfg = &self.config;
        crate::engine::seq2seq::t5_shape(
            cfg.d_model,
            cfg.num_heads,
            cfg.d_kv,
            cfg.d_ff,
            self.ffn,
            cfg.layer_norm_epsilon as f32,
        )
    }

    /// Where a sublayer writes the norm (at `ln`) of its output: the next sublayer's input.
    fn norm_out<'a>(&'a self, ln: usize, out: &'a mut Normed) -> NormOut<'a> {
        let c = self.config.d_model;
        NormOut {
            w: &self.flat.params[ln..ln + c],
            b: None,
            eps: self.dims().eps,
            out: &mut out.h[..],
            stats: &mut out.st[..],
        }
    }

    /// An attention sublayer on the engine's block: `width` columns of the first product
    /// (weights at `first`) of the normed stream `ln`, the heads (`heads(q, y)` returns
    /// their weights), the output matrix at `o`, the residual `x` with dropout, and the
    /// norm at `next_ln` of the result. Returns the first product, the heads' weights and
    /// output, the sublayer's output and its norm.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn attn_block(
        &self,
        ln: &Normed,
        (first, width): (usize, usize),
        o: usize,
        x: &[f32],
        heads: impl FnOnce(&[f32], &mut [f32]) -> Vec<Vec<f32>>,
        drop: Option<Dropout>,
        next_ln: usize,
        scratch: &mut Scratch,
    ) -> (Vec<f32>, Vec<Vec<f32>>, Vec<f32>, Vec<f32>, Normed) {
        let (c, a) = (self.config.d_model, self.config.inner());
        let n = x.len() / c;
        let w = &self.flat.params;
        let (mut q, mut y, mut out) = (vec![0f32; n * width], vec![0f32; n * a], vec![0f32; n * c]);
        let mut next = normed(n, c);
        let mut probs = Vec::new();
        let first = block::First {
            w: Rhs::Nt(&w[first..first + width * c]),
            b: None,
            width,
        };
        let sub = block::Sublayer {
            res: x,
            out: &mut out[..],
            next: self.norm_out(next_ln, &mut next),
            drop,
        };
        let proj = (Rhs::Nt(&w[o..o + c * a]), None);
        let attend = |q: &mut [f32], y: &mut [f32]| {
            probs = heads(q, y);
            Ok(())
        };
        let shape = self.shape();
        let bufs = (&mut q[..], &mut y[..]);
        let Ok(()) = block::attention(
            &mut block::Cpu(&mut scratch.panels),
            &shape,
            first,
            proj,
            &ln.h,
            bufs,
            (n, n),
            attend,
            sub,
        );
        (q, probs, y, out, next)
    }

    /// An MLP sublayer on the engine's block from the normed stream `ln` and the residual
    /// `x`: its activations, its output and the norm at `next_ln` of that.
    #[allow(clippy::too_many_arguments)]
    fn ff_block(
        &self,
        at: &FfAt,
        ln: Normed,
        x: &[f32],
        drop_act: Option<Dropout>,
        drop_out: Option<Dropout>,
        next_ln: usize,
        scratch: &mut Scratch,
    ) -> (FfActs, Vec<f32>, Normed) {
        let shape = self.shape();
        let (c, ff, rows) = (self.config.d_model, self.config.d_ff, shape.up);
        let n = x.len() / c;
        let w = &self.flat.params;
        let (mut u, mut g, mut out) = (vec![0f32; n * rows], vec![0f32; n * ff], vec![0f32; n * c]);
        let mut next = normed(n, c);
        let mlp = block::MlpWeights {
            up: Rhs::Nt(&w[at.wi..at.wi + rows * c]),
            up_b: None,
            down: Rhs::Nt(&w[at.wo..at.wo + c * ff]),
            down_b: None,
        };
        let sub = block::Sublayer {
            res: x,
            out: &mut out[..],
            next: self.norm_out(next_ln, &mut next),
            drop: drop_out,
        };
        let bufs = (&mut u[..], &mut g[..]);
        let Ok(()) = block::mlp(
            &mut block::Cpu(&mut scratch.panels),
            &shape,
            &mlp,
            &ln.h,
            bufs,
            true,
            n,
            drop_act,
            sub,
        );
        (FfActs { norm: ln, u, g }, out, next)
    }

    #[allow(clippy::type_complexity)]
    fn forward_pass(
        &self,
        pairs: &[(&[u32], &[u32])],
        drops: Drops,
        scratch: &mut Scratch,
    ) -> (Saved, Vec<f32>, Vec<u32>) {
        let cfg = &self.config;
        let (c, v, a) = (cfg.d_model, cfg.vocab_size, cfg.inner());
        let (nb, md) = (
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        );
        let w = &self.flat.params;
        let d = self.dims();
        let srcs: Vec<&[u32]> = pairs.iter().map(|p| p.0).collect();
        let start = cfg.decoder_start_token_id;
        let dec_in: Vec<Vec<u32>> = pairs
            .iter()
            .map(|(_, t)| {
                std::iter::once(start)
                    .chain(t[..t.len() - 1].iter().copied())
                    .collect()
            })
            .collect();
        let dec_refs: Vec<&[u32]> = dec_in.iter().map(|s| s.as_slice()).collect();
        let (src_spans, ns) = spans_of(&srcs);
        let (tgt_spans, nt) = spans_of(&dec_refs);
        let enc_grids: Vec<Vec<u32>> = src_spans
            .iter()
            .map(|&(_, t)| bucket_grid(0, t, t, true, nb, md))
            .collect();
        let dec_grids: Vec<Vec<u32>> = tgt_spans
            .iter()
            .map(|&(_, t)| bucket_grid(0, t, t, false, nb, md))
            .collect();

        // The encoder.
        let enc_bias = self.job_biases(0, &enc_grids);
        let mut x = self.embed(&srcs, drops.at(0, STACK, EMB));
        let mut enc = Vec::with_capacity(self.enc.len());
        // Each sublayer writes the norm of its output, the next one's input; the last, the
        // stack's final norm.
        let mut norm = self.rms(&x, self.enc.first().map_or(self.final_ln[0], |l| l.attn.ln));
        let hd = d.hd();
        for (l, at) in self.enc.iter().enumerate() {
            let x0 = x;
            let jobs = head_jobs(d, &src_spans, None, false, |s, h| {
                drops.head(0, l, false, s, h)
            });
            let heads = |qkv: &[f32], y: &mut [f32]| {
                heads_forward(qkv, qkv, &jobs, (hd, 1.0), Some(&enc_bias), (a, y), true)
            };
            let (qkv, probs, y, x1, ff_norm) = self.attn_block(
                &norm,
                (at.attn.qkv, 3 * a),
                at.attn.o,
                &x0,
                heads,
                drops.at(0, l, SELF_OUT),
                at.ff.ln,
                scratch,
            );
            let next_ln = self.enc.get(l + 1).map_or(self.final_ln[0], |n| n.attn.ln);
            let (ff, x2, next) = self.ff_block(
                &at.ff,
                ff_norm,
                &x1,
                drops.at(0, l, FF_ACT),
                drops.at(0, l, FF_OUT),
                next_ln,
                scratch,
            );
            enc.push(LayerActs {
                x: vec![x0, x1],
                attn: AttnActs {
                    norm,
                    q: qkv,
                    kv: Vec::new(),
                    probs,
                    y,
                },
                cross: None,
                ff,
            });
            x = x2;
            norm = next;
        }
        let enc_last = x;
        let enc_final = norm;
        let mut memory = enc_final.h.clone();
        drop_in_place(&mut memory, drops.at(0, STACK, FINAL));

        // The decoder.
        let dec_bias = self.job_biases(1, &dec_grids);
        let mut x = self.embed(&dec_refs, drops.at(1, STACK, EMB));
        let mut dec = Vec::with_capacity(self.dec.len());
        let mut norm = self.rms(&x, self.dec.first().map_or(self.final_ln[1], |l| l.attn.ln));
        for (l, at) in self.dec.iter().enumerate() {
            let x0 = x;
            let cr = at.cross.as_ref().expect("decoder layers cross-attend");
            let jobs = head_jobs(d, &tgt_spans, None, true, |s, h| {
                drops.head(1, l, false, s, h)
            });
            let heads = |qkv: &[f32], y: &mut [f32]| {
                heads_forward(qkv, qkv, &jobs, (hd, 1.0), Some(&dec_bias), (a, y), true)
            };
            let (qkv, probs, y, x1, cnorm) = self.attn_block(
                &norm,
                (at.attn.qkv, 3 * a),
                at.attn.o,
                &x0,
                heads,
                drops.at(1, l, SELF_OUT),
                cr.ln,
                scratch,
            );
            // The memory's keys and values, then the queries' heads over them.
            let mut kv = vec![0f32; ns * 2 * a];
            matmul_nt(
                &memory,
                ns,
                &w[cr.kv..cr.kv + 2 * a * c],
                2 * a,
                &mut kv,
                scratch,
            );
            let jobs = head_jobs(d, &tgt_spans, Some(&src_spans), false, |s, h| {
                drops.head(1, l, true, s, h)
            });
            let heads = |q: &[f32], y: &mut [f32]| {
                heads_forward(q, &kv, &jobs, (hd, 1.0), None, (a, y), true)
            };
            let (q, cprobs, cy, x2, ff_norm) = self.attn_block(
                &cnorm,
                (cr.q, a),
                cr.o,
                &x1,
                heads,
                drops.at(1, l, CROSS_OUT),
                at.ff.ln,
                scratch,
            );
            let next_ln = self.dec.get(l + 1).map_or(self.final_ln[1], |n| n.attn.ln);
            let (ff, x3, next) = self.ff_block(
                &at.ff,
                ff_norm,
                &x2,
                drops.at(1, l, FF_ACT),
                drops.at(1, l, FF_OUT),
                next_ln,
                scratch,
            );
            dec.push(LayerActs {
                x: vec![x0, x1, x2],
                attn: AttnActs {
                    norm,
                    q: qkv,
                    kv: Vec::new(),
                    probs,
                    y,
                },
                cross: Some(AttnActs {
                    norm: cnorm,
                    q,
                    kv,
                    probs: cprobs,
                    y: cy,
                }),
                ff,
            });
            x = x3;
            norm = next;
        }
        let dec_last = x;
        let dec_final = norm;
        let mut head_in = dec_final.h.clone();
        drop_in_place(&mut head_in, drops.at(1, STACK, FINAL));
        if cfg.scales_output() {
            let s = (c as f32).powf(-0.5);
            head_in.iter_mut().for_each(|x| *x *= s);
        }
        let mut logits = vec![0f32; nt * v];
        matmul_nt(
            &head_in,
            nt,
            &w[self.head..self.head + v * c],
            v,
            &mut logits,
            scratch,
        );
        let targets: Vec<u32> = pairs.iter().flat_map(|p| p.1.iter().copied()).collect();
        (
            Saved {
                dec_in,
                src_spans,
                tgt_spans,
                enc_grids,
                dec_grids,
                enc,
                dec,
                enc_last,
                enc_final,
                memory,
                dec_last,
                dec_final,
                head_in,
            },
            logits,
            targets,
        )
    }

    /// `dx += rms_backward(dh)` for the norm at `ln` over the stream `x`.
    fn rms_backward(&mut self, dh: &[f32], x: &[f32], norm: &Normed, ln: usize, dx: &mut [f32]) {
        let c = self.config.d_model;
        let n = x.len() / c;
        let (w, g) = (&self.flat.params, &mut self.flat.grads);
        k::layer_norm_backward(
            dh,
            x,
            &norm.st,
            &w[ln..ln + c],
            n,
            dx,
            &mut g[ln..ln + c],
            None,
        );
    }

    /// The backward of the heads of `jobs`: the queries' gradients into `dq` (as `q`
    /// is laid out), the keys' and values' into `dkv` (or `dq` when they share a
    /// buffer); with `grids`, the bias table of `stack` gets the score gradients.
    #[allow(clippy::too_many_arguments)]
    fn heads_backward(
        &mut self,
        dy: &[f32],
        q: &[f32],
        kv: &[f32],
        probs: &[Vec<f32>],
        jobs: &[Job],
        bias: Option<(usize, &[Vec<u32>])>,
        dq: &mut [f32],
        dkv: Option<&mut [f32]>,
    ) {
        let d = self.dims();
        let (a, hd) = (d.c, d.hd());
        let score_grads = heads_backward(
            (dy, a),
            q,
            kv,
            probs,
            jobs,
            (hd, 1.0),
            bias.is_some(),
            dq,
            dkv,
        );
        if let Some((stack, grids)) = bias {
            let nh = d.nh;
            let g = &mut self.flat.grads[self.rel[stack]..];
            for (i, (j, gb)) in jobs.iter().zip(&score_grads).enumerate() {
                for (&b, &x) in grids[i / nh].iter().zip(gb) {
                    g[b as usize * nh + j.h] += x;
                }
            }
        }
    }

    /// Backward of an MLP sublayer: `dx` holds the gradient of its output and gets its
    /// input's added (the residual's is already there).
    #[allow(clippy::too_many_arguments)]
    fn ff_backward(
        &mut self,
        at: &FfAt,
        x: &[f32],
        acts: &FfActs,
        dx: &mut [f32],
        drop_act: Option<Dropout>,
        drop_out: Option<Dropout>,
        scratch: &mut Scratch,
    ) {
        let (c, ff) = (self.config.d_model, self.config.d_ff);
        let n = x.len() / c;
        let mut dout = dx.to_vec();
        drop_in_place(&mut dout, drop_out);
        let mut dg = vec![0f32; n * ff];
        {
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            weight_backward(
                &dout,
                &acts.g,
                n,
                &w[at.wo..at.wo + c * ff],
                c,
                Some(&mut g[at.wo..at.wo + c * ff]),
                Some(&mut dg),
                scratch,
            );
        }
        drop_in_place(&mut dg, drop_act);
        let rows = match self.ffn {
            T5Ffn::Gated(_) => 2 * ff,
            T5Ffn::Plain(_) => ff,
        };
        let mut du = vec![0f32; n * rows];
        match self.ffn {
            T5Ffn::Plain(act) => {
                du.copy_from_slice(&dg);
                act_of(act).grad_mul(&mut du, &acts.u);
            }
            T5Ffn::Gated(act) => {
                // m = act(gate) · lin: dlin = dm · act(gate), dgate = dm · lin · act'(gate).
                let (mut dgate, mut dlin) = (vec![0f32; n * ff], vec![0f32; n * ff]);
                let mut gate = vec![0f32; n * ff];
                for (r, u) in acts.u.chunks(2 * ff).enumerate() {
                    gate[r * ff..(r + 1) * ff].copy_from_slice(&u[..ff]);
                    let (d, l) = (&dg[r * ff..(r + 1) * ff], &u[ff..]);
                    for i in 0..ff {
                        dgate[r * ff + i] = d[i] * l[i];
                    }
                }
                act_of(act).grad_mul(&mut dgate, &gate);
                gate.par_chunks_mut(4096)
                    .for_each(|xs| act_of(act).apply(xs));
                dlin.iter_mut()
                    .zip(dg.iter().zip(&gate))
                    .for_each(|(o, (d, a))| *o = d * a);
                for (r, o) in du.chunks_mut(2 * ff).enumerate() {
                    o[..ff].copy_from_slice(&dgate[r * ff..(r + 1) * ff]);
                    o[ff..].copy_from_slice(&dlin[r * ff..(r + 1) * ff]);
                }
            }
        }
        let mut dh = vec![0f32; n * c];
        {
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            weight_backward(
                &du,
                &acts.norm.h,
                n,
                &w[at.wi..at.wi + rows * c],
                rows,
                Some(&mut g[at.wi..at.wi + rows * c]),
                Some(&mut dh),
                scratch,
            );
        }
        self.rms_backward(&dh, x, &acts.norm, at.ln, dx);
    }

    /// The gradient of an attention sublayer's heads' output `[n, a]` from `dx` (the
    /// gradient of the sublayer's output), after the output matrix and its dropout.
    fn out_backward(
        &mut self,
        o: usize,
        y: &[f32],
        dx: &[f32],
        drop: Option<Dropout>,
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let (c, a) = (self.config.d_model, self.config.inner());
        let n = dx.len() / c;
        let mut dout = dx.to_vec();
        drop_in_place(&mut dout, drop);
        let mut dy = vec![0f32; n * a];
        let (w, g) = (&self.flat.params, &mut self.flat.grads);
        weight_backward(
            &dout,
            y,
            n,
            &w[o..o + c * a],
            c,
            Some(&mut g[o..o + c * a]),
            Some(&mut dy),
            scratch,
        );
        dy
    }

    /// Backward of a self-attention sublayer; `dx` as in [`Self::ff_backward`].
    #[allow(clippy::too_many_arguments)]
    fn self_backward(
        &mut self,
        stack: usize,
        l: usize,
        at: &AttnAt,
        x: &[f32],
        acts: &AttnActs,
        spans: &[(usize, usize)],
        grids: &[Vec<u32>],
        dx: &mut [f32],
        drops: Drops,
        scratch: &mut Scratch,
    ) {
        let (c, a) = (self.config.d_model, self.config.inner());
        let n = x.len() / c;
        let s = stack as u64;
        let dy = self.out_backward(at.o, &acts.y, dx, drops.at(s, l, SELF_OUT), scratch);
        let jobs = head_jobs(self.dims(), spans, None, stack == 1, |q, h| {
            drops.head(s, l, false, q, h)
        });
        let mut dqkv = vec![0f32; n * 3 * a];
        self.heads_backward(
            &dy,
            &acts.q,
            &acts.q,
            &acts.probs,
            &jobs,
            Some((stack, grids)),
            &mut dqkv,
            None,
        );
        let mut dh = vec![0f32; n * c];
        {
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            let r = at.qkv..at.qkv + 3 * a * c;
            weight_backward(
                &dqkv,
                &acts.norm.h,
                n,
                &w[r.clone()],
                3 * a,
                Some(&mut g[r]),
                Some(&mut dh),
                scratch,
            );
        }
        self.rms_backward(&dh, x, &acts.norm, at.ln, dx);
    }

    fn backward_pass(
        &mut self,
        pairs: &[(&[u32], &[u32])],
        s: Saved,
        dlogits: Vec<f32>,
        drops: Drops,
        scratch: &mut Scratch,
    ) {
        let cfg = self.config.clone();
        let (c, v, a) = (cfg.d_model, cfg.vocab_size, cfg.inner());
        let ns = s.memory.len() / c;
        let nt = s.head_in.len() / c;
        // The head: dW += dlogitsᵀ·z, dz = dlogits·W, then the scaling and the final
        // norm's dropout.
        let mut dz = vec![0f32; nt * c];
        {
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            let r = self.head..self.head + v * c;
            weight_backward(
                &dlogits,
                &s.head_in,
                nt,
                &w[r.clone()],
                v,
                Some(&mut g[r]),
                Some(&mut dz),
                scratch,
            );
        }
        if cfg.scales_output() {
            let sc = (c as f32).powf(-0.5);
            dz.iter_mut().for_each(|x| *x *= sc);
        }
        drop_in_place(&mut dz, drops.at(1, STACK, FINAL));
        let mut dx = vec![0f32; nt * c];
        self.rms_backward(&dz, &s.dec_last, &s.dec_final, self.final_ln[1], &mut dx);
        let mut dmem = vec![0f32; ns * c];
        let dec_at = std::mem::take(&mut self.dec);
        for l in (0..dec_at.len()).rev() {
            let (at, acts) = (&dec_at[l], &s.dec[l]);
            self.ff_backward(
                &at.ff,
                &acts.x[2],
                &acts.ff,
                &mut dx,
                drops.at(1, l, FF_ACT),
                drops.at(1, l, FF_OUT),
                scratch,
            );
            // Cross-attention.
            let cr = at.cross.as_ref().expect("decoder layers cross-attend");
            let ca = acts.cross.as_ref().expect("decoder layers cross-attend");
            let dy = self.out_backward(cr.o, &ca.y, &dx, drops.at(1, l, CROSS_OUT), scratch);
            let jobs = head_jobs(
                self.dims(),
                &s.tgt_spans,
                Some(&s.src_spans),
                false,
                |q, h| drops.head(1, l, true, q, h),
            );
            let mut dq = vec![0f32; nt * a];
            let mut dkv = vec![0f32; ns * 2 * a];
            self.heads_backward(
                &dy,
                &ca.q,
                &ca.kv,
                &ca.probs,
                &jobs,
                None,
                &mut dq,
                Some(&mut dkv),
            );
            let mut dh = vec![0f32; nt * c];
            {
                let (w, g) = (&self.flat.params, &mut self.flat.grads);
                let r = cr.q..cr.q + a * c;
                weight_backward(
                    &dq,
                    &ca.norm.h,
                    nt,
                    &w[r.clone()],
                    a,
                    Some(&mut g[r]),
                    Some(&mut dh),
                    scratch,
                );
                let r = cr.kv..cr.kv + 2 * a * c;
                let mut dm = vec![0f32; ns * c];
                weight_backward(
                    &dkv,
                    &s.memory,
                    ns,
                    &w[r.clone()],
                    2 * a,
                    Some(&mut g[r]),
                    Some(&mut dm),
                    scratch,
                );
                dmem.iter_mut().zip(&dm).for_each(|(d, x)| *d += x);
            }
            self.rms_backward(&dh, &acts.x[1], &ca.norm, cr.ln, &mut dx);
            self.self_backward(
                1,
                l,
                &at.attn,
                &acts.x[0],
                &acts.attn,
                &s.tgt_spans,
                &s.dec_grids,
                &mut dx,
                drops,
                scratch,
            );
        }
        self.dec = dec_at;
        let dec_refs: Vec<&[u32]> = s.dec_in.iter().map(|x| x.as_slice()).collect();
        self.embed_backward(&dec_refs, &mut dx, drops.at(1, STACK, EMB));

        // The encoder, from the memory's gradient.
        drop_in_place(&mut dmem, drops.at(0, STACK, FINAL));
        let mut dx = vec![0f32; ns * c];
        self.rms_backward(&dmem, &s.enc_last, &s.enc_final, self.final_ln[0], &mut dx);
        let enc_at = std::mem::take(&mut self.enc);
        for l in (0..enc_at.len()).rev() {
            let (at, acts) = (&enc_at[l], &s.enc[l]);
            self.ff_backward(
                &at.ff,
                &acts.x[1],
                &acts.ff,
                &mut dx,
                drops.at(0, l, FF_ACT),
                drops.at(0, l, FF_OUT),
                scratch,
            );
            self.self_backward(
                0,
                l,
                &at.attn,
                &acts.x[0],
                &acts.attn,
                &s.src_spans,
                &s.enc_grids,
                &mut dx,
                drops,
                scratch,
            );
        }
        self.enc = enc_at;
        let srcs: Vec<&[u32]> = pairs.iter().map(|p| p.0).collect();
        self.embed_backward(&srcs, &mut dx, drops.at(0, STACK, EMB));
    }

    /// The embedding rows' gradients from `dx` (the gradient after the embeddings'
    /// dropout).
    fn embed_backward(&mut self, seqs: &[&[u32]], dx: &mut [f32], drop: Option<Dropout>) {
        drop_in_place(dx, drop);
        let c = self.config.d_model;
        let g = &mut self.flat.grads[self.shared..];
        for (row, &id) in dx.chunks(c).zip(seqs.iter().flat_map(|s| s.iter())) {
            g[id as usize * c..][..c]
                .iter_mut()
                .zip(row)
                .for_each(|(g, d)| *g += d);
        }
    }
}

super::flat::trainable_by_flat!(NativeT5);

impl Passes for NativeT5 {
    type Saved = Saved;
    type Drops = Drops;
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn check(&self, pairs: Pairs) -> Result<()> {
        super::seq2seq::check_pairs(pairs, self.config.vocab_size, None)
    }
    fn drops(&self, seed: Option<u64>) -> Drops {
        Drops(seed.and_then(|s| Dropout::new(self.config.dropout_rate, s)))
    }
    fn forward(&self, pairs: Pairs, drops: Drops, scratch: &mut Scratch) -> Forward<Self> {
        self.forward_pass(pairs, drops, scratch)
    }
    fn backward(&mut self, pairs: Pairs, fwd: Forward<Self>, d: Drops, s: &mut Scratch) {
        self.backward_pass(pairs, fwd.0, fwd.1, d, s)
    }
    /// The activations are not pooled: dropped.
    fn give(_: Saved, _: &mut Scratch) {}
    fn scratch(&mut self) -> &mut Scratch {
        &mut self.scratch
    }
}
