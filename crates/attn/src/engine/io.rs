//! Reading a decoder from a Hugging Face folder, and writing one.
//!
//! A folder holds `config.json` and `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), with f32, f16 or bf16 tensors under the family's
//! names ([`super::families`]); or, written by `attn quantize`, each matrix as `NAME.qs`
//! (8- or 4-bit codes) and `NAME.scales` (f16, one per 32 weights).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::decoder::{Decoder, Layer, Linear, Norm};
use super::families::{bias_name, canonical_name, schema, NormNames, Parts, Schema};
use super::{DecoderSpec, Family, Positions};
use crate::checkpoint::{read_json, CONFIG, WEIGHTS};
use crate::kernels::cpu::quant::{Data, QMatrix, WeightType, QK};
use crate::kernels::cpu::rope::RopeTable;
use crate::models::gpt2::Gpt2Config;
use crate::models::llama::LlamaConfig;
use crate::{Error, Result};

/// Safetensors metadata key naming the block format of a quantized folder.
pub const QUANT_KEY: &str = "attn.quantization";

/// Suffixes of a quantized matrix's two tensors: codes and f16 scales.
const QS: &str = ".qs";
const SCALES: &str = ".scales";

/// Tensors by (canonical) name, as f32 with their shapes.
pub type Plain = HashMap<String, (Vec<f32>, Vec<usize>)>;

/// Reads the matrix `name` of `[rows, cols]` from a quantized file.
type QuantSource<'a> = &'a dyn Fn(&str, usize, usize) -> Result<QMatrix>;

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::bad_file(path, msg.into())
}

/// Values of a safetensors tensor as f32 (from f32, f16 or bf16).
fn to_f32(path: &Path, name: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let b = t.data();
    let v: Vec<f32> = match t.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(bad(
                path,
                format!("tensor {name} has dtype {other:?}; expected f32, f16 or bf16"),
            ))
        }
    };
    crate::checkpoint::check_finite(path, name, &v)?;
    Ok(v)
}

/// The spec and config of a folder's `config.json`.
pub fn read_spec(dir: &Path) -> Result<(DecoderSpec, serde_json::Value)> {
    let cfg_path = dir.join(CONFIG);
    let value = read_json(&cfg_path)?;
    let spec = spec_of(&value).map_err(|e| bad(&cfg_path, e.to_string()))?;
    Ok((spec, value))
}

/// The spec of a Hugging Face config (by its `model_type`).
pub fn spec_of(value: &serde_json::Value) -> Result<DecoderSpec> {
    let model_type = value
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    match Family::of_model_type(model_type) {
        Some(Family::Gpt2) => {
            let c: Gpt2Config = serde_json::from_value(value.clone())
                .map_err(|e| Error::invalid("config", format!("not a GPT-2 config: {e}")))?;
            DecoderSpec::from_gpt2(&c)
        }
        Some(Family::Llama) => {
            let c: LlamaConfig = serde_json::from_value(value.clone())
                .map_err(|e| Error::invalid("config", format!("not a Llama config: {e}")))?;
            DecoderSpec::from_llama(&c)
        }
        None => Err(Error::invalid(
            "model_type",
            format!(
                "{model_type:?} is not a decoder the engine runs (supported: {})",
                super::DECODER_TYPES.join(", ")
            ),
        )),
    }
}

/// The weight files of a folder: `model.safetensors`, or the shards its index lists.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join(WEIGHTS);
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() || !index.is_file() {
        return Ok(vec![single]);
    }
    let value = read_json(&index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad(&index, "has no weight_map object"))?;
    let mut files: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| bad(&index, "weight_map values must be file names"))?;
        if f.contains('/') || f.contains('\\') || f.starts_with('.') {
            return Err(bad(
                &index,
                format!("{f:?} is not a file name in the folder"),
            ));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Remove the tensor `name` from `t`, checking its shape (errors name `path`).
pub(crate) fn take(t: &mut Plain, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (v, s) = t
        .remove(name)
        .ok_or_else(|| bad(path, format!("tensor {name} {shape:?} is missing")))?;
    if s != shape {
        return Err(bad(
            path,
            format!("tensor {name} has shape {s:?}, expected {shape:?}"),
        ));
    }
    Ok(v)
}

/// An error naming the tensors left in `t` after a model took all it has (sorted).
pub(crate) fn unexpected(t: &Plain, path: &Path) -> Result<()> {
    if t.is_empty() {
        return Ok(());
    }
    let mut left: Vec<&str> = t.keys().map(|s| s.as_str()).collect();
    left.sort_unstable();
    Err(bad(
        path,
        format!(
            "unexpected tensors (the config describes fewer layers or other shapes): {}",
            left.join(", ")
        ),
    ))
}

/// Write f32 tensors as a safetensors file (atomically), names sorted.
pub fn write_plain(path: &Path, tensors: &Plain) -> Result<()> {
    write_plain_as(path, tensors, crate::checkpoint::FloatType::F32)
}

/// Write tensors as a safetensors file of `ty` values (rounded to nearest, ties to
/// even), atomically, names sorted, with Hugging Face's `format: pt` metadata.
pub fn write_plain_as(
    path: &Path,
    tensors: &Plain,
    ty: crate::checkpoint::FloatType,
) -> Result<()> {
    use crate::checkpoint::FloatType;
    use safetensors::tensor::TensorView;
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let dtype = match ty {
        FloatType::F32 => safetensors::Dtype::F32,
        FloatType::F16 => safetensors::Dtype::F16,
        FloatType::Bf16 => safetensors::Dtype::BF16,
    };
    let blobs: Vec<(&String, &Vec<usize>, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let (v, shape) = &tensors[n];
            let bytes: Vec<u8> = match ty {
                FloatType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                FloatType::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                FloatType::Bf16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
            };
            (n, shape, bytes)
        })
        .collect();
    let views = blobs
        .iter()
        .map(|(n, shape, b)| {
            TensorView::new(dtype, shape.to_vec(), b)
                .map(|v| (n.to_string(), v))
                .map_err(|e| Error::invalid("weights", format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::tensor::serialize(views, Some(meta))
        .map_err(|e| bad(path, format!("cannot serialise tensors: {e}")))?;
    crate::checkpoint::write_atomic(path, &bytes)
}

/// Every tensor of one safetensors file as f32, under its own name.
pub fn read_plain(path: &Path) -> Result<Plain> {
    crate::checkpoint::check_weights_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(plain_tensors(&[path.to_path_buf()], &[bytes], |n| Some(n.to_string()))?.0)
}

/// The bytes of a folder's weight files (each checked for size first).
pub(crate) fn read_weight_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Vec<u8>>)> {
    let files = weight_files(dir)?;
    let mut blobs = Vec::with_capacity(files.len());
    for path in &files {
        crate::checkpoint::check_weights_file(path)?;
        blobs.push(std::fs::read(path).map_err(|e| Error::io(path, e))?);
    }
    Ok((files, blobs))
}

/// Every tensor of the files as f32, under the name `key` gives it (`None` skips it);
/// also whether any was stored in f16 or bf16.
pub(crate) fn plain_tensors(
    files: &[PathBuf],
    blobs: &[Vec<u8>],
    key: impl Fn(&str) -> Option<String>,
) -> Result<(Plain, bool)> {
    let mut half_weights = false;
    let mut tensors = HashMap::new();
    for (path, bytes) in files.iter().zip(blobs) {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
        for (name, t) in st.tensors() {
            let Some(key) = key(&name) else { continue };
            half_weights |= matches!(
                t.dtype(),
                safetensors::Dtype::F16 | safetensors::Dtype::BF16
            );
            tensors.insert(key, (to_f32(path, &name, &t)?, t.shape().to_vec()));
        }
    }
    Ok((tensors, half_weights))
}

impl Decoder {
    /// Load a decoder folder of any family the engine runs, storing its matrices as
    /// `ty` (default: as stored, f16 for f16/bf16 folders).
    pub fn load(dir: &Path, ty: Option<WeightType>) -> Result<Self> {
        let d = Self::load_weights(dir, ty);
        crate::kernels::cpu::huge::release_freed();
        d
    }

    fn load_weights(dir: &Path, ty: Option<WeightType>) -> Result<Self> {
        let (spec, hf_config) = read_spec(dir)?;
        let (files, blobs) = read_weight_files(dir)?;
        let path = &files[0];
        if files.len() == 1 {
            let (_, meta) = safetensors::SafeTensors::read_metadata(&blobs[0])
                .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
            if let Some(q) = meta.metadata().as_ref().and_then(|m| m.get(QUANT_KEY)) {
                let qty = WeightType::parse(q)
                    .map_err(|_| bad(path, format!("unknown {QUANT_KEY} {q:?}")))?;
                if let Some(t) = ty.filter(|&t| t != qty) {
                    return Err(Error::invalid(
                        "dtype",
                        format!(
                            "the folder holds {} weights; it cannot be loaded as {}",
                            qty.name(),
                            t.name()
                        ),
                    ));
                }
                let st = safetensors::SafeTensors::deserialize(&blobs[0])
                    .map_err(|e| bad(path, format!("not a valid safetensors file: {e}")))?;
                return Self::from_quantized(spec, hf_config, path, &st, qty);
            }
        }
        let ignored = schema(&spec).ignored;
        let (tensors, half_weights) = plain_tensors(&files, &blobs, |name| {
            let key = canonical_name(spec.family, name);
            (!ignored(&key)).then_some(key)
        })?;
        let ty = ty.unwrap_or(if half_weights {
            WeightType::F16
        } else {
            WeightType::F32
        });
        Self::from_plain(spec, hf_config, path, tensors, ty, None)
    }

    /// Build from a config (`config.json`'s value) and tensors under their Hugging Face
    /// names (extra buffers the family ignores are skipped), storing the matrices as `ty`.
    pub fn from_tensors(
        hf_config: serde_json::Value,
        tensors: Plain,
        ty: WeightType,
    ) -> Result<Self> {
        let spec = spec_of(&hf_config)?;
        let ignored = schema(&spec).ignored;
        let plain = tensors
            .into_iter()
            .filter_map(|(name, t)| {
                let key = canonical_name(spec.family, &name);
                (!ignored(&key)).then_some((key, t))
            })
            .collect();
        Self::from_plain(spec, hf_config, Path::new("(tensors)"), plain, ty, None)
    }

    /// Build from the plain tensors `t` (vectors, and matrices unless `quantized` reads
    /// them).
    fn from_plain(
        spec: DecoderSpec,
        hf_config: serde_json::Value,
        path: &Path,
        mut t: Plain,
        ty: WeightType,
        quantized: Option<QuantSource>,
    ) -> Result<Self> {
        let names = schema(&spec);
        let c = spec.d_model;
        let take = |t: &mut Plain, name: &str, shape: &[usize]| take(t, path, name, shape);
        let norm = |t: &mut Plain, n: &NormNames| -> Result<Norm> {
            Ok(Norm {
                w: take(t, &n.w, &[c])?,
                b: n.b.as_ref().map(|b| take(t, b, &[c])).transpose()?,
            })
        };
        // A matrix from its parts (rows stacked), with their biases.
        let linear = |t: &mut Plain, parts: &Parts, cols: usize, bias: bool| -> Result<Linear> {
            let rows: usize = parts.iter().map(|p| p.1).sum();
            let w = match quantized {
                Some(q) => {
                    let ms = parts
                        .iter()
                        .map(|(name, r)| q(name, *r, cols))
                        .collect::<Result<Vec<_>>>()?;
                    QMatrix::concat_rows(&ms)?
                }
                None => {
                    // Sizes come from the config: nothing is reserved for them before
                    // the file's tensors are found to have them.
                    let mut v = Vec::new();
                    for (name, r) in parts {
                        if names.in_out {
                            v.extend(transpose(&take(t, name, &[cols, *r])?, cols, *r));
                        } else {
                            v.extend(take(t, name, &[*r, cols])?);
                        }
                    }
                    QMatrix::from_f32(&v, rows, cols, ty)?
                }
            };
            let b = if bias {
                let mut v = Vec::new();
                for (name, r) in parts {
                    v.extend(take(t, &bias_name(name), &[*r])?);
                }
                Some(v)
            } else {
                None
            };
            Ok(Linear { w, b })
        };
        // Grown layer by layer: n_layer comes from a file, and a wrong one is found at
        // its first missing tensor, before anything of its size exists.
        let mut layers = Vec::new();
        for ln in &names.layers {
            layers.push(Layer {
                norm1: norm(&mut t, &ln.norm1)?,
                qkv: linear(&mut t, &ln.qkv, c, spec.qkv_bias)?,
                proj: linear(&mut t, &ln.proj, spec.q_width(), spec.proj_bias)?,
                norm2: norm(&mut t, &ln.norm2)?,
                up: linear(&mut t, &ln.up, c, spec.mlp_bias)?,
                down: linear(&mut t, &ln.down, spec.inner, spec.mlp_bias)?,
            });
        }
        let embedding = |t: &mut Plain, name: &str| -> Result<QMatrix> {
            match quantized {
                Some(q) => q(name, spec.vocab_size, c),
                None => QMatrix::from_f32(
                    &take(t, name, &[spec.vocab_size, c])?,
                    spec.vocab_size,
                    c,
                    ty,
                ),
            }
        };
        let embed = embedding(&mut t, &names.embed)?;
        let head = names
            .head
            .as_ref()
            .map(|h| embedding(&mut t, h))
            .transpose()?;
        let positions = names
            .positions
            .as_ref()
            .map(|p| take(&mut t, p, &[spec.context, c]))
            .transpose()?;
        let norm_f = norm(&mut t, &names.norm_f)?;
        if !t.is_empty() {
            let mut left: Vec<&String> = t.keys().collect();
            left.sort();
            let left: Vec<&str> = left.into_iter().map(|s| s.as_str()).collect();
            return Err(bad(
                path,
                format!(
                    "unexpected tensors (the config describes fewer layers or other shapes): {}",
                    left.join(", ")
                ),
            ));
        }
        let rope = match spec.positions {
            Positions::Rope(rope) => Some(RopeTable::new(
                spec.head_dim,
                rope.table_rows(spec.context),
                &rope,
                "max_position_embeddings (its rotary tables)",
            )?),
            Positions::Learned => None,
        };
        Ok(Decoder {
            spec,
            hf_config,
            embed,
            positions,
            rope,
            layers,
            norm_f,
            head,
        })
    }

    fn from_quantized(
        spec: DecoderSpec,
        hf_config: serde_json::Value,
        path: &Path,
        st: &safetensors::SafeTensors<'_>,
        ty: WeightType,
    ) -> Result<Self> {
        use safetensors::Dtype;
        let tensor = |name: &str, dtype: Dtype, shape: &[usize]| -> Result<Vec<u8>> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(path, format!("tensor {name} is missing")))?;
            if t.dtype() != dtype || t.shape() != shape {
                return Err(bad(
                    path,
                    format!(
                        "tensor {name} is {:?} {:?}, expected {dtype:?} {shape:?}",
                        t.dtype(),
                        t.shape()
                    ),
                ));
            }
            Ok(t.data().to_vec())
        };
        let halves = |b: Vec<u8>| -> Vec<u16> {
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let qmatrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            if !cols.is_multiple_of(QK) {
                return Err(bad(
                    path,
                    format!("{name}: {cols} columns is not a multiple of {QK}"),
                ));
            }
            let d = halves(tensor(
                &format!("{name}{SCALES}"),
                Dtype::F16,
                &[rows, cols / QK],
            )?);
            let data = match ty {
                WeightType::Q8 => Data::Q8 {
                    qs: tensor(&format!("{name}{QS}"), Dtype::I8, &[rows, cols])?
                        .into_iter()
                        .map(|b| b as i8)
                        .collect(),
                    d,
                },
                _ => Data::Q4 {
                    qs: tensor(&format!("{name}{QS}"), Dtype::U8, &[rows, cols / 2])?.into(),
                    d,
                },
            };
            Ok(QMatrix { rows, cols, data })
        };
        // Vectors are read through the plain path, matrices from their blocks.
        let mut plain: Plain = HashMap::new();
        for (name, t) in st.tensors() {
            if name.ends_with(QS) || name.ends_with(SCALES) {
                continue;
            }
            let key = canonical_name(spec.family, &name);
            plain.insert(key, (to_f32(path, &name, &t)?, t.shape().to_vec()));
        }
        Self::from_plain(spec, hf_config, path, plain, ty, Some(&qmatrix))
    }

    /// Write the model as a folder: `config.json` and `model.safetensors` (atomically,
    /// config last), plus every other file of `source_dir` (tokenizer, generation config).
    /// f32 and f16 folders use the Hugging Face layout and load in transformers; q8 and q4
    /// folders store each matrix as `NAME.qs` (codes, `[out, in]` or `[out, in/2]`) and
    /// `NAME.scales` (f16, `[out, in/32]`) and load in attn.
    pub fn save(&self, dir: &Path, source_dir: Option<&Path>) -> Result<()> {
        use safetensors::tensor::TensorView;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let ty = self.weight_type();
        let names = schema(&self.spec);
        let blobs = self.blobs(&names);
        let views = blobs
            .iter()
            .map(|(n, dt, shape, b)| {
                TensorView::new(*dt, shape.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::invalid("weights", format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        if ty.is_quantized() {
            meta.insert(QUANT_KEY.to_string(), ty.name().to_string());
        }
        let path = dir.join(WEIGHTS);
        let bytes = safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| Error::bad_file(&path, format!("cannot serialise tensors: {e}")))?;
        crate::checkpoint::write_atomic(&path, &bytes)?;
        if let Some(src) = source_dir {
            copy_side_files(src, dir)?;
        }
        let mut config = self.hf_config.clone();
        let o = config
            .as_object_mut()
            .ok_or_else(|| Error::invalid("config", "is not a JSON object"))?;
        o.remove("attn_quantization");
        let dtype = match ty {
            WeightType::F16 => "float16",
            _ => "float32",
        };
        o.insert("torch_dtype".into(), dtype.into());
        if o.contains_key("dtype") {
            o.insert("dtype".into(), dtype.into());
        }
        if ty.is_quantized() {
            o.insert(
                "attn_quantization".into(),
                serde_json::json!({"dtype": ty.name(), "block_size": QK}),
            );
        }
        crate::checkpoint::write_json(&dir.join(CONFIG), &config)
    }

    /// Every tensor to write, under its Hugging Face name: `(name, dtype, shape, bytes)`.
    fn blobs(&self, names: &Schema) -> Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> {
        use safetensors::Dtype;
        let mut out = Vec::new();
        let f32_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let vector = |out: &mut Vec<_>, name: &str, v: &[f32], shape: Vec<usize>| {
            out.push((name.to_string(), Dtype::F32, shape, f32_bytes(v)));
        };
        // One checkpoint matrix `m` (`[out, in]` here), in the family's layout.
        let matrix = |out: &mut Vec<_>, name: &str, m: &QMatrix, in_out: bool| {
            let (rows, cols) = (m.rows, m.cols);
            let shape = if in_out {
                vec![cols, rows]
            } else {
                vec![rows, cols]
            };
            // f32 and f16 as one tensor in the family's layout; the quantized types as
            // codes and scales.
            let (codes, dtype, width, d): (Vec<u8>, _, _, _) = match &m.data {
                Data::F32(_) => {
                    let v = m.to_f32();
                    let v = if in_out { transpose(&v, rows, cols) } else { v };
                    out.push((name.to_string(), Dtype::F32, shape, f32_bytes(&v)));
                    return;
                }
                Data::F16(_) => {
                    // Row-major again (the values are f16's, so the round trip through
                    // f32 is exact).
                    let v = m.to_f32();
                    let v = if in_out { transpose(&v, rows, cols) } else { v };
                    let b = v
                        .iter()
                        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
                        .collect();
                    out.push((name.to_string(), Dtype::F16, shape, b));
                    return;
                }
                Data::Q8 { qs, d } => (qs.iter().map(|&q| q as u8).collect(), Dtype::I8, cols, d),
                Data::Q4 { qs, d } => (qs.to_vec(), Dtype::U8, cols / 2, d),
            };
            out.push((format!("{name}{QS}"), dtype, vec![rows, width], codes));
            let scales = d.iter().flat_map(|x| x.to_le_bytes()).collect();
            out.push((
                format!("{name}{SCALES}"),
                Dtype::F16,
                vec![rows, cols / QK],
                scales,
            ));
        };
        let linear = |out: &mut Vec<_>, parts: &Parts, l: &Linear| {
            let mut r0 = 0;
            for (name, r) in parts {
                matrix(out, name, &l.w.row_range(r0, r0 + r), names.in_out);
                if let Some(b) = &l.b {
                    out.push((
                        bias_name(name),
                        Dtype::F32,
                        vec![*r],
                        f32_bytes(&b[r0..r0 + r]),
                    ));
                }
                r0 += r;
            }
        };
        let norm = |out: &mut Vec<_>, n: &NormNames, v: &Norm| {
            out.push((n.w.clone(), Dtype::F32, vec![v.w.len()], f32_bytes(&v.w)));
            if let (Some(name), Some(b)) = (&n.b, &v.b) {
                out.push((name.clone(), Dtype::F32, vec![b.len()], f32_bytes(b)));
            }
        };
        matrix(&mut out, &names.embed, &self.embed, false);
        if let (Some(name), Some(h)) = (&names.head, &self.head) {
            matrix(&mut out, name, h, false);
        }
        if let (Some(name), Some(p)) = (&names.positions, &self.positions) {
            vector(
                &mut out,
                name,
                p,
                vec![self.spec.context, self.spec.d_model],
            );
        }
        for (ln, l) in names.layers.iter().zip(&self.layers) {
            norm(&mut out, &ln.norm1, &l.norm1);
            linear(&mut out, &ln.qkv, &l.qkv);
            linear(&mut out, &ln.proj, &l.proj);
            norm(&mut out, &ln.norm2, &l.norm2);
            linear(&mut out, &ln.up, &l.up);
            linear(&mut out, &ln.down, &l.down);
        }
        norm(&mut out, &names.norm_f, &self.norm_f);
        out
    }
}

/// Copy the files of a model folder other than its config and weights (tokenizer,
/// generation config) into `dst`, each atomically.
fn copy_side_files(src: &Path, dst: &Path) -> Result<()> {
    let entries = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(src, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let skip = name == CONFIG
            || name.starts_with("model") && name.contains(".safetensors")
            || name.starts_with('.')
            || name.ends_with(".bin")
            || !entry.path().is_file();
        if !skip {
            let bytes = std::fs::read(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            crate::checkpoint::write_atomic(&dst.join(&*name), &bytes)?;
        }
    }
    Ok(())
}

fn transpose<T: Copy + Default>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}
