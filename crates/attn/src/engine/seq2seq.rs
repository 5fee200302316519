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
//!
//! Why one file of this length: Marian and T5 are two configurations of this one stack,
//! and their loaders (tensor names, shapes checked by name) sit beside the encoder and
//! the decoder step that read the weights they build.

use std::path::Path;

use super::block;
use super::decoder::{post_norm_tail, DecoderState, Layer, Linear, Norm};
use super::encoder::{post_norm_blocks, take_linear, take_norm};
use super::io::{plain_tensors, read_weight_files, take, unexpected, Plain};
use super::sublayers::{
    attend_into, head_jobs, heads_forward, mlp_forward, post_norm_step, Act, Dims, HeadJob, Scratch,
};
use super::{Gate, Mlp, Want};
use crate::checkpoint::{read_json, CONFIG, WEIGHTS};
use crate::kernels::cpu::attend::Span;
use crate::kernels::cpu::quant::{matmul, QMatrix, WeightType};
use crate::kernels::cpu::{Heads, Rhs};
use crate::models::marian::MarianConfig;
use crate::models::t5::{bucket_grid, head_bias, T5Act, T5Config, T5Ffn};
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

/// What the encoder-decoder stack needs to know about a model, in family-neutral words:
/// Marian's and T5's configs both become one.
#[derive(Debug, Clone, PartialEq)]
pub struct Seq2SeqSpec {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_heads: usize,
    pub decoder_heads: usize,
    /// Width of one head (d_model / heads for Marian; T5's `d_kv`).
    pub head_dim: usize,
    pub encoder_inner: usize,
    pub decoder_inner: usize,
    /// The longest sequence the positions allow (`None`: relative positions, any length).
    pub context: Option<usize>,
    /// The longest source the model was made for (a default for truncating inputs).
    pub max_source: usize,
    pub pad: u32,
    pub eos: u32,
    pub decoder_start: u32,
}

/// How the two families differ, beyond sizes. One per loaded model, so the size of its
/// larger variant costs nothing worth an indirection.
#[allow(clippy::large_enum_variant)]
enum Arch {
    /// Sinusoidal positions `[max_positions, d_model]`, embeddings scaled by √d,
    /// post-LayerNorm blocks, scores scaled by 1/√d_head, head = the embedding plus
    /// `final_logits_bias`.
    Marian {
        mlp: Mlp,
        positions: Vec<f32>,
        final_bias: Vec<f32>,
        embed_scale: f32,
    },
    /// Pre-norm RMS blocks, unscaled scores plus a relative-position bias per head
    /// (`[buckets, heads]`, one table per stack), final norms, and a head that is
    /// either the embedding (its input scaled by `out_scale`) or a matrix of its own.
    T5 {
        ffn: T5Ffn,
        buckets: usize,
        max_distance: usize,
        enc_bias: Vec<f32>,
        dec_bias: Vec<f32>,
        enc_final: Norm,
        dec_final: Norm,
        head: Option<QMatrix>,
        out_scale: f32,
        eps: f32,
    },
}

/// An encoder-decoder model laid out for inference: Marian / the original Transformer,
/// or T5.
pub struct Seq2Seq {
    pub spec: Seq2SeqSpec,
    /// The Marian config, for Marian models.
    pub marian: Option<MarianConfig>,
    /// The T5 config, for T5 models.
    pub t5: Option<T5Config>,
    arch: Arch,
    /// The shared embedding `[vocab, d_model]` (also the head when tied).
    embed: QMatrix,
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
    read_typed_config(dir, "marian", "Marian", MarianConfig::validate)
}

/// A T5 folder's config, validated (`model_type` must be "t5").
pub(crate) fn read_t5_config(dir: &Path) -> Result<T5Config> {
    read_typed_config(dir, "t5", "T5", T5Config::validate)
}

/// The config of the folder `dir`, which must say `model_type` (`label` names the
/// family in errors), read and checked by `validate`; every error names the file.
fn read_typed_config<C: serde::de::DeserializeOwned>(
    dir: &Path,
    model_type: &str,
    label: &str,
    validate: impl FnOnce(&C) -> Result<()>,
) -> Result<C> {
    let cfg_path = dir.join(CONFIG);
    let value = read_json(&cfg_path)?;
    if value.get("model_type").and_then(|v| v.as_str()) != Some(model_type) {
        return Err(bad(
            &cfg_path,
            format!("model_type is not \"{model_type}\""),
        ));
    }
    let config: C = serde_json::from_value(value)
        .map_err(|e| bad(&cfg_path, format!("not a valid {label} config: {e}")))?;
    validate(&config).map_err(|e| bad(&cfg_path, e.to_string()))?;
    Ok(config)
}

/// The encoder-decoder `model_type`s the engine runs.
pub const SEQ2SEQ_TYPES: [&str; 2] = ["marian", "t5"];

/// The error for a folder whose `model_type` (or its absence) is no encoder-decoder
/// family; `verb` says what attn would do with it ("runs", "trains").
pub(crate) fn not_seq2seq(model_type: Option<&str>, verb: &str) -> String {
    let what = match model_type {
        Some(t) => format!("model_type {t:?}"),
        None => "a config without a model_type".into(),
    };
    format!(
        "{what} is not an encoder-decoder attn {verb} (supported: {})",
        SEQ2SEQ_TYPES.join(", ")
    )
}

/// Names a T5 checkpoint may hold that are copies of the shared embedding.
pub(crate) fn is_t5_copy(name: &str) -> bool {
    matches!(
        name,
        "encoder.embed_tokens.weight" | "decoder.embed_tokens.weight"
    )
}

/// A scale-only RMS norm `[c]`.
fn take_rms(t: &mut Plain, path: &Path, name: &str, c: usize) -> Result<Norm> {
    Ok(Norm {
        w: take(t, path, name, &[c])?,
        b: None,
    })
}

/// The `[rows, cols]` matrices `names` stacked by rows, without biases.
fn take_matrix(
    t: &mut Plain,
    path: &Path,
    names: &[String],
    rows: usize,
    cols: usize,
) -> Result<Linear> {
    let mut w = Vec::new();
    for name in names {
        w.extend(take(t, path, name, &[rows, cols])?);
    }
    Ok(Linear {
        w: QMatrix::from_f32(&w, rows * names.len(), cols, WeightType::F32)?,
        b: None,
    })
}

impl T5Config {
    /// The engine's sizes for this config.
    pub fn spec(&self) -> Seq2SeqSpec {
        Seq2SeqSpec {
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            encoder_layers: self.num_layers,
            decoder_layers: self.decoder_layers(),
            encoder_heads: self.num_heads,
            decoder_heads: self.num_heads,
            head_dim: self.d_kv,
            encoder_inner: self.d_ff,
            decoder_inner: self.d_ff,
            context: None,
            max_source: self.n_positions.unwrap_or(512),
            pad: self.pad_token_id,
            eos: self.eos_token_id,
            decoder_start: self.decoder_start_token_id,
        }
    }
}

impl MarianConfig {
    /// The engine's sizes for this config.
    pub fn spec(&self) -> Seq2SeqSpec {
        Seq2SeqSpec {
            vocab_size: self.vocab_size,
            d_model: self.d_model,
            encoder_layers: self.encoder_layers,
            decoder_layers: self.decoder_layers,
            encoder_heads: self.encoder_attention_heads,
            decoder_heads: self.decoder_attention_heads,
            head_dim: self.d_model / self.encoder_attention_heads,
            encoder_inner: self.encoder_ffn_dim,
            decoder_inner: self.decoder_ffn_dim,
            context: Some(self.max_position_embeddings),
            max_source: self.max_position_embeddings,
            pad: self.pad_token_id,
            eos: self.eos_token_id,
            decoder_start: self.decoder_start_token_id,
        }
    }
}

/// The MLP activation of a T5 activation.
fn mlp_of(act: T5Act) -> Mlp {
    match act {
        T5Act::Relu => Mlp::Relu,
        T5Act::GeluTanh => Mlp::GeluTanh,
        T5Act::GeluErf => Mlp::GeluErf,
        T5Act::Silu => Mlp::Silu,
    }
}

/// The block shape of a T5 stack: `nh` heads of `hd`, the FFN of the config, RMSNorm.
pub(crate) fn t5_shape(
    c: usize,
    nh: usize,
    hd: usize,
    inner: usize,
    ffn: T5Ffn,
    eps: f32,
) -> block::Shape {
    let mlp = match ffn {
        T5Ffn::Plain(act) => mlp_of(act),
        T5Ffn::Gated(T5Act::Silu) => Mlp::SwiGlu,
        T5Ffn::Gated(T5Act::Relu) => Mlp::Gated(Gate::Relu),
        T5Ffn::Gated(T5Act::GeluErf) => Mlp::Gated(Gate::GeluErf),
        T5Ffn::Gated(T5Act::GeluTanh) => Mlp::Gated(Gate::GeluTanh),
    };
    block::Shape {
        c,
        heads: Heads {
            n: nh,
            kv: nh,
            dim: hd,
        },
        inner,
        up: mlp.up_rows(inner),
        mlp,
        eps,
    }
}

impl Seq2Seq {
    /// Load a `MarianMTModel` (`model_type` "marian") or `T5ForConditionalGeneration`
    /// (`model_type` "t5") folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG);
        let value = read_json(&cfg_path)?;
        let (files, blobs) = read_weight_files(dir)?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            Some("t5") => {
                let config = read_t5_config(dir)?;
                let (tensors, _) = plain_tensors(&files, &blobs, |name| {
                    (!is_t5_copy(name)).then(|| name.to_string())
                })?;
                Self::from_t5_plain(config, &dir.join(WEIGHTS), tensors)
            }
            Some("marian") => {
                let config = read_marian_config(dir)?;
                let (tensors, _) = plain_tensors(&files, &blobs, |name| {
                    (!is_tied_copy(name)).then(|| name.to_string())
                })?;
                Self::from_plain(config, &dir.join(WEIGHTS), tensors)
            }
            other => Err(bad(&cfg_path, not_seq2seq(other, "runs"))),
        }
    }

    /// Build from f32 tensors under Hugging Face's names (a training step's).
    pub(crate) fn from_tensors(config: MarianConfig, tensors: Plain) -> Result<Self> {
        Self::from_plain(config, Path::new("(parameters)"), tensors)
    }

    /// Build a T5 model from f32 tensors under Hugging Face's names.
    pub(crate) fn from_t5_tensors(config: T5Config, tensors: Plain) -> Result<Self> {
        Self::from_t5_plain(config, Path::new("(parameters)"), tensors)
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
        let embed_scale = if config.scale_embedding {
            (c as f32).sqrt()
        } else {
            1.0
        };
        Ok(Seq2Seq {
            spec: config.spec(),
            arch: Arch::Marian {
                mlp,
                positions,
                final_bias,
                embed_scale,
            },
            embed: QMatrix::from_f32(&embed, v, c, WeightType::F32)?,
            encoder,
            decoder,
            marian: Some(config),
            t5: None,
        })
    }

    fn from_t5_plain(config: T5Config, path: &Path, mut t: Plain) -> Result<Self> {
        config.validate()?;
        let (c, v, a, ff) = (
            config.d_model,
            config.vocab_size,
            config.inner(),
            config.d_ff,
        );
        let (nb, nh) = (config.relative_attention_num_buckets, config.num_heads);
        let ffn = config.ffn()?;
        let embed = take(&mut t, path, "shared.weight", &[v, c])?;
        let head = if config.tied() {
            None
        } else {
            let w = take(&mut t, path, "lm_head.weight", &[v, c])?;
            Some(QMatrix::from_f32(&w, v, c, WeightType::F32)?)
        };
        let rms = |t: &mut Plain, name: &str| take_rms(t, path, name, c);
        let mat = |t: &mut Plain, names: &[String], rows: usize, cols: usize| {
            take_matrix(t, path, names, rows, cols)
        };
        let attn = |t: &mut Plain, p: &str| -> Result<(Linear, Linear)> {
            let qkv = ["q", "k", "v"].map(|n| format!("{p}.{n}.weight"));
            Ok((
                mat(t, &qkv, a, c)?,
                mat(t, &[format!("{p}.o.weight")], c, a)?,
            ))
        };
        let mlp = |t: &mut Plain, p: &str| -> Result<(Linear, Linear)> {
            let up = match ffn {
                T5Ffn::Plain(_) => mat(t, &[format!("{p}.wi.weight")], ff, c)?,
                T5Ffn::Gated(_) => mat(
                    t,
                    &[format!("{p}.wi_0.weight"), format!("{p}.wi_1.weight")],
                    ff,
                    c,
                )?,
            };
            Ok((up, mat(t, &[format!("{p}.wo.weight")], c, ff)?))
        };
        let bias_of = |t: &mut Plain, stack: &str| {
            take(
                t,
                path,
                &format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
                &[nb, nh],
            )
        };
        let enc_bias = bias_of(&mut t, "encoder")?;
        let dec_bias = if config.decoder_layers() > 0 {
            bias_of(&mut t, "decoder")?
        } else {
            Vec::new()
        };
        let mut encoder = Vec::new();
        for l in 0..config.num_layers {
            let p = format!("encoder.block.{l}.layer");
            let (qkv, proj) = attn(&mut t, &format!("{p}.0.SelfAttention"))?;
            let (up, down) = mlp(&mut t, &format!("{p}.1.DenseReluDense"))?;
            encoder.push(Layer {
                norm1: rms(&mut t, &format!("{p}.0.layer_norm.weight"))?,
                qkv,
                proj,
                norm2: rms(&mut t, &format!("{p}.1.layer_norm.weight"))?,
                up,
                down,
            });
        }
        let mut decoder = Vec::new();
        for l in 0..config.decoder_layers() {
            let p = format!("decoder.block.{l}.layer");
            let (qkv, proj) = attn(&mut t, &format!("{p}.0.SelfAttention"))?;
            let e = format!("{p}.1.EncDecAttention");
            let cross = Cross {
                q: mat(&mut t, &[format!("{e}.q.weight")], a, c)?,
                kv: mat(
                    &mut t,
                    &[format!("{e}.k.weight"), format!("{e}.v.weight")],
                    a,
                    c,
                )?,
                proj: mat(&mut t, &[format!("{e}.o.weight")], c, a)?,
                norm: rms(&mut t, &format!("{p}.1.layer_norm.weight"))?,
            };
            let (up, down) = mlp(&mut t, &format!("{p}.2.DenseReluDense"))?;
            decoder.push(DecoderLayer {
                block: Layer {
                    norm1: rms(&mut t, &format!("{p}.0.layer_norm.weight"))?,
                    qkv,
                    proj,
                    norm2: rms(&mut t, &format!("{p}.2.layer_norm.weight"))?,
                    up,
                    down,
                },
                cross,
            });
        }
        let enc_final = rms(&mut t, "encoder.final_layer_norm.weight")?;
        let dec_final = rms(&mut t, "decoder.final_layer_norm.weight")?;
        unexpected(&t, path)?;
        Ok(Seq2Seq {
            spec: config.spec(),
            arch: Arch::T5 {
                ffn,
                buckets: nb,
                max_distance: config.relative_attention_max_distance,
                enc_bias,
                dec_bias,
                enc_final,
                dec_final,
                head,
                out_scale: if config.scales_output() {
                    (c as f32).powf(-0.5)
                } else {
                    1.0
                },
                eps: config.layer_norm_epsilon as f32,
            },
            embed: QMatrix::from_f32(&embed, v, c, WeightType::F32)?,
            encoder,
            decoder,
            marian: None,
            t5: Some(config),
        })
    }

    pub fn d_model(&self) -> usize {
        self.spec.d_model
    }

    pub fn vocab_size(&self) -> usize {
        self.spec.vocab_size
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
            if let Some(limit) = self.spec.context {
                crate::engine::check_positions(p + s.len(), limit)?;
            }
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

    /// Token embeddings (scaled, plus sinusoidal positions for Marian); sequence `s`'s
    /// tokens start at position `past[s]`.
    fn embed_rows(&self, seqs: &[&[u32]], past: &[usize]) -> Vec<f32> {
        let c = self.d_model();
        let n: usize = seqs.iter().map(|s| s.len()).sum();
        let mut x = vec![0f32; n * c];
        let mut rows = x.chunks_mut(c);
        for (s, &p0) in seqs.iter().zip(past) {
            for (j, &id) in s.iter().enumerate() {
                let row = rows.next().expect("one row per token");
                self.embed.row_to_f32(id as usize, row);
                if let Arch::Marian {
                    positions,
                    embed_scale,
                    ..
                } = &self.arch
                {
                    let pos = &positions[(p0 + j) * c..][..c];
                    row.iter_mut()
                        .zip(pos)
                        .for_each(|(o, &p)| *o = *o * embed_scale + p);
                }
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
        match &self.arch {
            Arch::Marian { mlp, .. } => post_norm_blocks(
                &self.encoder,
                *mlp,
                self.spec.encoder_heads,
                1e-5,
                &lens,
                &mut x,
                |_| {},
            ),
            Arch::T5 {
                ffn,
                buckets,
                max_distance,
                enc_bias,
                enc_final,
                eps,
                ..
            } => {
                let (c, nh, hd) = (self.d_model(), self.spec.encoder_heads, self.spec.head_dim);
                let n = x.len() / c;
                let aw = nh * hd;
                // One bias per (sequence, head), shared by every layer.
                let biases: Vec<Vec<f32>> = (0..lens.len())
                    .flat_map(|s| {
                        let grid = bucket_grid(0, lens[s], lens[s], true, *buckets, *max_distance);
                        (0..nh)
                            .map(|hh| head_bias(enc_bias, &grid, nh, hh))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                // Each (sequence, head) over its own keys, in the order of `biases`.
                let spans = super::spans(&lens);
                let dims = Dims {
                    c: aw,
                    nh,
                    eps: *eps,
                };
                let jobs = head_jobs(dims, &spans, None, false, |_, _| None);
                let shape = t5_shape(c, nh, hd, self.spec.encoder_inner, *ffn, *eps);
                let mut bufs = block::Buffers::new(&shape, n);
                let first_norm = self.encoder.first().map_or(enc_final, |l| &l.norm1);
                bufs.first_norm(&x, first_norm.weights(), *eps, n);
                for (l, layer) in self.encoder.iter().enumerate() {
                    // Unscaled scores plus the position bias.
                    let attend = |qkv: &mut [f32], y: &mut [f32]| {
                        heads_forward(qkv, qkv, &jobs, (hd, 1.0), Some(&biases), (aw, y), false);
                    };
                    let next = self.encoder.get(l + 1).map_or(enc_final, |n| &n.norm1);
                    let w = layer.weights();
                    bufs.run(&shape, &w, &mut x, None, next.weights(), (n, n), attend);
                }
                // The final norm, which the last block wrote.
                x = bufs.h;
            }
        }
        x
    }

    /// Width of the attention's queries, keys and values in the decoder.
    fn attn_width(&self) -> usize {
        self.spec.decoder_heads * self.spec.head_dim
    }

    /// Encode source sentences into the memories the decoder reads, one per sentence.
    pub fn memories(&self, srcs: &[&[u32]]) -> Result<Vec<Memory>> {
        self.check_ids("source", srcs, &vec![0; srcs.len()])?;
        Ok(crate::kernels::in_pool(|| {
            let flat = self.run_encoder(srcs);
            let aw = self.attn_width();
            let n: usize = srcs.iter().map(|s| s.len()).sum();
            let mut mems: Vec<Memory> = srcs
                .iter()
                .map(|s| Memory {
                    kv: Vec::with_capacity(self.decoder.len()),
                    len: s.len(),
                })
                .collect();
            let mut kv = vec![0f32; n * 2 * aw];
            for layer in &self.decoder {
                layer.cross.kv.apply(&flat, n, &mut kv);
                let mut at = 0;
                for m in mems.iter_mut() {
                    m.kv.push(kv[at * 2 * aw..(at + m.len) * 2 * aw].to_vec());
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
        let spec = &self.spec;
        let c = spec.d_model;
        let nh = spec.decoder_heads;
        let hd = spec.head_dim;
        let aw = nh * hd;
        let past: Vec<usize> = states.iter().map(|s| s.len).collect();
        let n: usize = tokens.iter().map(|t| t.len()).sum();
        let first = super::row_starts(tokens.iter().map(|t| t.len()));
        let mut x = self.embed_rows(tokens, &past);
        let w = 3 * aw;
        let jobs: Vec<(usize, usize)> = (0..tokens.len())
            .flat_map(|s| (0..nh).map(move |hh| (s, hh)))
            .collect();
        // T5: each (hypothesis, head)'s bias over its new queries and all its keys.
        let biases: Vec<Vec<f32>> = match &self.arch {
            Arch::T5 {
                buckets,
                max_distance,
                dec_bias,
                ..
            } => {
                // One grid of buckets per hypothesis, gathered for each of its heads (jobs
                // run hypothesis by hypothesis, head by head).
                let grids: Vec<Vec<u32>> = tokens
                    .iter()
                    .zip(&past)
                    .map(|(t, &p)| {
                        bucket_grid(p, t.len(), p + t.len(), false, *buckets, *max_distance)
                    })
                    .collect();
                jobs.iter()
                    .map(|&(s, hh)| head_bias(dec_bias, &grids[s], nh, hh))
                    .collect()
            }
            Arch::Marian { .. } => Vec::new(),
        };
        let scale = match &self.arch {
            Arch::Marian { .. } => 1.0 / (hd as f32).sqrt(),
            Arch::T5 { .. } => 1.0,
        };
        // Layer l's self-attention: this call's keys and values join the caches, then
        // each (hypothesis, head) attends over its cache.
        let self_heads =
            |l: usize, qkv: &[f32], states: &mut [&mut DecoderState], y: &mut [f32]| {
                for (s, t) in tokens.iter().enumerate() {
                    let st = &mut *states[s];
                    for j in 0..t.len() {
                        let row = &qkv[(first[s] + j) * w..][..w];
                        st.k[l].extend_from_slice(&row[aw..2 * aw]);
                        st.v[l].extend_from_slice(&row[2 * aw..]);
                    }
                }
                let heads: Vec<HeadJob> = jobs
                    .iter()
                    .enumerate()
                    .map(|(i, &(s, hh))| HeadJob {
                        q: &qkv[first[s] * w + hh * hd..],
                        qs: w,
                        k: &states[s].k[l][hh * hd..],
                        v: &states[s].v[l][hh * hd..],
                        ks: aw,
                        span: Span::Causal { past: past[s] },
                        t: tokens[s].len(),
                        row0: first[s],
                        col0: hh * hd,
                        bias: biases.get(i).map(|b| b.as_slice()),
                        drop: None,
                    })
                    .collect();
                attend_into(&heads, hd, scale, aw, y, false);
            };
        // Layer l's cross-attention: each hypothesis's queries over its memory.
        let cross_heads = |l: usize, q: &[f32], y: &mut [f32]| {
            let heads: Vec<HeadJob> = jobs
                .iter()
                .map(|&(s, hh)| {
                    let m = memories[s];
                    HeadJob {
                        q: &q[first[s] * aw + hh * hd..],
                        qs: aw,
                        k: &m.kv[l][hh * hd..],
                        v: &m.kv[l][aw + hh * hd..],
                        ks: 2 * aw,
                        span: Span::All { keys: m.len },
                        t: tokens[s].len(),
                        row0: first[s],
                        col0: hh * hd,
                        bias: None,
                        drop: None,
                    }
                })
                .collect();
            attend_into(&heads, hd, scale, aw, y, false);
        };
        match &self.arch {
            Arch::T5 {
                ffn,
                eps,
                dec_final,
                ..
            } => {
                // Pre-norm blocks with a cross-attention sublayer between the two.
                let eps = *eps;
                let shape = t5_shape(c, nh, hd, spec.decoder_inner, *ffn, eps);
                let mut bufs = block::Buffers::new(&shape, n);
                let first_norm = self.decoder.first().map_or(dec_final, |l| &l.block.norm1);
                bufs.first_norm(&x, first_norm.weights(), eps, n);
                for (l, layer) in self.decoder.iter().enumerate() {
                    let (b, cr, bf) = (&layer.block, &layer.cross, &mut bufs);
                    let first = block::First {
                        w: Rhs::Q(&b.qkv.w),
                        b: b.qkv.b.as_deref(),
                        width: w,
                    };
                    let sub = block::Sublayer {
                        res: &x[..],
                        out: &mut bf.mid[..],
                        next: cr
                            .norm
                            .weights()
                            .into(eps, &mut bf.h_next[..], &mut bf.st_next[..]),
                        drop: None,
                    };
                    let attend = |qkv: &mut [f32], y: &mut [f32]| {
                        self_heads(l, qkv, states, y);
                        Ok(())
                    };
                    let proj = (Rhs::Q(&b.proj.w), b.proj.b.as_deref());
                    let bufs2 = (&mut bf.qkv[..], &mut bf.atty[..]);
                    let Ok(()) = block::attention(
                        &mut block::Cpu(&mut bf.panels),
                        &shape,
                        first,
                        proj,
                        &bf.h,
                        bufs2,
                        (n, n),
                        attend,
                        sub,
                    );
                    let first = block::First {
                        w: Rhs::Q(&cr.q.w),
                        b: cr.q.b.as_deref(),
                        width: aw,
                    };
                    let sub = block::Sublayer {
                        res: &bf.mid[..],
                        out: &mut bf.x_out[..],
                        next: b
                            .norm2
                            .weights()
                            .into(eps, &mut bf.ln2[..], &mut bf.ln2_stats[..]),
                        drop: None,
                    };
                    let attend = |q: &mut [f32], y: &mut [f32]| {
                        cross_heads(l, q, y);
                        Ok(())
                    };
                    let proj = (Rhs::Q(&cr.proj.w), cr.proj.b.as_deref());
                    let bufs2 = (&mut bf.qkv[..], &mut bf.atty[..]);
                    let Ok(()) = block::attention(
                        &mut block::Cpu(&mut bf.panels),
                        &shape,
                        first,
                        proj,
                        &bf.h_next,
                        bufs2,
                        (n, n),
                        attend,
                        sub,
                    );
                    let next = self
                        .decoder
                        .get(l + 1)
                        .map_or(dec_final, |n| &n.block.norm1);
                    let sub = block::Sublayer {
                        res: &bf.x_out[..],
                        out: &mut x[..],
                        next: next.weights().into(eps, &mut bf.h[..], &mut bf.st[..]),
                        drop: None,
                    };
                    let mlp = b.mlp_weights();
                    let bufs2 = (&mut bf.pre[..], &mut bf.act[..]);
                    let Ok(()) = block::mlp(
                        &mut block::Cpu(&mut bf.panels),
                        &shape,
                        &mlp,
                        &bf.ln2,
                        bufs2,
                        false,
                        n,
                        None,
                        sub,
                    );
                }
                // The final norm, which the last sublayer wrote.
                x = std::mem::take(&mut bufs.h);
            }
            Arch::Marian { mlp, .. } => {
                // Post-norm blocks: self-attention, cross-attention, MLP, each followed
                // by its residual sum and norm.
                let mut scratch = Scratch::default();
                let d = Dims { c, nh, eps: 1e-5 };
                let act = Act::of_mlp(*mlp);
                let (mut qkv, mut q, mut y) =
                    (vec![0f32; n * w], vec![0f32; n * aw], vec![0f32; n * aw]);
                for (l, layer) in self.decoder.iter().enumerate() {
                    let (b, cr) = (&layer.block, &layer.cross);
                    b.qkv.apply(&x, n, &mut qkv);
                    self_heads(l, &qkv, states, &mut y);
                    post_norm_step(d, b.attn_tail(), &y, &mut x, &mut scratch);
                    cr.q.apply(&x, n, &mut q);
                    cross_heads(l, &q, &mut y);
                    let tail = post_norm_tail(&cr.proj, &cr.norm);
                    post_norm_step(d, tail, &y, &mut x, &mut scratch);
                    let (m, out) =
                        mlp_forward(d, b.mlp(), act, &x, None, None, &mut scratch, false);
                    m.give(&mut scratch.pool);
                    scratch.pool.give(std::mem::replace(&mut x, out));
                }
            }
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

    /// Logits `[m, vocab]` for decoder hidden states `[m, d_model]` (after the decoder's
    /// final norm, for T5).
    pub fn head(&self, hidden: &[f32]) -> Vec<f32> {
        let m = hidden.len() / self.d_model();
        let mut logits = vec![0f32; m * self.vocab_size()];
        match &self.arch {
            Arch::Marian { final_bias, .. } => {
                matmul(hidden, m, &self.embed, Some(final_bias), &mut logits)
            }
            Arch::T5 {
                head, out_scale, ..
            } => {
                let scaled: Vec<f32>;
                let x = if *out_scale != 1.0 {
                    scaled = hidden.iter().map(|v| v * out_scale).collect();
                    &scaled
                } else {
                    hidden
                };
                matmul(
                    x,
                    m,
                    head.as_ref().unwrap_or(&self.embed),
                    None,
                    &mut logits,
                )
            }
        }
        logits
    }
}
