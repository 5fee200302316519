//! Marian's training step on the engine's kernels: the encoder-decoder forward over a
//! ragged batch of sentence pairs (no padding computed: each source sentence attends
//! over its own tokens, each target over its own earlier tokens and its own source),
//! label-smoothed cross-entropy over every target token, the backward pass, and AdamW,
//! with parameters, gradients and moments in flat buffers under Hugging Face's names.
//!
//! The sublayers are `engine::sublayers`' (the same as BERT's); the shared embedding is
//! the token table of both stacks (scaled by √d, its padding row getting no gradient
//! from the lookup, as `padding_idx` makes transformers do) and the output head, with
//! `final_logits_bias` added (trained here; transformers keeps it as a buffer).
//! Dropout follows transformers' places: the embeddings' output, every sublayer's
//! output before its residual sum, the attention weights and the MLP's activation.
//! Checked against transformers' loss and every parameter gradient
//! (`tests/engine_parity.rs`).
//!
//! Why one file of this length: the stack's forward and backward are read side by side,
//! as in `train/native.rs`.

use std::path::Path;

use super::encdec::{Forward, Pairs, Passes};
use super::flat::Flat;
use crate::engine::io::Plain;
use crate::engine::seq2seq::{is_tied_copy, sinusoid_table};
use crate::engine::sublayers::{
    attn_backward, attn_forward, drop_in_place, head_jobs, linear, linear_backward, mlp_backward,
    mlp_forward, spans_of, wgrads, Act, AttnActs, Dims, MlpActs, MlpAt, PostAt, Scratch,
};
use crate::kernels::cpu::Dropout;
use crate::models::marian::MarianConfig;
use crate::{Error, Result};

/// A self-attention sublayer: query, key and value weights stacked `[3c, c]` (biases
/// likewise), then the output projection and norm.
struct SelfAt {
    qkv_w: usize,
    qkv_b: usize,
    post: PostAt,
}

/// A cross-attention sublayer: the query projection, the key and value weights stacked
/// `[2c, c]` (biases likewise), then the output projection and norm.
struct CrossAt {
    q_w: usize,
    q_b: usize,
    kv_w: usize,
    kv_b: usize,
    post: PostAt,
}

struct EncAt {
    attn: SelfAt,
    mlp: MlpAt,
}

struct DecAt {
    attn: SelfAt,
    cross: CrossAt,
    mlp: MlpAt,
}

#[derive(Clone, Copy)]
enum Init {
    Normal,
    Zeros,
    Ones,
}

/// Every tensor in buffer order, with its shape and its initial values when drawn.
fn schema(cfg: &MarianConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (c, v) = (cfg.d_model, cfg.vocab_size);
    let mut s = vec![
        ("model.shared.weight".to_string(), vec![v, c], Init::Normal),
        ("final_logits_bias".to_string(), vec![1, v], Init::Zeros),
    ];
    let lin = |s: &mut Vec<_>, names: &[String], rows: usize, cols: usize| {
        for n in names {
            s.push((format!("{n}.weight"), vec![rows, cols], Init::Normal));
        }
        for n in names {
            s.push((format!("{n}.bias"), vec![rows], Init::Zeros));
        }
    };
    let norm = |s: &mut Vec<(String, Vec<usize>, Init)>, name: String| {
        s.push((format!("{name}.weight"), vec![c], Init::Ones));
        s.push((format!("{name}.bias"), vec![c], Init::Zeros));
    };
    let stacks = [
        ("encoder", cfg.encoder_layers, cfg.encoder_ffn_dim),
        ("decoder", cfg.decoder_layers, cfg.decoder_ffn_dim),
    ];
    for (stack, layers, inner) in stacks {
        for l in 0..layers {
            let p = format!("model.{stack}.layers.{l}");
            let a = format!("{p}.self_attn");
            let qkv = [
                format!("{a}.q_proj"),
                format!("{a}.k_proj"),
                format!("{a}.v_proj"),
            ];
            lin(&mut s, &qkv, c, c);
            lin(&mut s, &[format!("{a}.out_proj")], c, c);
            norm(&mut s, format!("{p}.self_attn_layer_norm"));
            if stack == "decoder" {
                let e = format!("{p}.encoder_attn");
                lin(&mut s, &[format!("{e}.q_proj")], c, c);
                lin(
                    &mut s,
                    &[format!("{e}.k_proj"), format!("{e}.v_proj")],
                    c,
                    c,
                );
                lin(&mut s, &[format!("{e}.out_proj")], c, c);
                norm(&mut s, format!("{p}.encoder_attn_layer_norm"));
            }
            lin(&mut s, &[format!("{p}.fc1")], inner, c);
            lin(&mut s, &[format!("{p}.fc2")], c, inner);
            norm(&mut s, format!("{p}.final_layer_norm"));
        }
    }
    s
}

/// The dropout of one step (none when evaluating).
#[derive(Clone, Copy, Default)]
pub(crate) struct Drops {
    hidden: Option<Dropout>,
    attn: Option<Dropout>,
    act: Option<Dropout>,
}

/// The places dropout applies in a layer (or, `Emb`, after the embeddings).
#[derive(Clone, Copy)]
enum Site {
    Emb,
    SelfOut,
    CrossOut,
    MlpOut,
}

impl Drops {
    /// Stack 0 is the encoder, 1 the decoder.
    fn hidden(&self, stack: u64, l: usize, site: Site) -> Option<Dropout> {
        self.hidden
            .map(|d| d.site((stack << 40) | ((l as u64) << 8) | site as u64))
    }
    fn act(&self, stack: u64, l: usize) -> Option<Dropout> {
        self.act.map(|d| d.site((stack << 40) | ((l as u64) << 8)))
    }
    /// Head `h` of sequence `s` in a layer's self- (`cross` false) or cross-attention.
    fn head(&self, stack: u64, l: usize, cross: bool, s: usize, h: usize) -> Option<Dropout> {
        self.attn.map(|d| {
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

/// One encoder or decoder layer's activations.
struct LayerActs {
    qkv: Vec<f32>,
    attn: AttnActs,
    /// The self-attention sublayer's output.
    h1: Vec<f32>,
    /// Decoder only.
    cross: Option<CrossActs>,
    mlp: MlpActs,
}

/// A decoder layer's cross-attention: its queries `[n, c]`, the source's keys and
/// values `[m, 2c]`, the sublayer's activations and its output.
struct CrossActs {
    q: Vec<f32>,
    kv: Vec<f32>,
    acts: AttnActs,
    out: Vec<f32>,
}

/// The activations of one forward pass that the backward pass reads.
pub(crate) struct Saved {
    /// The decoder's input ids (start token, then each target but its last token).
    dec_in: Vec<Vec<u32>>,
    src_spans: Vec<(usize, usize)>,
    tgt_spans: Vec<(usize, usize)>,
    /// Each encoder layer's input and the encoder's output; likewise the decoder's.
    enc_x: Vec<Vec<f32>>,
    dec_x: Vec<Vec<f32>>,
    enc: Vec<LayerActs>,
    dec: Vec<LayerActs>,
}

/// A Marian model's parameters, gradients and AdamW moments.
pub struct NativeSeq2Seq {
    pub config: MarianConfig,
    /// Parameters, gradients and moments under Hugging Face's names.
    flat: Flat,
    shared: usize,
    bias: usize,
    enc: Vec<EncAt>,
    dec: Vec<DecAt>,
    positions: Vec<f32>,
    scratch: Scratch,
    act: Act,
    /// The padding row of the embedding gets no gradient at all ([`Self::freeze_pad_row`]).
    pad_frozen: bool,
}

impl NativeSeq2Seq {
    /// Keep the embedding's padding row as it is (zero after [`Self::init`]): it is
    /// Marian's decoder start, a zero vector in Marian's own models (and in
    /// CTranslate2), and never a target. Without this only the lookup leaves it alone
    /// (transformers' `padding_idx`); the tied head still trains it.
    pub fn freeze_pad_row(&mut self) {
        self.pad_frozen = true;
    }

    /// Load a `MarianMTModel` folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let config = crate::engine::seq2seq::read_marian_config(dir)?;
        super::flat::read_folder(dir, is_tied_copy, |t| Self::from_plain(config, t))
    }

    /// A model with weights drawn as transformers initialises Marian: N(0, 0.02) for
    /// matrices and the embedding (its padding row zero), zero biases, unit norms.
    pub fn init(config: MarianConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut plain = super::flat::draw(schema(&config), seed, |init, rng| match init {
            Init::Normal => (rng.normal() * 0.02) as f32,
            Init::Ones => 1.0,
            Init::Zeros => 0.0,
        })?;
        let (c, pad) = (config.d_model, config.pad_token_id as usize);
        if let Some((e, _)) = plain.get_mut("model.shared.weight") {
            e[pad * c..(pad + 1) * c].iter_mut().for_each(|x| *x = 0.0);
        }
        Self::from_plain(config, plain)
    }

    fn from_plain(config: MarianConfig, t: Plain) -> Result<Self> {
        config.validate()?;
        let act = Act::of_marian(&config.activation_function)?;
        for (stack, layers) in [
            ("encoder", config.encoder_layers),
            ("decoder", config.decoder_layers),
        ] {
            super::flat::layers_present(&t, layers, |l| {
                format!("model.{stack}.layers.{l}.self_attn.q_proj.weight")
            })?;
        }
        let (flat, at) = Flat::from_schema(schema(&config).into_iter().map(|(n, s, _)| (n, s)), t)?;
        let of = |n: String| at[&n];
        let post = |attn: &str, norm: &str| PostAt {
            proj_w: of(format!("{attn}.out_proj.weight")),
            proj_b: of(format!("{attn}.out_proj.bias")),
            ln_w: of(format!("{norm}.weight")),
            ln_b: of(format!("{norm}.bias")),
        };
        let self_at = |p: &str| SelfAt {
            qkv_w: of(format!("{p}.self_attn.q_proj.weight")),
            qkv_b: of(format!("{p}.self_attn.q_proj.bias")),
            post: post(
                &format!("{p}.self_attn"),
                &format!("{p}.self_attn_layer_norm"),
            ),
        };
        let mlp_at = |p: &str, inner: usize| MlpAt {
            up_w: of(format!("{p}.fc1.weight")),
            up_b: of(format!("{p}.fc1.bias")),
            down_w: of(format!("{p}.fc2.weight")),
            down_b: of(format!("{p}.fc2.bias")),
            ln_w: of(format!("{p}.final_layer_norm.weight")),
            ln_b: of(format!("{p}.final_layer_norm.bias")),
            inner,
        };
        let enc = (0..config.encoder_layers)
            .map(|l| {
                let p = format!("model.encoder.layers.{l}");
                EncAt {
                    attn: self_at(&p),
                    mlp: mlp_at(&p, config.encoder_ffn_dim),
                }
            })
            .collect();
        let dec = (0..config.decoder_layers)
            .map(|l| {
                let p = format!("model.decoder.layers.{l}");
                let e = format!("{p}.encoder_attn");
                DecAt {
                    attn: self_at(&p),
                    cross: CrossAt {
                        q_w: of(format!("{e}.q_proj.weight")),
                        q_b: of(format!("{e}.q_proj.bias")),
                        kv_w: of(format!("{e}.k_proj.weight")),
                        kv_b: of(format!("{e}.k_proj.bias")),
                        post: post(&e, &format!("{p}.encoder_attn_layer_norm")),
                    },
                    mlp: mlp_at(&p, config.decoder_ffn_dim),
                }
            })
            .collect();
        let positions = sinusoid_table(config.max_position_embeddings, config.d_model)?;
        Ok(NativeSeq2Seq {
            shared: at["model.shared.weight"],
            bias: at["final_logits_bias"],
            flat,
            enc,
            dec,
            positions,
            scratch: Scratch::default(),
            act,
            pad_frozen: false,
            config,
        })
    }

    fn dims(&self, decoder: bool) -> Dims {
        let c = &self.config;
        Dims {
            c: c.d_model,
            nh: if decoder {
                c.decoder_attention_heads
            } else {
                c.encoder_attention_heads
            },
            eps: 1e-5,
        }
    }

    super::flat::flat_accessors!();

    /// The model as the inference engine runs it (beam search).
    pub fn to_engine(&self) -> Result<crate::engine::Seq2Seq> {
        crate::engine::Seq2Seq::from_tensors(self.config.clone(), self.tensors())
    }

    fn dropout(&self, seed: Option<u64>) -> Drops {
        let c = &self.config;
        let at = |p: f32, site: u64| seed.and_then(|s| Dropout::new(p, s).map(|d| d.site(site)));
        Drops {
            hidden: at(c.dropout, 1),
            attn: at(c.attention_dropout, 2),
            act: at(c.activation_dropout, 3),
        }
    }

    /// Scaled token embeddings plus positions, then the embeddings' dropout.
    fn embed(
        &self,
        seqs: &[&[u32]],
        n: usize,
        drop: Option<Dropout>,
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let c = self.config.d_model;
        let scale = self.embed_scale();
        let w = &self.flat.params[self.shared..];
        let mut x = scratch.pool.take_written(n * c);
        let mut rows = x.chunks_mut(c);
        for s in seqs {
            for (j, &id) in s.iter().enumerate() {
                let row = rows.next().expect("one row per token");
                let e = &w[id as usize * c..][..c];
                let p = &self.positions[j * c..][..c];
                for i in 0..c {
                    row[i] = e[i] * scale + p[i];
                }
            }
        }
        drop_in_place(&mut x, drop);
        x
    }

    fn embed_scale(&self) -> f32 {
        if self.config.scale_embedding {
            (self.config.d_model as f32).sqrt()
        } else {
            1.0
        }
    }

    /// The decoder's inputs: the start token, then each target without its last token.
    fn decoder_inputs(&self, pairs: &[(&[u32], &[u32])]) -> Vec<Vec<u32>> {
        let start = self.config.decoder_start_token_id;
        pairs
            .iter()
            .map(|(_, t)| {
                std::iter::once(start)
                    .chain(t[..t.len() - 1].iter().copied())
                    .collect()
            })
            .collect()
    }

    /// Self-attention sublayer of layer `l` (stack 0 encoder, 1 decoder): the
    /// projections, then [`attn_forward`].
    #[allow(clippy::too_many_arguments)]
    fn self_attn(
        &self,
        stack: u64,
        l: usize,
        at: &SelfAt,
        x: &[f32],
        spans: &[(usize, usize)],
        drops: Drops,
        scratch: &mut Scratch,
    ) -> (Vec<f32>, AttnActs, Vec<f32>) {
        let d = self.dims(stack == 1);
        let (c, w) = (d.c, &self.flat.params);
        let n = x.len() / c;
        let mut qkv = scratch.pool.take_written(n * 3 * c);
        linear(
            x,
            n,
            &w[at.qkv_w..at.qkv_w + 3 * c * c],
            &w[at.qkv_b..at.qkv_b + 3 * c],
            &mut qkv,
            &mut scratch.panels,
        );
        let jobs = head_jobs(d, spans, None, stack == 1, |s, h| {
            drops.head(stack, l, false, s, h)
        });
        let (acts, out) = attn_forward(
            d,
            at.post.weights(w, c),
            x,
            &qkv,
            &qkv,
            &jobs,
            drops.hidden(stack, l, Site::SelfOut),
            scratch,
            true,
        );
        (qkv, acts, out)
    }

    #[allow(clippy::type_complexity)]
    fn forward_pass(
        &self,
        pairs: &[(&[u32], &[u32])],
        drops: Drops,
        scratch: &mut Scratch,
    ) -> Forward<Self> {
        let cfg = &self.config;
        let (c, v) = (cfg.d_model, cfg.vocab_size);
        let w = &self.flat.params;
        let srcs: Vec<&[u32]> = pairs.iter().map(|p| p.0).collect();
        let dec_in = self.decoder_inputs(pairs);
        let dec_refs: Vec<&[u32]> = dec_in.iter().map(|s| s.as_slice()).collect();
        let (src_spans, ns) = spans_of(&srcs);
        let (tgt_spans, nt) = spans_of(&dec_refs);
        let de = self.dims(false);
        let mut enc_x = vec![self.embed(&srcs, ns, drops.hidden(0, 0, Site::Emb), scratch)];
        let mut enc = Vec::with_capacity(self.enc.len());
        for (l, at) in self.enc.iter().enumerate() {
            let x = enc_x.last().unwrap();
            let (qkv, attn, h1) = self.self_attn(0, l, &at.attn, x, &src_spans, drops, scratch);
            let (mlp, out) = mlp_forward(
                de,
                at.mlp.weights(w, c),
                self.act,
                &h1,
                drops.act(0, l),
                drops.hidden(0, l, Site::MlpOut),
                scratch,
                true,
            );
            enc.push(LayerActs {
                qkv,
                attn,
                h1,
                cross: None,
                mlp,
            });
            enc_x.push(out);
        }
        let memory = enc_x.last().unwrap();
        let dd = self.dims(true);
        let mut dec_x = vec![self.embed(&dec_refs, nt, drops.hidden(1, 0, Site::Emb), scratch)];
        let mut dec = Vec::with_capacity(self.dec.len());
        for (l, at) in self.dec.iter().enumerate() {
            let x = dec_x.last().unwrap();
            let (qkv, attn, h1) = self.self_attn(1, l, &at.attn, x, &tgt_spans, drops, scratch);
            let cr = &at.cross;
            let mut q = scratch.pool.take_written(nt * c);
            linear(
                &h1,
                nt,
                &w[cr.q_w..cr.q_w + c * c],
                &w[cr.q_b..cr.q_b + c],
                &mut q,
                &mut scratch.panels,
            );
            let mut kv = scratch.pool.take_written(ns * 2 * c);
            linear(
                memory,
                ns,
                &w[cr.kv_w..cr.kv_w + 2 * c * c],
                &w[cr.kv_b..cr.kv_b + 2 * c],
                &mut kv,
                &mut scratch.panels,
            );
            let jobs = head_jobs(dd, &tgt_spans, Some(&src_spans), false, |s, h| {
                drops.head(1, l, true, s, h)
            });
            let (cacts, h2) = attn_forward(
                dd,
                cr.post.weights(w, c),
                &h1,
                &q,
                &kv,
                &jobs,
                drops.hidden(1, l, Site::CrossOut),
                scratch,
                true,
            );
            let (mlp, out) = mlp_forward(
                dd,
                at.mlp.weights(w, c),
                self.act,
                &h2,
                drops.act(1, l),
                drops.hidden(1, l, Site::MlpOut),
                scratch,
                true,
            );
            dec.push(LayerActs {
                qkv,
                attn,
                h1,
                cross: Some(CrossActs {
                    q,
                    kv,
                    acts: cacts,
                    out: h2,
                }),
                mlp,
            });
            dec_x.push(out);
        }
        let mut logits = scratch.pool.take_written(nt * v);
        linear(
            dec_x.last().unwrap(),
            nt,
            &w[self.shared..self.shared + v * c],
            &w[self.bias..self.bias + v],
            &mut logits,
            &mut scratch.panels,
        );
        let targets: Vec<u32> = pairs.iter().flat_map(|p| p.1.iter().copied()).collect();
        (
            Saved {
                dec_in,
                src_spans,
                tgt_spans,
                enc_x,
                dec_x,
                enc,
                dec,
            },
            logits,
            targets,
        )
    }

    fn give_back(s: Saved, scratch: &mut Scratch) {
        for v in s.enc_x.into_iter().chain(s.dec_x) {
            scratch.pool.give(v);
        }
        for a in s.enc.into_iter().chain(s.dec) {
            a.attn.give(&mut scratch.pool);
            a.mlp.give(&mut scratch.pool);
            for v in [a.qkv, a.h1] {
                scratch.pool.give(v);
            }
            if let Some(CrossActs {
                q,
                kv,
                acts,
                out: h2,
            }) = a.cross
            {
                acts.give(&mut scratch.pool);
                for v in [q, kv, h2] {
                    scratch.pool.give(v);
                }
            }
        }
    }

    /// Gradients of a stack's embeddings: `dx` (after the embeddings' dropout) into the
    /// shared table's rows, scaled; the padding row gets none.
    fn embed_backward(&mut self, seqs: &[&[u32]], dx: &mut [f32], drop: Option<Dropout>) {
        drop_in_place(dx, drop);
        let c = self.config.d_model;
        let (scale, pad) = (self.embed_scale(), self.config.pad_token_id);
        let g = &mut self.flat.grads[self.shared..];
        for (row, &id) in dx.chunks(c).zip(seqs.iter().flat_map(|s| s.iter())) {
            if id == pad {
                continue;
            }
            g[id as usize * c..][..c]
                .iter_mut()
                .zip(row)
                .for_each(|(g, d)| *g += d * scale);
        }
    }

    /// Backward of a self-attention sublayer from the gradient of its output; returns
    /// the gradient of its input.
    #[allow(clippy::too_many_arguments)]
    fn self_attn_backward(
        &mut self,
        stack: u64,
        l: usize,
        dout: &[f32],
        x: &[f32],
        a: &LayerActs,
        spans: &[(usize, usize)],
        drops: Drops,
        scratch: &mut Scratch,
    ) -> Vec<f32> {
        let d = self.dims(stack == 1);
        let c = d.c;
        let n = x.len() / c;
        let at = if stack == 1 {
            &self.dec[l].attn
        } else {
            &self.enc[l].attn
        };
        let (w, g) = (&self.flat.params, &mut self.flat.grads);
        let jobs = head_jobs(d, spans, None, stack == 1, |s, h| {
            drops.head(stack, l, false, s, h)
        });
        let mut dqkv = scratch.pool.take(n * 3 * c);
        let mut junk = [0f32; 0];
        let dres = attn_backward(
            w,
            g,
            &mut junk,
            false,
            d,
            &at.post,
            dout,
            &a.attn,
            &a.qkv,
            &a.qkv,
            &jobs,
            drops.hidden(stack, l, Site::SelfOut),
            scratch,
            &mut dqkv,
            None,
        );
        let mut dx = scratch.pool.take(n * c);
        linear_backward(
            &dqkv,
            x,
            n,
            &w[at.qkv_w..at.qkv_w + 3 * c * c],
            3 * c,
            wgrads(g, false, (at.qkv_w, 3 * c * c), (at.qkv_b, 3 * c)),
            Some(&mut dx),
            scratch,
        );
        dx.iter_mut().zip(&dres).for_each(|(d, r)| *d += r);
        scratch.pool.give(dqkv);
        scratch.pool.give(dres);
        dx
    }

    fn backward_pass(
        &mut self,
        pairs: &[(&[u32], &[u32])],
        s: Saved,
        dlogits: Vec<f32>,
        drops: Drops,
        scratch: &mut Scratch,
    ) {
        let (c, v) = (self.config.d_model, self.config.vocab_size);
        let (ns, nt) = (s.enc_x[0].len() / c, s.dec_x[0].len() / c);
        let mut junk = [0f32; 0];
        // The head, tied to the embedding: dW += dlogitsᵀ·h, dbias += Σ dlogits.
        let mut dx = scratch.pool.take(nt * c);
        {
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            linear_backward(
                &dlogits,
                s.dec_x.last().unwrap(),
                nt,
                &w[self.shared..self.shared + v * c],
                v,
                wgrads(g, false, (self.shared, v * c), (self.bias, v)),
                Some(&mut dx),
                scratch,
            );
        }
        scratch.pool.give(dlogits);
        let memory = s.enc_x.last().unwrap();
        let mut dmem = scratch.pool.take(ns * c);
        let dd = self.dims(true);
        for l in (0..self.dec.len()).rev() {
            let a = &s.dec[l];
            let CrossActs {
                q,
                kv,
                acts: cacts,
                out: h2,
            } = a.cross.as_ref().expect("decoder layers cross-attend");
            let dh2 = {
                let at = &self.dec[l];
                mlp_backward(
                    &self.flat.params,
                    &mut self.flat.grads,
                    &mut junk,
                    false,
                    dd,
                    &at.mlp,
                    &dx,
                    h2,
                    &a.mlp,
                    drops.act(1, l),
                    drops.hidden(1, l, Site::MlpOut),
                    scratch,
                )
            };
            let jobs = head_jobs(dd, &s.tgt_spans, Some(&s.src_spans), false, |q, h| {
                drops.head(1, l, true, q, h)
            });
            let mut dq = scratch.pool.take(nt * c);
            let mut dkv = scratch.pool.take(ns * 2 * c);
            let cr = &self.dec[l].cross;
            let (w, g) = (&self.flat.params, &mut self.flat.grads);
            let dres = attn_backward(
                w,
                g,
                &mut junk,
                false,
                dd,
                &cr.post,
                &dh2,
                cacts,
                q,
                kv,
                &jobs,
                drops.hidden(1, l, Site::CrossOut),
                scratch,
                &mut dq,
                Some(&mut dkv),
            );
            let mut dh1 = scratch.pool.take(nt * c);
            linear_backward(
                &dq,
                &a.h1,
                nt,
                &w[cr.q_w..cr.q_w + c * c],
                c,
                wgrads(g, false, (cr.q_w, c * c), (cr.q_b, c)),
                Some(&mut dh1),
                scratch,
            );
            dh1.iter_mut().zip(&dres).for_each(|(d, r)| *d += r);
            let mut dm = scratch.pool.take(ns * c);
            linear_backward(
                &dkv,
                memory,
                ns,
                &w[cr.kv_w..cr.kv_w + 2 * c * c],
                2 * c,
                wgrads(g, false, (cr.kv_w, 2 * c * c), (cr.kv_b, 2 * c)),
                Some(&mut dm),
                scratch,
            );
            dmem.iter_mut().zip(&dm).for_each(|(d, x)| *d += x);
            let dxl =
                self.self_attn_backward(1, l, &dh1, &s.dec_x[l], a, &s.tgt_spans, drops, scratch);
            for b in [dh2, dq, dkv, dres, dh1, dm, std::mem::replace(&mut dx, dxl)] {
                scratch.pool.give(b);
            }
        }
        let dec_refs: Vec<&[u32]> = s.dec_in.iter().map(|s| s.as_slice()).collect();
        self.embed_backward(&dec_refs, &mut dx, drops.hidden(1, 0, Site::Emb));
        scratch.pool.give(dx);
        let de = self.dims(false);
        let mut dx = dmem;
        for l in (0..self.enc.len()).rev() {
            let a = &s.enc[l];
            let dh1 = {
                let at = &self.enc[l];
                mlp_backward(
                    &self.flat.params,
                    &mut self.flat.grads,
                    &mut junk,
                    false,
                    de,
                    &at.mlp,
                    &dx,
                    &a.h1,
                    &a.mlp,
                    drops.act(0, l),
                    drops.hidden(0, l, Site::MlpOut),
                    scratch,
                )
            };
            let dxl =
                self.self_attn_backward(0, l, &dh1, &s.enc_x[l], a, &s.src_spans, drops, scratch);
            scratch.pool.give(dh1);
            scratch.pool.give(std::mem::replace(&mut dx, dxl));
        }
        let srcs: Vec<&[u32]> = pairs.iter().map(|p| p.0).collect();
        self.embed_backward(&srcs, &mut dx, drops.hidden(0, 0, Site::Emb));
        scratch.pool.give(dx);
        Self::give(s, scratch);
        if self.pad_frozen {
            let (c, pad) = (self.config.d_model, self.config.pad_token_id as usize);
            let at = self.shared + pad * c;
            self.flat.grads[at..at + c]
                .iter_mut()
                .for_each(|g| *g = 0.0);
        }
    }
}

super::flat::trainable_by_flat!(NativeSeq2Seq);

/// Sentence pairs an encoder-decoder can train on: every side has tokens, inside the
/// vocabulary of `v` and, with positions of their own, within `max` of them.
pub(crate) fn check_pairs(pairs: &[(&[u32], &[u32])], v: usize, max: Option<usize>) -> Result<()> {
    for (side, seqs) in [
        ("source", pairs.iter().map(|p| p.0).collect::<Vec<_>>()),
        ("target", pairs.iter().map(|p| p.1).collect()),
    ] {
        for s in seqs {
            if s.is_empty() {
                return Err(Error::invalid(side, "a sentence was given no tokens"));
            }
            if let Some(max) = max {
                crate::engine::check_positions(s.len(), max)?;
            }
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= v) {
                return Err(Error::invalid(
                    side,
                    format!("id {bad} is outside the vocabulary of {v}"),
                ));
            }
        }
    }
    Ok(())
}

impl Passes for NativeSeq2Seq {
    type Saved = Saved;
    type Drops = Drops;
    fn vocab(&self) -> usize {
        self.config.vocab_size
    }
    fn check(&self, pairs: Pairs) -> Result<()> {
        let c = &self.config;
        check_pairs(pairs, c.vocab_size, Some(c.max_position_embeddings))
    }
    fn drops(&self, seed: Option<u64>) -> Drops {
        self.dropout(seed)
    }
    fn forward(&self, pairs: Pairs, drops: Drops, scratch: &mut Scratch) -> Forward<Self> {
        self.forward_pass(pairs, drops, scratch)
    }
    fn backward(&mut self, pairs: Pairs, fwd: Forward<Self>, d: Drops, s: &mut Scratch) {
        self.backward_pass(pairs, fwd.0, fwd.1, d, s)
    }
    fn give(saved: Saved, scratch: &mut Scratch) {
        NativeSeq2Seq::give_back(saved, scratch)
    }
    fn scratch(&mut self) -> &mut Scratch {
        &mut self.scratch
    }
}
