//! Marian / the original Transformer (Vaswani et al. 2017), as Hugging Face's
//! `MarianMTModel`: shared source/target embeddings scaled by √d, sinusoidal positions,
//! post-LayerNorm encoder blocks (self-attention, MLP) and decoder blocks (causal
//! self-attention, cross-attention to the encoder, MLP), and an output head tied to the
//! embedding plus `final_logits_bias`. Linear weights are `[out, in]`.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{
    causal_attention, dropout, layer_norm, linear, masked_attention, padding_mask, Init, KvCache,
    Mode, ParamBuilder,
};
use crate::{Error, Result};

fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "swish".into()
}
fn default_drop() -> f32 {
    0.1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarianConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "default_true")]
    pub share_encoder_decoder_embeddings: bool,
    #[serde(default)]
    pub normalize_before: bool,
    #[serde(default = "default_drop")]
    pub dropout: f32,
    #[serde(default)]
    pub attention_dropout: f32,
    #[serde(default)]
    pub activation_dropout: f32,
    pub pad_token_id: u32,
    pub eos_token_id: u32,
    pub decoder_start_token_id: u32,
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
}

impl MarianConfig {
    /// A Transformer ("Attention Is All You Need" layout, post-LN) with Marian's
    /// conventions: shared vocabulary, decoder starting from the pad token.
    #[allow(clippy::too_many_arguments)]
    pub fn transformer(
        vocab_size: usize,
        d_model: usize,
        layers: usize,
        heads: usize,
        ffn: usize,
        max_positions: usize,
        pad: u32,
        eos: u32,
    ) -> Self {
        MarianConfig {
            vocab_size,
            d_model,
            encoder_layers: layers,
            decoder_layers: layers,
            encoder_attention_heads: heads,
            decoder_attention_heads: heads,
            encoder_ffn_dim: ffn,
            decoder_ffn_dim: ffn,
            max_position_embeddings: max_positions,
            activation_function: "relu".into(),
            scale_embedding: true,
            share_encoder_decoder_embeddings: true,
            normalize_before: false,
            dropout: 0.1,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            pad_token_id: pad,
            eos_token_id: eos,
            decoder_start_token_id: pad,
            decoder_vocab_size: Some(vocab_size),
        }
    }

    /// The HF `config.json` content of a `MarianMTModel`.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        let o = v.as_object_mut().unwrap();
        o.insert("model_type".into(), "marian".into());
        o.insert("architectures".into(), serde_json::json!(["MarianMTModel"]));
        o.insert("tie_word_embeddings".into(), true.into());
        o.insert("forced_eos_token_id".into(), self.eos_token_id.into());
        o.insert("is_encoder_decoder".into(), true.into());
        v
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
            ("encoder_ffn_dim", self.encoder_ffn_dim),
            ("decoder_ffn_dim", self.decoder_ffn_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, "must be at least 1"));
            }
        }
        for (name, heads) in [
            ("encoder_attention_heads", self.encoder_attention_heads),
            ("decoder_attention_heads", self.decoder_attention_heads),
        ] {
            if self.d_model % heads != 0 {
                return Err(Error::invalid(
                    name,
                    format!("d_model {} is not divisible by {heads}", self.d_model),
                ));
            }
        }
        if self.d_model % 2 != 0 {
            return Err(Error::invalid(
                "d_model",
                "must be even for sinusoidal positions",
            ));
        }
        if !self.share_encoder_decoder_embeddings
            || self
                .decoder_vocab_size
                .is_some_and(|v| v != self.vocab_size)
        {
            return Err(Error::invalid(
                "share_encoder_decoder_embeddings",
                "separate source and target vocabularies are not supported yet",
            ));
        }
        if self.normalize_before {
            return Err(Error::invalid(
                "normalize_before",
                "pre-LayerNorm Marian models are not supported",
            ));
        }
        if !matches!(
            self.activation_function.as_str(),
            "swish" | "silu" | "gelu" | "gelu_new" | "relu"
        ) {
            return Err(Error::invalid(
                "activation_function",
                format!("{:?} is not supported", self.activation_function),
            ));
        }
        crate::guard::probability("dropout", self.dropout as f64)?;
        crate::guard::probability("attention_dropout", self.attention_dropout as f64)?;
        crate::guard::probability("activation_dropout", self.activation_dropout as f64)?;
        Ok(())
    }
}

struct Attn {
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    out: (Tensor, Tensor),
    ln: (Tensor, Tensor),
}

struct EncoderLayer {
    attn: Attn,
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
    ln: (Tensor, Tensor),
}

struct DecoderLayer {
    self_attn: Attn,
    cross: Attn,
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
    ln: (Tensor, Tensor),
}

pub struct Marian {
    pub config: MarianConfig,
    shared: Tensor,
    final_logits_bias: Tensor,
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    /// Sinusoidal table `[max_positions, d_model]`.
    positions: Tensor,
}

/// Decoding state: the self-attention cache and the cross-attention keys/values,
/// computed once from the encoder output.
pub struct MarianCache {
    pub self_attn: KvCache,
    cross: Vec<(Tensor, Tensor)>,
}

impl MarianCache {
    pub fn len(&self) -> usize {
        self.self_attn.len()
    }
    pub fn is_empty(&self) -> bool {
        self.self_attn.is_empty()
    }

    /// Keep the rows `idx` of the cross-attention keys and values (sentences leaving a
    /// batched search).
    pub fn select_cross(&mut self, idx: &Tensor) -> Result<()> {
        for (k, v) in self.cross.iter_mut() {
            *k = k.index_select(idx, 0)?;
            *v = v.index_select(idx, 0)?;
        }
        Ok(())
    }
}

/// Marian's sinusoidal table `[n, d]` ([`crate::engine::seq2seq::sinusoid_table`]).
pub fn sinusoidal_positions(n: usize, d: usize, device: &Device) -> Result<Tensor> {
    let data = crate::engine::seq2seq::sinusoid_table(n, d)?;
    Ok(Tensor::from_vec(data, (n, d), device)?)
}

impl Marian {
    pub fn new(config: MarianConfig, pb: &mut ParamBuilder) -> Result<Self> {
        config.validate()?;
        let d = config.d_model;
        let normal = Init::Normal { std: 0.02 };
        let lin =
            |pb: &mut ParamBuilder, name: &str, o: usize, i: usize| -> Result<(Tensor, Tensor)> {
                Ok((
                    pb.get(&format!("{name}.weight"), &[o, i], normal)?,
                    pb.get(&format!("{name}.bias"), &[o], Init::Zeros)?,
                ))
            };
        let ln = |pb: &mut ParamBuilder, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                pb.get(&format!("{name}.weight"), &[d], Init::Ones)?,
                pb.get(&format!("{name}.bias"), &[d], Init::Zeros)?,
            ))
        };
        let attn = |pb: &mut ParamBuilder, p: &str, norm: &str| -> Result<Attn> {
            Ok(Attn {
                q: lin(pb, &format!("{p}.q_proj"), d, d)?,
                k: lin(pb, &format!("{p}.k_proj"), d, d)?,
                v: lin(pb, &format!("{p}.v_proj"), d, d)?,
                out: lin(pb, &format!("{p}.out_proj"), d, d)?,
                ln: ln(pb, norm)?,
            })
        };
        let shared = pb.get("model.shared.weight", &[config.vocab_size, d], normal)?;
        let final_logits_bias =
            pb.get("final_logits_bias", &[1, config.vocab_size], Init::Zeros)?;
        for tied in [
            "model.encoder.embed_tokens.weight",
            "model.decoder.embed_tokens.weight",
            "lm_head.weight",
            "model.encoder.embed_positions.weight",
            "model.decoder.embed_positions.weight",
        ] {
            pb.ignore(tied);
        }
        let mut encoder = vec![];
        for l in 0..config.encoder_layers {
            let p = format!("model.encoder.layers.{l}");
            encoder.push(EncoderLayer {
                attn: attn(
                    pb,
                    &format!("{p}.self_attn"),
                    &format!("{p}.self_attn_layer_norm"),
                )?,
                fc1: lin(pb, &format!("{p}.fc1"), config.encoder_ffn_dim, d)?,
                fc2: lin(pb, &format!("{p}.fc2"), d, config.encoder_ffn_dim)?,
                ln: ln(pb, &format!("{p}.final_layer_norm"))?,
            });
        }
        let mut decoder = vec![];
        for l in 0..config.decoder_layers {
            let p = format!("model.decoder.layers.{l}");
            decoder.push(DecoderLayer {
                self_attn: attn(
                    pb,
                    &format!("{p}.self_attn"),
                    &format!("{p}.self_attn_layer_norm"),
                )?,
                cross: attn(
                    pb,
                    &format!("{p}.encoder_attn"),
                    &format!("{p}.encoder_attn_layer_norm"),
                )?,
                fc1: lin(pb, &format!("{p}.fc1"), config.decoder_ffn_dim, d)?,
                fc2: lin(pb, &format!("{p}.fc2"), d, config.decoder_ffn_dim)?,
                ln: ln(pb, &format!("{p}.final_layer_norm"))?,
            });
        }
        let positions = sinusoidal_positions(config.max_position_embeddings, d, shared.device())?;
        Ok(Marian {
            config,
            shared,
            final_logits_bias,
            encoder,
            decoder,
            positions,
        })
    }

    fn act(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self.config.activation_function.as_str() {
            "gelu" => x.gelu_erf()?,
            "gelu_new" => crate::nn::gelu_tanh(x)?,
            "relu" => x.relu()?,
            _ => x.silu()?,
        })
    }

    /// Post-LN residual for an attention output `y` (heads merged):
    /// LayerNorm(x + dropout(out_proj(y))).
    fn attn_residual(&self, x: &Tensor, y: &Tensor, a: &Attn, mode: &mut Mode) -> Result<Tensor> {
        let y = dropout(
            &linear(y, &a.out.0, Some(&a.out.1))?,
            self.config.dropout,
            mode,
        )?;
        layer_norm(&(x + y)?, &a.ln.0, &a.ln.1, 1e-5, mode)
    }

    /// The MLP sub-block with its post-LN residual: LayerNorm(x + fc2(act(fc1(x)))).
    fn ffn(
        &self,
        x: &Tensor,
        fc1: &(Tensor, Tensor),
        fc2: &(Tensor, Tensor),
        ln: &(Tensor, Tensor),
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let h = dropout(
            &self.act(&linear(x, &fc1.0, Some(&fc1.1))?)?,
            cfg.activation_dropout,
            mode,
        )?;
        let h = dropout(&linear(&h, &fc2.0, Some(&fc2.1))?, cfg.dropout, mode)?;
        layer_norm(&(x + h)?, &ln.0, &ln.1, 1e-5, mode)
    }

    fn embed(&self, ids: &Tensor, offset: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let d = self.config.d_model;
        crate::nn::check_positions(offset + t, self.config.max_position_embeddings)?;
        let scale = if self.config.scale_embedding {
            (d as f64).sqrt()
        } else {
            1.0
        };
        let x = (self
            .shared
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, d))?
            * scale)?;
        let pos = self.positions.narrow(0, offset, t)?.to_dtype(x.dtype())?;
        Ok(x.broadcast_add(&pos)?)
    }

    fn heads(&self, x: &Tensor, p: &(Tensor, Tensor), nh: usize) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        Ok(linear(x, &p.0, Some(&p.1))?
            .reshape((b, t, nh, d / nh))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    fn merge(&self, y: &Tensor) -> Result<Tensor> {
        let (b, nh, t, hd) = y.dims4()?;
        Ok(y.transpose(1, 2)?.reshape((b, t, nh * hd))?)
    }

    /// Encoder output `[B, S, d]` for source ids `[B, S]` and mask `[B, S]`.
    pub fn encode(&self, src: &Tensor, src_mask: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let cfg = &self.config;
        let nh = cfg.encoder_attention_heads;
        let mut x = dropout(&self.embed(src, 0)?, cfg.dropout, mode)?;
        let mask = padding_mask(src_mask, x.dtype())?;
        for l in &self.encoder {
            let a = &l.attn;
            let (q, k, v) = (
                self.heads(&x, &a.q, nh)?,
                self.heads(&x, &a.k, nh)?,
                self.heads(&x, &a.v, nh)?,
            );
            let y = self.merge(&masked_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                cfg.attention_dropout,
                mode,
            )?)?;
            x = self.attn_residual(&x, &y, a, mode)?;
            x = self.ffn(&x, &l.fc1, &l.fc2, &l.ln, mode)?;
        }
        Ok(x)
    }

    /// A fresh decoding cache for the encoder output `enc` `[B, S, d]`.
    pub fn new_cache(&self, enc: &Tensor) -> Result<MarianCache> {
        let nh = self.config.decoder_attention_heads;
        let mut cross = vec![];
        for l in &self.decoder {
            cross.push((
                self.heads(enc, &l.cross.k, nh)?,
                self.heads(enc, &l.cross.v, nh)?,
            ));
        }
        Ok(MarianCache {
            self_attn: KvCache::new(self.decoder.len()),
            cross,
        })
    }

    /// Decoder hidden states `[B, T, d]` for target ids `[B, T]` attending to the
    /// encoder output; with a cache, the ids continue the cached positions.
    pub fn decode_hidden(
        &self,
        tgt: &Tensor,
        enc: &Tensor,
        src_mask: &Tensor,
        mut cache: Option<&mut MarianCache>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let nh = cfg.decoder_attention_heads;
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let mut x = dropout(&self.embed(tgt, offset)?, cfg.dropout, mode)?;
        let mask = padding_mask(src_mask, x.dtype())?;
        for (i, l) in self.decoder.iter().enumerate() {
            let a = &l.self_attn;
            let (q, k, v) = (
                self.heads(&x, &a.q, nh)?,
                self.heads(&x, &a.k, nh)?,
                self.heads(&x, &a.v, nh)?,
            );
            let (k, v) = match cache.as_deref_mut() {
                Some(c) => c.self_attn.append(i, &k, &v)?,
                None => (k, v),
            };
            let y = self.merge(&causal_attention(&q, &k, &v, cfg.attention_dropout, mode)?)?;
            x = self.attn_residual(&x, &y, a, mode)?;

            let c = &l.cross;
            let q = self.heads(&x, &c.q, nh)?;
            let (k, v) = match cache.as_deref() {
                Some(cache) => cache.cross[i].clone(),
                None => (self.heads(enc, &c.k, nh)?, self.heads(enc, &c.v, nh)?),
            };
            let y = self.merge(&masked_attention(
                &q,
                &k,
                &v,
                Some(&mask),
                cfg.attention_dropout,
                mode,
            )?)?;
            x = self.attn_residual(&x, &y, c, mode)?;

            x = self.ffn(&x, &l.fc1, &l.fc2, &l.ln, mode)?;
        }
        Ok(x)
    }

    /// Logits `[B, T, vocab]` for decoder hidden states.
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        Ok(linear(h, &self.shared, None)?.broadcast_add(&self.final_logits_bias)?)
    }

    /// Full teacher-forced forward pass: logits `[B, T, vocab]`.
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt: &Tensor,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let enc = self.encode(src, src_mask, mode)?;
        let h = self.decode_hidden(tgt, &enc, src_mask, None, mode)?;
        self.logits(&h)
    }

    pub fn dtype(&self) -> DType {
        self.shared.dtype()
    }

    pub fn device(&self) -> &candle_core::Device {
        self.shared.device()
    }
}

/// Shift target labels right, starting with `start`: what the decoder reads when it
/// learns to produce `labels` (HF's `shift_tokens_right`).
pub fn shift_right(labels: &[Vec<u32>], start: u32) -> Vec<Vec<u32>> {
    labels
        .iter()
        .map(|row| {
            std::iter::once(start)
                .chain(row.iter().copied().take(row.len().saturating_sub(1)))
                .collect()
        })
        .collect()
}
