//! The decoder engine: one pre-norm Transformer decoder stack, written once, that every
//! decoder-only family runs on. A family is a configuration of it ([`DecoderSpec`]:
//! which norm, which positions, which MLP, how many key/value heads) plus the names its
//! Hugging Face checkpoints give the tensors ([`families`]).
//!
//! - `block` and `sublayers` (crate-internal): the layers, each written once and run by
//!   inference and training alike — the pre-norm block (GPT-2, Llama, Qwen2, Mistral,
//!   T5) and the post-norm sublayers (BERT and its relatives, Marian), over one runner
//!   of attention heads.
//! - [`decoder`]: the stack for inference — weights in their product layout (f32, f16,
//!   8- or 4-bit blocks), a key/value cache per sequence (grouped-query aware), one
//!   forward pass over a ragged batch, batched generation, attention maps.
//! - [`encoder`]: BERT's post-norm bidirectional stack on the same kernels and layers,
//!   over ragged batches (no padding computed), with pooler, classification head and
//!   sentence embeddings.
//! - [`seq2seq`]: Marian's encoder-decoder — the encoder's post-norm blocks, a decoder
//!   of causal self-attention, cross-attention to each source sentence's keys and
//!   values (computed once per sentence) and an MLP.
//! - [`io`]: reading Hugging Face folders (single or sharded safetensors, f32/f16/bf16,
//!   or the quantized folders `attn quantize` writes) and writing them back.
//!
//! GPT-2 (learned positions, LayerNorm, GELU MLP, biases, tied head) and Llama (rotary
//! positions, RMSNorm, SwiGLU MLP, grouped key/value heads, optional biases, tied or
//! untied head) are the two configurations today.

pub(crate) mod block;
pub mod decoder;
pub mod encoder;
pub mod families;
pub mod io;
pub mod seq2seq;
pub(crate) mod sublayers;

pub use decoder::{Decoder, DecoderState, Want};
pub use encoder::{Encoder, Pooling};
pub use seq2seq::{Memory, Seq2Seq};

use crate::kernels::cpu::Rope;
use crate::models::gpt2::Gpt2Config;
use crate::models::llama::LlamaConfig;
use crate::Result;

/// Error unless `needed` positions fit a model made for `limit`.
pub(crate) fn check_positions(needed: usize, limit: usize) -> Result<()> {
    if needed > limit {
        return Err(crate::Error::invalid(
            "sequence length",
            format!("{needed} positions exceed the model's context of {limit}"),
        ));
    }
    Ok(())
}

/// Each sequence's first row and length in a ragged batch of sequences `lens` long.
pub(crate) fn spans(lens: &[usize]) -> Vec<(usize, usize)> {
    row_starts(lens.iter().copied())
        .into_iter()
        .zip(lens.iter().copied())
        .collect()
}

/// The first row of each sequence of a ragged batch (sequences stacked row after row),
/// from their lengths.
pub(crate) fn row_starts(lens: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut acc = 0;
    lens.into_iter()
        .map(|len| {
            let first = acc;
            acc += len;
            first
        })
        .collect()
}

/// The Hugging Face `model_type`s of the decoders the engine runs.
pub const DECODER_TYPES: [&str; 4] = ["gpt2", "llama", "mistral", "qwen2"];

/// The model families the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gpt2,
    /// Llama, and Mistral and Qwen2, which differ from it in configuration alone.
    Llama,
}

impl Family {
    /// The family of a Hugging Face `model_type`.
    pub fn of_model_type(model_type: &str) -> Option<Family> {
        match model_type {
            "gpt2" => Some(Family::Gpt2),
            "llama" | "mistral" | "qwen2" => Some(Family::Llama),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Gpt2 => "gpt2",
            Family::Llama => "llama",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `(x − mean)/√(var + ε)·w + b`.
    Layer,
    /// `x/√(mean(x²) + ε)·w`.
    Rms,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// A learned `[context, d_model]` table added to the token embedding.
    Learned,
    /// Rotary positions on queries and keys (rotate-half convention), with their base
    /// and scaling.
    Rope(Rope),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    Relu,
    /// GELU with the error function.
    GeluErf,
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// SiLU (swish), ungated (Marian's default).
    Silu,
    /// `down(silu(gate(x)) · up(x))`.
    SwiGlu,
    /// `down(act(gate(x)) · up(x))` with another activation (T5 v1.1 and Flan-T5: the
    /// tanh GELU); gate rows first, then up rows, as SwiGLU's.
    Gated(Gate),
}

impl Mlp {
    /// Rows of the first matrix of an MLP `inner` wide: gate and up rows side by side
    /// for the gated MLPs.
    pub fn up_rows(self, inner: usize) -> usize {
        match self {
            Mlp::SwiGlu | Mlp::Gated(_) => 2 * inner,
            _ => inner,
        }
    }
}

/// The activation of a [`Mlp::Gated`] gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Relu,
    GeluErf,
    GeluTanh,
}

/// What the decoder stack needs to know about a model, in family-neutral words.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub family: Family,
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Width of the MLP's hidden layer.
    pub inner: usize,
    /// Longest sequence (positions).
    pub context: usize,
    pub norm: NormKind,
    pub eps: f32,
    pub positions: Positions,
    pub mlp: Mlp,
    /// Biases on the query/key/value projection.
    pub qkv_bias: bool,
    /// A bias on the attention's output projection.
    pub proj_bias: bool,
    /// Biases on the MLP's matrices.
    pub mlp_bias: bool,
    /// The output head is the token embedding.
    pub tied: bool,
    /// Each layer's sliding attention window: a query sees itself and the `w − 1`
    /// positions before it (`None`: every earlier position). One entry per layer.
    pub windows: Vec<Option<usize>>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

impl DecoderSpec {
    pub fn from_gpt2(c: &Gpt2Config) -> Result<Self> {
        c.validate()?;
        Ok(DecoderSpec {
            family: Family::Gpt2,
            vocab_size: c.vocab_size,
            d_model: c.n_embd,
            n_layer: c.n_layer,
            n_head: c.n_head,
            n_kv_head: c.n_head,
            head_dim: c.n_embd / c.n_head,
            inner: c.inner(),
            context: c.n_positions,
            norm: NormKind::Layer,
            eps: c.layer_norm_epsilon as f32,
            positions: Positions::Learned,
            mlp: match c.activation_function.as_str() {
                "relu" => Mlp::Relu,
                "gelu" => Mlp::GeluErf,
                _ => Mlp::GeluTanh,
            },
            qkv_bias: true,
            proj_bias: true,
            mlp_bias: true,
            tied: true,
            windows: vec![None; c.n_layer],
            bos: c.bos_token_id,
            eos: c.eos_token_id,
        })
    }

    pub fn from_llama(c: &LlamaConfig) -> Result<Self> {
        c.validate()?;
        Ok(DecoderSpec {
            family: Family::Llama,
            vocab_size: c.vocab_size,
            d_model: c.hidden_size,
            n_layer: c.num_hidden_layers,
            n_head: c.num_attention_heads,
            n_kv_head: c.kv_heads(),
            head_dim: c.head_dim(),
            inner: c.intermediate_size,
            context: c.context(),
            norm: NormKind::Rms,
            eps: c.rms_norm_eps as f32,
            positions: Positions::Rope(c.rope()?),
            mlp: Mlp::SwiGlu,
            qkv_bias: c.qkv_bias(),
            proj_bias: c.proj_bias(),
            mlp_bias: c.mlp_bias(),
            tied: c.tie_word_embeddings,
            windows: c.windows()?,
            bos: c.bos(),
            eos: c.eos(),
        })
    }

    /// Width of the queries of all heads.
    pub fn q_width(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the keys (or values) of all key/value heads.
    pub fn kv_width(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Width of one row of the fused query/key/value projection.
    pub fn qkv_width(&self) -> usize {
        self.q_width() + 2 * self.kv_width()
    }

    /// Rows of the MLP's first matrix: gate and up side by side for SwiGLU.
    pub fn up_rows(&self) -> usize {
        self.mlp.up_rows(self.inner)
    }
}
