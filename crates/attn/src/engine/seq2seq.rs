//! The encoder-decoder stack for inference on the CPU: Marian / the original
//! Transformer as Hugging Face's `MarianMTModel` computes it — one embedding table
//! shared by source, target and output head (scaled by √d), sinusoidal positions,
//! post-norm encoder blocks (the same blocks as BERT's, over ragged batches), post-norm
//! decoder blocks of causal self-attention, cross-attention to the encoder's output and
//! an MLP, and logits `h·Eᵀ + final_logits_bias`.
//!
//! A source sentence is encoded once into a [`Memory`]: each decoder layer's keys and
//! values of the encoder output. Every hypothesis decoding from that sentence (the
//! beams of a search) reads the same memory and keeps its own self-attention cache (a
//! [`DecoderState`]), so a beam search copies only the decoder's own keys and values
//! when it reorders its beams.
//!
//! The tests check encoder states, logits, step-by-step logits and beam search against
//! transformers' fixtures.

use std::path::Path;

use super::decoder::{activate, DecoderState, Layer, Linear, Norm};
use super::encoder::{
    add_and_norm, attend_into, post_norm_blocks, take_linear, take_norm, HeadJob,
};
use super::io::{plain_tensors, read_weight_files, take, unexpected, Plain};
use super::{Mlp, Want};
use crate::checkpoint::{read_json, CONFIG, WEIGHTS};
use crate::kernels::cpu::attend::Span;
use crate::kernels::cpu::quant::{matmul, QMatrix, WeightType};
use crate::models::marian::MarianConfig;
use crate::{Error, Result};

/// Marian's sinusoidal table `[n, d]`: for position p and j < d/2, angle
/// p / 10000^(2j/d); the sines fill the first half of each row and the cosines the second.
pub fn sinusoid_table(n: usize, d: usize) -> Result<Vec<f32>> {
    let len = n
        .checked_mul(d)
        .ok_or_else(|| Error::invalid("max_position_embeddings", "too large"))?;
    let mut data =
        crate::guard::try_filled("max_position_embeddings (its sinusoidal table)", len, 0f32)?;
    let half = d / 2;
    for p in 0..n {
        for j in 0..half {
            let angle = p as f64 / 10000f64.powf(2.0 * j as f64 / d as f64);
            data[p * d + j] = angle.sin() as f32;
            data[p * d + half + j] = angle.cos() as f32;
        }
    }
    Ok(data)
}

/// The cross-attention sub-block of a decoder layer.
struct Cross {
    q: Linear,
    /// Keys then values, applied to the encoder output once per sentence.
    kv: Linear,
    proj: Linear,
    norm: Norm,
}

struct DecoderLayer {
    /// Self-attention (`norm1` after its residual sum) and the MLP (`norm2`).
    block: Layer,
    cross: Cross,
}

/// One source sentence as the decoder reads it: per decoder layer, the keys and values
/// of the encoder output `[len, 2·d_model]` (keys then values in each row).
#[derive(Clone)]
pub struct Memory {
    kv: Vec<Vec<f32>>,
    len: usize,
}

impl Memory {
    /// Source tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A Marian model laid out for inference.
pub struct Seq2Seq {
    pub config: MarianConfig,
    mlp: Mlp,
    /// The shared embedding `[vocab, d_model]`, also the output head.
    embed: QMatrix,
    /// `[vocab]`.
    final_bias: Vec<f32>,
    /// `[max_position_embeddings, d_model]`.
    positions: Vec<f32>,
    encoder: Vec<Layer>,
    decoder: Vec<DecoderLayer>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::bad_file(path, msg.into())
}

/// Names a Marian checkpoint may hold that are copies of others (the tied embedding
/// and head) or computed (the sinusoidal tables).
pub(crate) const TIED_COPIES: [&str; 5] = [
    "model.encoder.embed_tokens.weight",
    "model.decoder.embed_tokens.weight",
    "lm_head.weight",
    "model.encoder.embed_positions.weight",
    "model.decoder.embed_positions.weight",
];

pub(crate) fn is_tied_copy(name: &str) -> bool {
    TIED_COPIES.contains(&name)
}

/// A Marian folder's config, validated (`model_type` must be "marian").
pub(crate) fn read_marian_config(dir: &Path) -> Result<MarianConfig> {
    let cfg_path = dir.join(CONFIG);
    let value = read_json(&cfg_path)?;
    if value.get("model_type").and_then(|v| v.as_str()) != Some("marian") {
        return Err(bad(&cfg_path, "model_type is not \"marian\""));
    }
    let config: MarianConfig = serde_json::from_value(value)
        .map_err(|e| bad(&cfg_path, format!("not a valid Marian config: {e}")))?;
    config
        .validate()
        .map_err(|e| bad(&cfg_path, e.to_string()))?;
    Ok(config)
}

impl Seq2Seq {
    /// Load a `MarianMTModel` folder (`model_type` "marian").
    pub fn load(dir: &Path) -> Result<Self> {
        let config = read_marian_config(dir)?;
        let (files, blobs) = read_weight_files(dir)?;
        let (tensors, _) = plain_tensors(&files, &blobs, |name| {
            (!is_tied_copy(name)).then(|| name.to_string())
        })?;
        Self::from_plain(config, &dir.join(WEIGHTS), tensors)
    }

    /// Build from f32 tensors under Hugging Face's names (a training step's).
    pub(crate) fn from_tensors(config: MarianConfig, tensors: Plain) -> Result<Self> {
        Self::from_plain(config, Path::new("(parameters)"), tensors)
    }

    fn from_plain(config: MarianConfig, path: &Path, mut t: Plain) -> Result<Self> {
        config.validate()?;
        let c = config.d_model;
        let take = |t: &mut Plain, name: &str, shape: &[usize]| take(t, path, name, shape);
        let norm = |t: &mut Plain, name: &str| take_norm(t, path, name, c);
        let linear = |t: &mut Plain, names: &[&str], rows: usize, cols: usize| {
            take_linear(t, path, names, rows, cols)
        };
        let v = config.vocab_size;
        let embed = take(&mut t, "model.shared.weight", &[v, c])?;
        let final_bias = take(&mut t, "final_logits_bias", &[1, v])?;
        let block = |t: &mut Plain, p: &str, inner: usize| -> Result<Layer> {
            let a = format!("{p}.self_attn");
            Ok(Layer {
                qkv: linear(
                    t,
                    &[
                        &format!("{a}.q_proj"),
                        &format!("{a}.k_proj"),
                        &format!("{a}.v_proj"),
                    ],
                    c,
                    c,
                )?,
                proj: linear(t, &[&format!("{a}.out_proj")], c, c)?,
                norm1: norm(t, &format!("{p}.self_attn_layer_norm"))?,
                up: linear(t, &[&format!("{p}.fc1")], inner, c)?,
                down: linear(t, &[&format!("{p}.fc2")], c, inner)?,
                norm2: norm(t, &format!("{p}.final_layer_norm"))?,
            })
        };
        // Grown layer by layer: a wrong layer count is found at its first missing
        // tensor, before anything of its size exists.
        let mut encoder = Vec::new();
        for l in 0..config.encoder_layers {
            encoder.push(block(
                &mut t,
                &format!("model.encoder.layers.{l}"),
                config.encoder_ffn_dim,
            )?);
        }
        let mut decoder = Vec::new();
        for l in 0..config.decoder_layers {
            let p = format!("model.decoder.layers.{l}");
            let e = format!("{p}.encoder_attn");
            decoder.push(DecoderLayer {
                block: block(&mut t, &p, config.decoder_ffn_dim)?,
                cross: Cross {
                    q: linear(&mut t, &[&format!("{e}.q_proj")], c, c)?,
                    kv: linear(
                        &mut t,
                        &[&format!("{e}.k_proj"), &format!("{e}.v_proj")],
                        c,
                        c,
                    )?,
                    proj: linear(&mut t, &[&format!("{e}.out_proj")], c, c)?,
                    norm: norm(&mut t, &format!("{p}.encoder_attn_layer_norm"))?,
                },
            });
        }
        unexpected(&t, path)?;
        let mlp = match config.activation_function.as_str() {
            "gelu" => Mlp::GeluErf,
            "gelu_new" => Mlp::GeluTanh,
            "relu" => Mlp::Relu,
            _ => Mlp::Silu,
        };
        let positions = sinusoid_table(config.max_position_embeddings, c)?;
        Ok(Seq2Seq {
            mlp,
            embed: QMatrix::from_f32(&embed, v, c, WeightType::F32)?,
            final_bias,
            positions,
            encoder,
            decoder,
            config,
        })
    }

    pub fn d_model(&self) -> usize {
        self.config.d_model
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    /// An empty self-attention cache for one hypothesis.
    pub fn new_state(&self) -> DecoderState {
        DecoderState::with_layers(self.decoder.len())
    }

    fn check_ids(&self, what: &str, seqs: &[&[u32]], past: &[usize]) -> Result<()> {
        for (s, &p) in seqs.iter().zip(past) {
            if s.is_empty() {
                return Err(Error::invalid(what, "a sequence was given no tokens"));
            }
            crate::engine::check_positions(p + s.len(), self.config.max_position_embeddings)?;
            if let Some(&bad) = s.iter().find(|&&id| id as usize >= self.vocab_size()) {
                return Err(Error::invalid(
                    what,
                    format!(
                        "id {bad} is outside the vocabulary of {}",
                        self.vocab_size()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Token embeddings (scaled) plus sinusoidal positions; sequence `s`'s tokens start
    /// at position `past[s]`.
    fn embed_rows(&self, seqs: &[&[u32]], past: &[usize]) -> Vec<f32> {
        let c = self.d_model();
        let scale = if self.config.scale_embedding {
            (c as f32).sqrt()
        } else {
            1.0
        };
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        let mut x = vec![0f32; n * c];
        let mut rows = x.chunks_mut(c);
        for (s, &p0) in seqs.iter().zip(past) {
            for (j, &id) in s.iter().enumerate() {
                let row = rows.next().expect("one row per token");
                self.embed.row_to_f32(id as usize, row);
                let pos = &self.positions[(p0 + j) * c..][..c];
                row.iter_mut()
                    .zip(pos)
                    .for_each(|(o, &p)| *o = *o * scale + p);
            }
        }
        x
    }

    /// The encoder's final hidden states of a ragged batch of source sentences
    /// (end-of-sentence included): `[len, d_model]` each.
    pub fn encode(&self, srcs: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.check_ids("source", srcs, &vec![0; srcs.len()])?;
        let x = crate::kernels::in_pool(|| self.run_encoder(srcs));
        let c = self.d_model();
        let mut rows = x.as_slice();
        Ok(srcs
            .iter()
            .map(|s| {
                let (h, rest) = rows.split_at(s.len() * c);
                rows = rest;
                h.to_vec()
            })
            .collect())
    }

    /// The encoder's output rows `[Σ len, d_model]`, sentence after sentence.
    fn run_encoder(&self, srcs: &[&[u32]]) -> Vec<f32> {
        let lens: Vec<usize> = srcs.iter().map(|s| s.len()).collect();
        let mut x = self.embed_rows(srcs, &vec![0; srcs.len()]);
        post_norm_blocks(
            &self.encoder,
            self.mlp,
            self.config.encoder_attention_heads,
            1e-5,
            &lens,
            &mut x,
            |_| {},
        );
        x
    }

    /// Encode source sentences into the memories the decoder reads, one per sentence.
    pub fn memories(&self, srcs: &[&[u32]]) -> Result<Vec<Memory>> {
        self.check_ids("source", srcs, &vec![0; srcs.len()])?;
        Ok(crate::kernels::in_pool(|| {
            let flat = self.run_encoder(srcs);
            let c = self.d_model();
            let n: usize = srcs.iter().map(|s| s.len()).sum();
            let mut mems: Vec<Memory> = srcs
                .iter()
                .map(|s| Memory {
                    kv: Vec::with_capacity(self.decoder.len()),
                    len: s.len(),
                })
                .collect();
            let mut kv = vec![0f32; n * 2 * c];
            for layer in &self.decoder {
                layer.cross.kv.apply(&flat, n, &mut kv);
                let mut at = 0;
                for m in mems.iter_mut() {
                    m.kv.push(kv[at * 2 * c..(at + m.len) * 2 * c].to_vec());
                    at += m.len;
                }
            }
            mems
        }))
    }

    /// Run new target tokens through the decoder: `tokens[s]` continues hypothesis
    /// `states[s]`, which decodes from `memories[s]` (several hypotheses may share a
    /// memory). Returns per hypothesis what `want` asks for (logits or hidden states).
    pub fn decode(
        &self,
        memories: &[&Memory],
        states: &mut [&mut DecoderState],
        tokens: &[&[u32]],
        want: Want,
    ) -> Result<Vec<Vec<f32>>> {
        if states.len() != tokens.len() || memories.len() != tokens.len() {
            return Err(Error::invalid(
                "tokens",
                "one memory, state and token list per hypothesis is needed",
            ));
        }
        if states.iter().any(|s| s.k.len() != self.decoder.len())
            || memories.iter().any(|m| m.kv.len() != self.decoder.len())
        {
            return Err(Error::invalid(
                "state",
                "was not made by this model's new_state and memories",
            ));
        }
        let past: Vec<usize> = states.iter().map(|s| s.len).collect();
        self.check_ids("target", tokens, &past)?;
        Ok(crate::kernels::in_pool(|| {
            self.run_decoder(memories, states, tokens, want)
        }))
    }

    fn run_decoder(
        &self,
        memories: &[&Memory],
        states: &mut [&mut DecoderState],
        tokens: &[&[u32]],
        want: Want,
    ) -> Vec<Vec<f32>> {
        let cfg = &self.config;
        let c = cfg.d_model;
        let nh = cfg.decoder_attention_heads;
        let hd = c / nh;
        let inner = cfg.decoder_ffn_dim;
        let eps = 1e-5;
        let scale = 1.0 / (hd as f32).sqrt();
        let past: Vec<usize> = states.iter().map(|s| s.len).collect();
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        let first = super::row_starts(tokens.iter().map(|t| t.len()));
        let mut x = self.embed_rows(tokens, &past);
        let w = 3 * c;
        let mut h = vec![0f32; n * c];
        let mut qkv = vec![0f32; n * w];
        let mut q = vec![0f32; n * c];
        let mut y = vec![0f32; n * c];
        let mut a = vec![0f32; n * c];
        let mut f = vec![0f32; n * inner];
        let jobs: Vec<(usize, usize)> = (0..tokens.len())
            .flat_map(|s| (0..nh).map(move |hh| (s, hh)))
            .collect();
        for (l, layer) in self.decoder.iter().enumerate() {
            let b = &layer.block;
            b.qkv.apply(&x, n, &mut qkv);
            for (s, t) in tokens.iter().enumerate() {
                let st = &mut *states[s];
                for j in 0..t.len() {
                    let row = &qkv[(first[s] + j) * w..][..w];
                    st.k[l].extend_from_slice(&row[c..2 * c]);
                    st.v[l].extend_from_slice(&row[2 * c..]);
                }
            }
            let heads: Vec<HeadJob> = jobs
                .iter()
                .map(|&(s, hh)| HeadJob {
                    q: &qkv[first[s] * w + hh * hd..],
                    qs: w,
                    k: &states[s].k[l][hh * hd..],
                    v: &states[s].v[l][hh * hd..],
                    ks: c,
                    span: Span::Causal { past: past[s] },
                    t: tokens[s].len(),
                    row0: first[s],
                    col0: hh * hd,
                })
                .collect();
            attend_into(&heads, hd, scale, c, &mut y);
            add_and_norm(&b.proj, &y, &mut x, &mut a, &mut h, &b.norm1, eps);

            let cr = &layer.cross;
            cr.q.apply(&x, n, &mut q);
            let heads: Vec<HeadJob> = jobs
                .iter()
                .map(|&(s, hh)| {
                    let m = memories[s];
                    HeadJob {
                        q: &q[first[s] * c + hh * hd..],
                        qs: c,
                        k: &m.kv[l][hh * hd..],
                        v: &m.kv[l][c + hh * hd..],
                        ks: 2 * c,
                        span: Span::All { keys: m.len },
                        t: tokens[s].len(),
                        row0: first[s],
                        col0: hh * hd,
                    }
                })
                .collect();
            attend_into(&heads, hd, scale, c, &mut y);
            add_and_norm(&cr.proj, &y, &mut x, &mut a, &mut h, &cr.norm, eps);

            b.up.apply(&x, n, &mut f);
            activate(self.mlp, inner, &mut f, &mut []);
            add_and_norm(&b.down, &f, &mut x, &mut a, &mut h, &b.norm2, eps);
        }
        for (st, t) in states.iter_mut().zip(tokens) {
            st.len += t.len();
        }
        // The rows asked for, then through the head.
        let rows: Vec<(usize, usize)> = first
            .iter()
            .zip(tokens)
            .map(|(&f, t)| match want {
                Want::Last => (f + t.len() - 1, 1),
                _ => (f, t.len()),
            })
            .collect();
        let m: usize = rows.iter().map(|r| r.1).sum();
        let mut sel = Vec::with_capacity(m * c);
        for &(r, k) in &rows {
            sel.extend_from_slice(&x[r * c..(r + k) * c]);
        }
        let (width, out) = if want == Want::Hidden {
            (c, sel)
        } else {
            (self.vocab_size(), self.head(&sel))
        };
        let mut res = Vec::with_capacity(rows.len());
        let mut at = 0;
        for &(_, k) in &rows {
            res.push(out[at * width..(at + k) * width].to_vec());
            at += k;
        }
        res
    }

    /// Logits `[m, vocab]` for decoder hidden states `[m, d_model]`.
    pub fn head(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.d_model();
        let mut logits = vec![0f32; m * self.vocab_size()];
        matmul(hidden, m, &self.embed, Some(&self.final_bias), &mut logits);
        logits
    }
}
