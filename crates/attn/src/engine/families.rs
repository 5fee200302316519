//! Each family's Hugging Face tensor names, mapped onto the decoder stack's weights.
//!
//! The stack keeps the query, key and value projections as one matrix (rows: the
//! queries of every head, then the keys, then the values) and, for SwiGLU, the gate and
//! up projections as one (gate rows, then up rows). A family lists, for each of the
//! stack's matrices, the checkpoint tensors whose rows make it up; a bias, where the
//! family has one, is named as its weight with `.bias` for `.weight`.

use super::{DecoderSpec, Family, NormKind};

/// A matrix of the stack: the checkpoint tensors (name, rows) stacked in order.
pub(crate) type Parts = Vec<(String, usize)>;

/// A norm's weight, and its bias for LayerNorm.
pub(crate) struct NormNames {
    pub w: String,
    pub b: Option<String>,
}

pub(crate) struct LayerNames {
    pub norm1: NormNames,
    pub qkv: Parts,
    pub proj: Parts,
    pub norm2: NormNames,
    pub up: Parts,
    pub down: Parts,
}

pub(crate) struct Schema {
    pub embed: String,
    pub positions: Option<String>,
    /// An untied output head.
    pub head: Option<String>,
    pub norm_f: NormNames,
    pub layers: Vec<LayerNames>,
    /// Matrices stored `[in, out]` (GPT-2's `Conv1D`) rather than `[out, in]`.
    pub in_out: bool,
    /// Tensors a checkpoint may hold that carry nothing the stack uses: causal-mask and
    /// rotary-frequency buffers, a tied head saved anyway.
    pub ignored: fn(&str) -> bool,
}

fn norm(spec: &DecoderSpec, w: String) -> NormNames {
    let b = (spec.norm == NormKind::Layer).then(|| w.replace(".weight", ".bias"));
    NormNames { w, b }
}

/// The name of the bias that goes with weight `w`.
pub(crate) fn bias_name(w: &str) -> String {
    match w.strip_suffix(".weight") {
        Some(stem) => format!("{stem}.bias"),
        None => format!("{w}.bias"),
    }
}

pub(crate) fn schema(spec: &DecoderSpec) -> Schema {
    match spec.family {
        Family::Gpt2 => gpt2(spec),
        Family::Llama => llama(spec),
    }
}

fn gpt2(spec: &DecoderSpec) -> Schema {
    let (c, inner) = (spec.d_model, spec.inner);
    let layers = (0..spec.n_layer)
        .map(|l| {
            let p = format!("transformer.h.{l}");
            LayerNames {
                norm1: norm(spec, format!("{p}.ln_1.weight")),
                qkv: vec![(format!("{p}.attn.c_attn.weight"), 3 * c)],
                proj: vec![(format!("{p}.attn.c_proj.weight"), c)],
                norm2: norm(spec, format!("{p}.ln_2.weight")),
                up: vec![(format!("{p}.mlp.c_fc.weight"), inner)],
                down: vec![(format!("{p}.mlp.c_proj.weight"), c)],
            }
        })
        .collect();
    Schema {
        embed: "transformer.wte.weight".into(),
        positions: Some("transformer.wpe.weight".into()),
        head: None,
        norm_f: norm(spec, "transformer.ln_f.weight".into()),
        layers,
        in_out: true,
        ignored: |n| n.ends_with(".attn.bias") || n.ends_with(".attn.masked_bias"),
    }
}

/// GPT-2 checkpoints written by older code name the tensors without `transformer.`.
pub(crate) fn canonical_name(family: Family, name: &str) -> String {
    match family {
        Family::Gpt2 if !name.starts_with("transformer.") && name != "lm_head.weight" => {
            format!("transformer.{name}")
        }
        _ => name.to_string(),
    }
}

fn llama(spec: &DecoderSpec) -> Schema {
    let (c, q, kv, inner) = (spec.d_model, spec.q_width(), spec.kv_width(), spec.inner);
    let layers = (0..spec.n_layer)
        .map(|l| {
            let p = format!("model.layers.{l}");
            LayerNames {
                norm1: norm(spec, format!("{p}.input_layernorm.weight")),
                qkv: vec![
                    (format!("{p}.self_attn.q_proj.weight"), q),
                    (format!("{p}.self_attn.k_proj.weight"), kv),
                    (format!("{p}.self_attn.v_proj.weight"), kv),
                ],
                proj: vec![(format!("{p}.self_attn.o_proj.weight"), c)],
                norm2: norm(spec, format!("{p}.post_attention_layernorm.weight")),
                up: vec![
                    (format!("{p}.mlp.gate_proj.weight"), inner),
                    (format!("{p}.mlp.up_proj.weight"), inner),
                ],
                down: vec![(format!("{p}.mlp.down_proj.weight"), c)],
            }
        })
        .collect();
    Schema {
        embed: "model.embed_tokens.weight".into(),
        positions: None,
        head: (!spec.tied).then(|| "lm_head.weight".into()),
        norm_f: norm(spec, "model.norm.weight".into()),
        layers,
        in_out: false,
        ignored: if spec.tied {
            |n| n.ends_with("rotary_emb.inv_freq") || n == "lm_head.weight"
        } else {
            |n| n.ends_with("rotary_emb.inv_freq")
        },
    }
}
