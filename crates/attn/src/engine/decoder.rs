//! The decoder stack for inference on the CPU: embeddings (plus learned positions),
//! pre-norm blocks of causal self-attention (rotary positions and grouped key/value
//! heads where the spec says so) and an MLP (GELU or SwiGLU), a final norm and the head.
//! The blocks are `engine::block`'s, which the trainer runs too; what is this file's
//! own is the attention against the caches. Weights are stored for the product (f32
//! panels, f16, or 8- and 4-bit blocks); each sequence keeps its keys and values in a
//! cache that grows in place, and one forward pass serves a ragged batch (a prompt, one
//! new token for each of several sequences, or both at once).
//!
//! The tests check the logits against transformers' for GPT-2 and Llama fixtures.

use rayon::prelude::*;

use super::block::{self, NormW};
use super::sublayers::{MlpW, TailW};
use super::{DecoderSpec, Gate, Mlp, Positions};
use crate::kernels::cpu::attend::{attend_head, Span};
use crate::kernels::cpu::quant::{matmul, QMatrix, WeightType};
use crate::kernels::cpu::rope::RopeTable;
use crate::kernels::cpu::vmath;
use crate::kernels::cpu::{Heads, Rhs};
use crate::{Error, Result};

pub(crate) struct Norm {
    pub w: Vec<f32>,
    pub b: Option<Vec<f32>>,
}

impl Norm {
    pub(crate) fn weights(&self) -> NormW<'_> {
        NormW {
            w: &self.w,
            b: self.b.as_deref(),
        }
    }

    /// Normalise each `w.len()`-long row of `x` into `out`.
    pub(crate) fn apply(&self, x: &[f32], out: &mut [f32], eps: f32) {
        let c = self.w.len();
        crate::kernels::cpu::for_rows(out, c, |start, out| {
            let x = &x[start * c..start * c + out.len()];
            for (xr, or) in x.chunks(c).zip(out.chunks_mut(c)) {
                match &self.b {
                    Some(b) => {
                        vmath::layer_norm(xr, &self.w, b, eps, or);
                    }
                    None => {
                        vmath::rms_norm(xr, &self.w, eps, or);
                    }
                }
            }
        });
    }
}

/// A weight matrix `[out, in]` and its bias.
pub(crate) struct Linear {
    pub w: QMatrix,
    pub b: Option<Vec<f32>>,
}

impl Linear {
    pub(crate) fn apply(&self, x: &[f32], n: usize, out: &mut [f32]) {
        matmul(x, n, &self.w, self.b.as_deref(), out);
    }
}

/// The MLP's activation, from `f` (`[n, up_rows]`) into `m` (`[n, inner]`); in place
/// (`m` unused) for the one-matrix MLPs.
pub(crate) fn activate(mlp: Mlp, inner: usize, f: &mut [f32], m: &mut [f32]) {
    match mlp {
        Mlp::Relu => {
            crate::kernels::cpu::for_rows(f, 1, |_, xs| xs.iter_mut().for_each(|v| *v = v.max(0.0)))
        }
        Mlp::GeluErf => crate::kernels::cpu::for_rows(f, 1, |_, xs| vmath::gelu_erf(xs)),
        Mlp::GeluTanh => crate::kernels::cpu::for_rows(f, 1, |_, xs| vmath::gelu_tanh(xs)),
        Mlp::Silu => crate::kernels::cpu::for_rows(f, 1, |_, xs| vmath::silu(xs)),
        Mlp::SwiGlu => crate::kernels::cpu::for_rows(m, inner, |start, out| {
            for (r, o) in out.chunks_mut(inner).enumerate() {
                let row = &f[(start + r) * 2 * inner..][..2 * inner];
                vmath::silu_mul(&row[..inner], &row[inner..], o);
            }
        }),
        Mlp::Gated(gate) => crate::kernels::cpu::for_rows(m, inner, |start, out| {
            for (r, o) in out.chunks_mut(inner).enumerate() {
                let row = &f[(start + r) * 2 * inner..][..2 * inner];
                o.copy_from_slice(&row[..inner]);
                match gate {
                    Gate::Relu => o.iter_mut().for_each(|v| *v = v.max(0.0)),
                    Gate::GeluErf => vmath::gelu_erf(o),
                    Gate::GeluTanh => vmath::gelu_tanh(o),
                }
                o.iter_mut().zip(&row[inner..]).for_each(|(a, u)| *a *= u);
            }
        }),
    }
}

/// One block's weights. The decoder applies `norm1` before attention and `norm2`
/// before the MLP (pre-norm); the encoder applies them after each residual sum.
pub(crate) struct Layer {
    pub norm1: Norm,
    /// Queries of every head, then keys, then values.
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: Norm,
    /// The MLP's first matrix (gate rows then up rows for SwiGLU).
    pub up: Linear,
    pub down: Linear,
}

impl Layer {
    /// The weights as a decoder block reads them.
    pub(crate) fn weights(&self) -> block::Weights<'_> {
        block::Weights {
            qkv: Rhs::Q(&self.qkv.w),
            qkv_b: self.qkv.b.as_deref(),
            proj: Rhs::Q(&self.proj.w),
            proj_b: self.proj.b.as_deref(),
            norm2: self.norm2.weights(),
            mlp: self.mlp_weights(),
        }
    }

    /// The MLP's products and biases, as a block's MLP sublayer reads them.
    pub(crate) fn mlp_weights(&self) -> block::MlpWeights<'_> {
        block::MlpWeights {
            up: Rhs::Q(&self.up.w),
            up_b: self.up.b.as_deref(),
            down: Rhs::Q(&self.down.w),
            down_b: self.down.b.as_deref(),
        }
    }

    /// A post-norm block's attention tail: the projection, then `norm1` after the
    /// residual sum.
    pub(crate) fn attn_tail(&self) -> TailW<'_> {
        post_norm_tail(&self.proj, &self.norm1)
    }
    /// A post-norm block's MLP: `up`, then `down` and `norm2` after the residual sum.
    pub(crate) fn mlp(&self) -> MlpW<'_> {
        MlpW {
            up: Rhs::Q(&self.up.w),
            up_b: self.up.b.as_deref().expect(POST_NORM_BIASES),
            tail: post_norm_tail(&self.down, &self.norm2),
        }
    }
}

/// The post-norm families (BERT, RoBERTa, DistilBERT, Marian) load every bias.
const POST_NORM_BIASES: &str = "post-norm layers have biases and LayerNorms";

/// A post-norm sublayer's last product `lin` and the `norm` after its residual sum.
pub(crate) fn post_norm_tail<'a>(lin: &'a Linear, norm: &'a Norm) -> TailW<'a> {
    TailW {
        w: Rhs::Q(&lin.w),
        b: lin.b.as_deref().expect(POST_NORM_BIASES),
        ln_w: &norm.w,
        ln_b: norm.b.as_deref().expect(POST_NORM_BIASES),
    }
}

/// The keys and values of one sequence: per layer `[len, kv_width]`, heads side by side.
#[derive(Default, Clone)]
pub struct DecoderState {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) len: usize,
    /// Per layer, the positions dropped from the front of its cache: a layer with a
    /// sliding window forgets what no later query can see.
    pub(crate) dropped: Vec<usize>,
}

impl DecoderState {
    /// An empty cache for a stack of `layers` layers.
    pub(crate) fn with_layers(layers: usize) -> Self {
        DecoderState {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            len: 0,
            dropped: vec![0; layers],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position (the buffers are kept for reuse).
    pub fn clear(&mut self) {
        self.k
            .iter_mut()
            .chain(self.v.iter_mut())
            .for_each(Vec::clear);
        self.dropped.iter_mut().for_each(|d| *d = 0);
        self.len = 0;
    }

    /// The most positions any layer's cache holds (`len()` unless sliding windows let
    /// layers forget the oldest).
    pub fn cached(&self) -> usize {
        self.dropped.iter().map(|d| self.len - d).max().unwrap_or(0)
    }

    /// Forget, in each layer with a sliding window, the positions no later query can
    /// see (all but the last `window − 1`), once they are as many as the window: the
    /// cache stays under twice the window, and the copy is paid once per window.
    fn forget_outside(&mut self, windows: &[Option<usize>], kv_width: usize) {
        for (l, w) in windows.iter().enumerate() {
            let Some(w) = *w else { continue };
            let held = self.len - self.dropped[l];
            if held >= 2 * w {
                let drop = held - (w - 1);
                self.k[l].drain(..drop * kv_width);
                self.v[l].drain(..drop * kv_width);
                self.dropped[l] += drop;
            }
        }
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.capacity() * 4).sum()
    }
}

/// Which positions' logits [`Decoder::forward`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The last new position of each sequence: `[vocab]` each.
    Last,
    /// Every new position: `[t, vocab]` each.
    All,
    /// The final hidden states (after the last norm) of every new position:
    /// `[t, d_model]` each.
    Hidden,
}

/// Attention weights `[layer][head][query][key]`.
pub type AttentionMaps = Vec<Vec<Vec<Vec<f32>>>>;

/// A decoder-only model laid out for inference.
pub struct Decoder {
    pub spec: DecoderSpec,
    /// The config as Hugging Face writes it (saved back with the weights).
    pub(crate) hf_config: serde_json::Value,
    /// Token embedding `[vocab, d_model]` (also the head when tied).
    pub(crate) embed: QMatrix,
    /// Learned positions `[context, d_model]`.
    pub(crate) positions: Option<Vec<f32>>,
    pub(crate) rope: Option<RopeTable>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm_f: Norm,
    /// An untied head `[vocab, d_model]`.
    pub(crate) head: Option<QMatrix>,
}

impl Decoder {
    /// The weight type of the matrices.
    pub fn weight_type(&self) -> WeightType {
        self.embed.weight_type()
    }

    pub fn vocab_size(&self) -> usize {
        self.spec.vocab_size
    }

    pub fn context(&self) -> usize {
        self.spec.context
    }

    fn head_matrix(&self) -> &QMatrix {
        self.head.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of weights read to produce one token at batch 1: every matrix, one row of
    /// the embeddings, the norms and biases.
    pub fn weight_bytes_per_token(&self) -> usize {
        let c = self.spec.d_model;
        let vec_bytes = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, |v| 4 * v.len());
        let norm_bytes = |n: &Norm| 4 * n.w.len() + vec_bytes(&n.b);
        let mut total = self.head_matrix().bytes()
            + self.embed.weight_type().row_bytes(c)
            + norm_bytes(&self.norm_f);
        if self.positions.is_some() {
            total += 4 * c;
        }
        for l in &self.layers {
            for m in [&l.qkv, &l.proj, &l.up, &l.down] {
                total += m.w.bytes() + vec_bytes(&m.b);
            }
            total += norm_bytes(&l.norm1) + norm_bytes(&l.norm2);
        }
        total
    }

    pub fn new_state(&self) -> DecoderState {
        DecoderState::with_layers(self.spec.n_layer)
    }

    /// Run new tokens through the model: `tokens[s]` continues sequence `states[s]` (any
    /// lengths, at least one token each). Returns per sequence what `want` asks for.
    pub fn forward(
        &self,
        states: &mut [&mut DecoderState],
        tokens: &[&[u32]],
        want: Want,
    ) -> Result<Vec<Vec<f32>>> {
        self.run(states, tokens, want, None)
    }

    /// Attention weights of every layer and head for `ids` from an empty cache:
    /// `[layer][head][query][key]`, zero above the diagonal.
    pub fn attention_maps(&self, ids: &[u32]) -> Result<AttentionMaps> {
        let mut st = self.new_state();
        let mut maps = Vec::with_capacity(self.spec.n_layer);
        self.run(&mut [&mut st], &[ids], Want::Last, Some(&mut maps))?;
        Ok(maps)
    }

    fn check(&self, states: &[&mut DecoderState], tokens: &[&[u32]]) -> Result<()> {
        let spec = &self.spec;
        if states.len() != tokens.len() {
            return Err(Error::invalid(
                "tokens",
                "one token list per sequence is needed",
            ));
        }
        for (st, t) in states.iter().zip(tokens) {
            if t.is_empty() {
                return Err(Error::invalid("tokens", "a sequence was given no tokens"));
            }
            crate::engine::check_positions(st.len + t.len(), spec.context)?;
            if let Some(&bad) = t.iter().find(|&&id| id as usize >= spec.vocab_size) {
                return Err(Error::invalid(
                    "tokens",
                    format!("id {bad} is outside the vocabulary of {}", spec.vocab_size),
                ));
            }
            if st.k.len() != spec.n_layer {
                return Err(Error::invalid(
                    "state",
                    "was not made by this model's new_state",
                ));
            }
        }
        Ok(())
    }

    /// [`Self::run_in_pool`] on a thread of the rayon pool: the caller's thread would
    /// otherwise sleep and wake once per matrix product (dozens per token), which costs
    /// as much as a small product when decoding one token.
    fn run(
        &self,
        states: &mut [&mut DecoderState],
        tokens: &[&[u32]],
        want: Want,
        maps: Option<&mut AttentionMaps>,
    ) -> Result<Vec<Vec<f32>>> {
        crate::kernels::in_pool(|| self.run_in_pool(states, tokens, want, maps))
    }

    fn run_in_pool(
        &self,
        states: &mut [&mut DecoderState],
        tokens: &[&[u32]],
        want: Want,
        mut maps: Option<&mut AttentionMaps>,
    ) -> Result<Vec<Vec<f32>>> {
        self.check(states, tokens)?;
        let spec = &self.spec;
        let capture = maps.is_some();
        let c = spec.d_model;
        let (nh, hd) = (spec.n_head, spec.head_dim);
        let group = nh / spec.n_kv_head;
        let (qw, kvw, w) = (spec.q_width(), spec.kv_width(), spec.qkv_width());
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        // First row of each sequence in the batch.
        let first = super::row_starts(tokens.iter().map(|t| t.len()));
        // The position of each row (the same in every layer: the caches grow after).
        let pos_of: Vec<usize> = tokens
            .iter()
            .zip(states.iter())
            .flat_map(|(t, st)| (0..t.len()).map(move |j| st.len + j))
            .collect();
        // The rotary tables of sequences that dynamic scaling stretches (this call's
        // positions with the frequencies of the sequence's length after it, as
        // transformers computes them), and the sequence of each row; both empty when
        // no sequence is stretched, which is every call of every other model.
        let (stretched, seq_of): (Vec<Option<RopeTable>>, Vec<usize>) = match spec.positions {
            Positions::Rope(rope)
                if tokens
                    .iter()
                    .zip(states.iter())
                    .any(|(t, st)| rope.stretches(st.len + t.len())) =>
            {
                let tables = tokens
                    .iter()
                    .zip(states.iter())
                    .map(|(t, st)| {
                        let end = st.len + t.len();
                        rope.stretches(end)
                            .then(|| RopeTable::for_len(hd, st.len..end, end, &rope))
                    })
                    .collect();
                let seq_of = tokens
                    .iter()
                    .enumerate()
                    .flat_map(|(s, t)| std::iter::repeat_n(s, t.len()))
                    .collect();
                (tables, seq_of)
            }
            _ => (Vec::new(), Vec::new()),
        };
        let mut x = vec![0f32; n * c];
        for (s, t) in tokens.iter().enumerate() {
            for (j, &id) in t.iter().enumerate() {
                let row = &mut x[(first[s] + j) * c..(first[s] + j + 1) * c];
                self.embed.row_to_f32(id as usize, row);
                if let Some(table) = &self.positions {
                    let pos = pos_of[first[s] + j];
                    for (o, p) in row.iter_mut().zip(&table[pos * c..(pos + 1) * c]) {
                        *o += p;
                    }
                }
            }
        }
        let (inner, up_rows) = (spec.inner, spec.up_rows());
        let shape = block::Shape {
            c,
            heads: Heads {
                n: nh,
                kv: spec.n_kv_head,
                dim: hd,
            },
            inner,
            up: up_rows,
            mlp: spec.mlp,
            eps: spec.eps,
        };
        let mut bufs = block::Buffers::new(&shape, n);
        let first_norm = self.layers.first().map_or(&self.norm_f, |l| &l.norm1);
        bufs.first_norm(&x, first_norm.weights(), spec.eps, n);
        let scale = 1.0 / (hd as f32).sqrt();
        // Rows of x per sequence: all new positions, until the last layer narrows them.
        let mut rows_of: Vec<(usize, usize)> = first
            .iter()
            .zip(tokens)
            .map(|(&f, t)| (f, t.len()))
            .collect();
        for (l, layer) in self.layers.iter().enumerate() {
            // Only the last position of each sequence is asked for: after the last
            // layer's keys and values go into the caches, its attention output and MLP
            // are needed for those rows alone (a prompt's other rows would be discarded).
            let narrow =
                want == Want::Last && !capture && l + 1 == self.layers.len() && n > tokens.len();
            let kept = if narrow { tokens.len() } else { n };
            let window = spec.windows[l];
            // The residual rows of a narrowed block: each sequence's last.
            let last_rows: Vec<f32> = if narrow {
                rows_of
                    .iter()
                    .flat_map(|&(r, k)| &x[(r + k - 1) * c..(r + k) * c])
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            let maps = maps.as_deref_mut();
            let states = &mut *states;
            let attend = |qkv: &mut [f32], y: &mut [f32]| {
                if let Some(rope) = &self.rope {
                    // The queries and keys (side by side at the row's start) turn; the
                    // values do not.
                    crate::kernels::cpu::for_rows(qkv, w, |start, rows| {
                        for (r, row) in rows.chunks_mut(w).enumerate() {
                            let table = seq_of
                                .get(start + r)
                                .and_then(|&s| stretched[s].as_ref())
                                .unwrap_or(rope);
                            table.rotate(&mut row[..qw + kvw], pos_of[start + r], false);
                        }
                    });
                }
                for (s, t) in tokens.iter().enumerate() {
                    let st = &mut *states[s];
                    for j in 0..t.len() {
                        let row = &qkv[(first[s] + j) * w..(first[s] + j + 1) * w];
                        st.k[l].extend_from_slice(&row[qw..qw + kvw]);
                        st.v[l].extend_from_slice(&row[qw + kvw..]);
                    }
                }
                let qkv = &*qkv;
                // One task per (sequence, head): its queries against its own cache.
                let jobs: Vec<(usize, usize)> = (0..tokens.len())
                    .flat_map(|s| (0..nh).map(move |hh| (s, hh)))
                    .collect();
                let caches: Vec<(&[f32], &[f32], usize)> = states
                    .iter()
                    .map(|st| {
                        (
                            st.k[l].as_slice(),
                            st.v[l].as_slice(),
                            st.len - st.dropped[l],
                        )
                    })
                    .collect();
                let outs: Vec<(Vec<f32>, Vec<Vec<f32>>)> = jobs
                    .par_iter()
                    .map(|&(s, hh)| {
                        let (kc, vc, past) = caches[s];
                        let t = tokens[s].len();
                        // The queries kept: every new one, or the last when narrowing.
                        let j0 = if narrow { t - 1 } else { 0 };
                        let g = hh / group;
                        let mut out = vec![0f32; (t - j0) * hd];
                        let keys = past + t;
                        let mut kept = vec![0f32; if capture { (t - j0) * keys } else { 0 }];
                        let q = &qkv[(first[s] + j0) * w + hh * hd..];
                        let keep = if capture { Some(&mut kept[..]) } else { None };
                        attend_head(
                            q,
                            w,
                            &kc[g * hd..],
                            &vc[g * hd..],
                            kvw,
                            match window {
                                Some(window) => Span::Window {
                                    past: past + j0,
                                    window,
                                },
                                None => Span::Causal { past: past + j0 },
                            },
                            t - j0,
                            hd,
                            scale,
                            None,
                            &mut out,
                            keep,
                            None,
                        );
                        // The weights of each kept query over its keys, one row each.
                        (out, kept.chunks(keys).map(<[f32]>::to_vec).collect())
                    })
                    .collect();
                if let Some(m) = maps {
                    m.push(outs.iter().map(|(_, kept)| kept.clone()).collect());
                }
                for (&(s, hh), (out, _)) in jobs.iter().zip(&outs) {
                    let r0 = if narrow { s } else { first[s] };
                    for j in 0..out.len() / hd {
                        y[(r0 + j) * qw + hh * hd..][..hd]
                            .copy_from_slice(&out[j * hd..(j + 1) * hd]);
                    }
                }
            };
            let next = self.layers.get(l + 1).map_or(&self.norm_f, |n| &n.norm1);
            let res = narrow.then_some(&last_rows[..]);
            let rows = (n, kept);
            bufs.run(
                &shape,
                &layer.weights(),
                &mut x,
                res,
                next.weights(),
                rows,
                attend,
            );
            if narrow {
                for (s, r) in rows_of.iter_mut().enumerate() {
                    *r = (s, 1);
                }
            }
        }
        for (st, t) in states.iter_mut().zip(tokens) {
            st.len += t.len();
            st.forget_outside(&spec.windows, kvw);
        }
        // The rows asked for, normalised (by the last block's epilogue), then through
        // the head.
        let rows: Vec<(usize, usize)> = match want {
            Want::Last => rows_of.iter().map(|&(r, k)| (r + k - 1, 1)).collect(),
            _ => rows_of,
        };
        let m: usize = rows.iter().map(|r| r.1).sum();
        let mut hs = Vec::with_capacity(m * c);
        for &(r, k) in &rows {
            hs.extend_from_slice(&bufs.h[r * c..(r + k) * c]);
        }
        let (width, out) = if want == Want::Hidden {
            (c, hs)
        } else {
            (spec.vocab_size, self.head(&hs))
        };
        let mut res = Vec::with_capacity(rows.len());
        let mut at = 0;
        for &(_, k) in &rows {
            res.push(out[at * width..(at + k) * width].to_vec());
            at += k;
        }
        Ok(res)
    }

    /// Logits `[m, vocab]` for final hidden states `[m, d_model]`.
    pub fn head(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.spec.d_model;
        let mut logits = vec![0f32; m * self.spec.vocab_size];
        matmul(hidden, m, self.head_matrix(), None, &mut logits);
        logits
    }

    /// Generate after each prompt, all sequences advancing together: one forward pass
    /// per step for every sequence still running (a sequence leaves the batch at the
    /// model's end-of-text id or after `max_new_tokens`). Sequence `i` samples with seed
    /// `sampling.seed + i`, so its tokens are those of decoding it alone with that seed.
    pub fn generate_batch(
        &self,
        prompts: &[&[u32]],
        max_new_tokens: usize,
        sampling: &crate::generate::SamplingConfig,
    ) -> Result<Vec<(Vec<u32>, crate::generate::FinishReason)>> {
        use crate::generate::{FinishReason, Sampler, SamplingConfig};
        sampling.validate()?;
        let ctx = self.spec.context;
        for p in prompts {
            if p.is_empty() || p.len() + max_new_tokens > ctx {
                return Err(Error::invalid(
                    "prompt",
                    format!(
                        "has {} tokens; with {max_new_tokens} new ones it needs between 1 and the context of {ctx}",
                        p.len()
                    ),
                ));
            }
        }
        let eos = if sampling.ignore_eos {
            None
        } else {
            self.spec.eos
        };
        let mut states: Vec<DecoderState> = prompts.iter().map(|_| self.new_state()).collect();
        let mut samplers: Vec<Sampler> = (0..prompts.len())
            .map(|i| {
                let cfg = SamplingConfig {
                    seed: sampling.seed.wrapping_add(i as u64),
                    ..sampling.clone()
                };
                Sampler::new(cfg, self.spec.vocab_size)
            })
            .collect();
        // Each sequence's prompt and tokens so far (the sampler's repetition history).
        let mut history: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
        let mut finish = vec![FinishReason::Length; prompts.len()];
        let mut logits = {
            let mut refs: Vec<&mut DecoderState> = states.iter_mut().collect();
            self.forward(&mut refs, prompts, Want::Last)?
        };
        // Indices of the sequences still decoding, ascending; logits[k] is running[k]'s.
        let mut running: Vec<usize> = (0..prompts.len()).collect();
        loop {
            let mut feed = Vec::with_capacity(running.len());
            running = running
                .iter()
                .zip(logits.iter_mut())
                .filter_map(|(&i, l)| {
                    let id = samplers[i].sample(l, &history[i]);
                    if Some(id) == eos {
                        finish[i] = FinishReason::EndOfText;
                        return None;
                    }
                    history[i].push(id);
                    (history[i].len() - prompts[i].len() < max_new_tokens).then(|| {
                        feed.push([id]);
                        i
                    })
                })
                .collect();
            if running.is_empty() {
                break;
            }
            let mut refs: Vec<&mut DecoderState> = states
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| running.binary_search(i).is_ok())
                .map(|(_, st)| st)
                .collect();
            let toks: Vec<&[u32]> = feed.iter().map(|f| f.as_slice()).collect();
            logits = self.forward(&mut refs, &toks, Want::Last)?;
        }
        let out = history
            .into_iter()
            .zip(prompts)
            .zip(finish)
            .map(|((h, p), f)| (h[p.len()..].to_vec(), f))
            .collect();
        Ok(out)
    }
}

// ------------------------------------------------------------------ as a CausalLm

impl crate::models::CausalLm for Decoder {
    fn logits_all(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let mut states: Vec<DecoderState> = seqs.iter().map(|_| self.new_state()).collect();
        let mut refs: Vec<&mut DecoderState> = states.iter_mut().collect();
        self.forward(&mut refs, seqs, Want::All)
    }
    fn session(&self) -> Box<dyn crate::generate::Session + '_> {
        Box::new(EngineSession {
            engine: self,
            state: self.new_state(),
        })
    }
    fn context(&self) -> usize {
        self.spec.context
    }
    fn vocab_size(&self) -> usize {
        self.spec.vocab_size
    }
    fn n_layer(&self) -> usize {
        self.spec.n_layer
    }
    fn bos(&self) -> Option<u32> {
        self.spec.bos
    }
    fn eos(&self) -> Option<u32> {
        self.spec.eos
    }
}

struct EngineSession<'a> {
    engine: &'a Decoder,
    state: DecoderState,
}

impl crate::generate::Session for EngineSession<'_> {
    fn len(&self) -> usize {
        self.state.len()
    }
    fn clear(&mut self) {
        self.state.clear();
    }
    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(self
            .engine
            .forward(&mut [&mut self.state], &[ids], Want::Last)?
            .remove(0))
    }
}
