//! The Hugging Face model folder: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `generation_config.json`. Every file is written atomically (a temporary file in the
//! same folder, flushed, then renamed over the old one), so a run killed at any moment
//! leaves the previous complete file in place.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::models::llama::{Llama, LlamaConfig};
use crate::models::CausalLm;
use crate::nn::{ParamBuilder, Params};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";

/// The largest JSON file (config, generation config, index) read from a model folder.
pub const MAX_JSON_BYTES: u64 = 256 << 20;

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Write a JSON value, pretty-printed, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).expect("JSON values serialise");
    s.push('\n');
    write_atomic(path, s.as_bytes())
}

/// Read and parse a JSON file, naming it in any error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::guard::read_file(path, MAX_JSON_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::bad_file(path, format!("not valid UTF-8 JSON: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
}

/// Serialise tensors as safetensors (with HF's `format: pt` metadata), atomically.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let tensors: Vec<(&String, &Tensor)> = tensors.iter().collect();
    let bytes = safetensors::tensor::serialize(tensors, Some(meta))
        .map_err(|e| Error::bad_file(path, format!("cannot serialise tensors: {e}")))?;
    write_atomic(path, &bytes)
}

/// An error naming the first value of tensor `name` that is NaN or infinite: weights
/// like that load "fine" and then print `null` perplexities or garbage text.
pub fn check_finite(path: &Path, name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::bad_file(
            path,
            format!(
                "tensor {name} holds {} at index {i}: the weights are corrupt (NaN or infinite values)",
                values[i]
            ),
        )),
    }
}

/// A weights file that is a regular file and whose bytes (read whole, then converted)
/// fit in the memory available.
pub fn check_weights_file(path: &Path) -> Result<()> {
    crate::guard::regular_file(path)?;
    let len = std::fs::metadata(path)
        .map_err(|e| Error::io(path, e))?
        .len();
    crate::guard::check_memory(&path.display().to_string(), 2.0 * len as f64)
}

/// Read every tensor of a safetensors file, refusing NaN or infinite weights.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    check_weights_file(path)?;
    let tensors = candle_core::safetensors::load(path, device)
        .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file: {e}")))?;
    for (name, t) in &tensors {
        if t.dtype().is_float() {
            let v: Vec<f32> = t
                .flatten_all()?
                .to_dtype(candle_core::DType::F32)?
                .to_vec1()?;
            check_finite(path, name, &v)?;
        }
    }
    Ok(tensors)
}

/// Every tensor of a model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
pub fn read_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let single = dir.join(WEIGHTS);
    let index = dir.join("model.safetensors.index.json");
    if single.is_file() || !index.is_file() {
        return read_safetensors(&single, device);
    }
    let value = read_json(&index)?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_file(&index, "no weight_map object"))?;
    let mut files: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
    files.sort();
    files.dedup();
    let mut out = HashMap::new();
    for f in files {
        if f.contains('/') || f.contains("..") {
            return Err(Error::bad_file(
                &index,
                format!("shard name {f:?} must be a plain file name"),
            ));
        }
        out.extend(read_safetensors(&dir.join(f), device)?);
    }
    for name in map.keys() {
        if !out.contains_key(name) {
            return Err(Error::bad_file(
                &index,
                format!("lists {name} but no shard holds it"),
            ));
        }
    }
    Ok(out)
}

/// Save a GPT-2 model folder in HF layout.
pub fn save_gpt2(
    dir: &Path,
    config: &Gpt2Config,
    params: &Params,
    tokenizer: &Tokenizer,
    generation: &serde_json::Value,
) -> Result<()> {
    save_model_folder(
        dir,
        &config.to_hf_json(),
        &crate::engine::io::plain_of_params(params, |n| Some(n.to_string()))?,
        tokenizer,
        generation,
    )
}

/// Save a model folder in HF layout: `config` is its `config.json`, `tensors` its
/// weights under their HF names.
pub fn save_model_folder(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &crate::engine::io::Plain,
    tokenizer: &Tokenizer,
    generation: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Weights first and config last: a folder is complete once config.json is there.
    crate::engine::io::write_plain(&dir.join(WEIGHTS), tensors)?;
    tokenizer.save(&dir.join(TOKENIZER))?;
    write_json(&dir.join(GENERATION_CONFIG), generation)?;
    write_json(&dir.join(CONFIG), config)
}

/// A loaded causal language model with its tokenizer.
pub struct LoadedGpt2 {
    pub model: Gpt2,
    pub params: Params,
    pub tokenizer: Tokenizer,
    pub generation: serde_json::Value,
    pub dir: PathBuf,
}

/// Read the `model_type` of a model folder's config.
pub fn read_config(dir: &Path) -> Result<serde_json::Value> {
    if !dir.is_dir() {
        return Err(Error::bad_file(dir, "model folder not found"));
    }
    let path = dir.join(CONFIG);
    if !path.is_file() {
        return Err(Error::bad_file(
            &path,
            "missing: a model folder needs config.json",
        ));
    }
    read_json(&path)
}

/// The `model_type` of a config, or an error naming the file.
fn model_type(dir: &Path, value: &serde_json::Value) -> Result<String> {
    value
        .get("model_type")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::bad_file(dir.join(CONFIG), "has no model_type"))
}

/// Build a GPT-2 from a folder's config and weights (no tokenizer needed).
pub fn load_gpt2_model(dir: &Path, device: &Device) -> Result<(Gpt2, Params)> {
    let cfg_path = dir.join(CONFIG);
    let value = read_config(dir)?;
    let mt = model_type(dir, &value)?;
    if mt != "gpt2" {
        return Err(Error::bad_file(
            &cfg_path,
            format!("model_type {mt:?} is not a GPT-2 model (expected \"gpt2\")"),
        ));
    }
    let config: Gpt2Config = serde_json::from_value(value)
        .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid GPT-2 config: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
    let mut pb = ParamBuilder::load(read_weights(dir, device)?, device);
    let model = Gpt2::new(config, &mut pb)
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    let params = pb
        .finish()
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    Ok((model, params))
}

/// Build a Llama from a folder's config and weights (no tokenizer needed).
pub fn load_llama_model(dir: &Path, device: &Device) -> Result<(Llama, Params)> {
    let cfg_path = dir.join(CONFIG);
    let config: LlamaConfig = serde_json::from_value(read_config(dir)?)
        .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid Llama config: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
    let mut pb = ParamBuilder::load(read_weights(dir, device)?, device);
    let model = Llama::new(config, &mut pb)
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    let params = pb
        .finish()
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    Ok((model, params))
}

/// Load a GPT-2 model folder, checking that config, weights and tokenizer agree.
pub fn load_gpt2(dir: &Path, device: &Device) -> Result<LoadedGpt2> {
    let (model, params) = load_gpt2_model(dir, device)?;
    let tokenizer = Tokenizer::from_file(&dir.join(TOKENIZER))?;
    check_vocab(dir, &tokenizer, model.config.vocab_size)?;
    let generation = read_generation(dir)?;
    Ok(LoadedGpt2 {
        model,
        params,
        tokenizer,
        generation,
        dir: dir.to_path_buf(),
    })
}

/// A decoder-only language model of any supported family, with its tokenizer.
pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub params: Params,
    pub tokenizer: Tokenizer,
    pub generation: serde_json::Value,
    pub model_type: String,
}

/// Whether a folder holds 8- or 4-bit weights written by `attn quantize`.
pub fn is_quantized(value: &serde_json::Value) -> bool {
    value.get("attn_quantization").is_some()
}

/// Load a GPT-2 or Llama model folder (any weight type) for generation or scoring, on
/// the decoder engine ([`crate::engine::Decoder`]; `params` is empty).
pub fn load_causal_lm(dir: &Path) -> Result<LoadedLm> {
    let value = read_config(dir)?;
    let model_type = model_type(dir, &value)?;
    if crate::engine::Family::of_model_type(&model_type).is_none() {
        return Err(Error::bad_file(
            dir.join(CONFIG),
            format!("model_type {model_type:?} is not a causal language model attn knows (expected gpt2 or llama)"),
        ));
    }
    let (engine, tokenizer) = load_decoder(dir)?;
    Ok(LoadedLm {
        model: Box::new(engine),
        params: Params::default(),
        tokenizer,
        generation: read_generation(dir)?,
        model_type,
    })
}

/// A decoder folder (GPT-2 or Llama, any weight type) on the engine, with its tokenizer.
pub fn load_decoder(dir: &Path) -> Result<(crate::engine::Decoder, Tokenizer)> {
    let engine = crate::engine::Decoder::load(dir, None)?;
    let tokenizer = Tokenizer::from_file(&dir.join(TOKENIZER))?;
    check_vocab(dir, &tokenizer, engine.vocab_size())?;
    Ok((engine, tokenizer))
}

/// A GPT-2 or Llama folder as a tensor graph, with its parameters (not for quantized
/// folders): the second implementation the engine is tested against, until the graph
/// models go with candle ("One engine, part 2"). Nothing outside tests runs it.
pub fn load_causal_lm_graph(dir: &Path, device: &Device) -> Result<LoadedLm> {
    let value = read_config(dir)?;
    let cfg_path = dir.join(CONFIG);
    let model_type = model_type(dir, &value)?;
    if is_quantized(&value) {
        return Err(Error::bad_file(
            &cfg_path,
            "the folder holds quantized weights (attn quantize), which only the inference engine reads",
        ));
    }
    match model_type.as_str() {
        "gpt2" => {
            let l = load_gpt2(dir, device)?;
            Ok(LoadedLm {
                model: Box::new(l.model),
                params: l.params,
                tokenizer: l.tokenizer,
                generation: l.generation,
                model_type,
            })
        }
        "llama" | "mistral" => {
            let (model, params) = load_llama_model(dir, device)?;
            let tokenizer = Tokenizer::from_file(&dir.join(TOKENIZER))?;
            check_vocab(dir, &tokenizer, model.config.vocab_size)?;
            Ok(LoadedLm {
                model: Box::new(model),
                params,
                tokenizer,
                generation: read_generation(dir)?,
                model_type,
            })
        }
        other => Err(Error::bad_file(
            &cfg_path,
            format!("model_type {other:?} is not a causal language model attn knows (expected gpt2 or llama)"),
        )),
    }
}

fn check_vocab(dir: &Path, tokenizer: &Tokenizer, vocab_size: usize) -> Result<()> {
    let ids = tokenizer.id_limit();
    if ids > vocab_size {
        return Err(Error::bad_file(
            dir.join(TOKENIZER),
            format!(
                "the tokenizer's ids go up to {} but the model's vocab_size is {vocab_size}: they do not belong together",
                ids - 1
            ),
        ));
    }
    Ok(())
}

fn read_generation(dir: &Path) -> Result<serde_json::Value> {
    let gen_path = dir.join(GENERATION_CONFIG);
    if gen_path.is_file() {
        read_json(&gen_path)
    } else {
        Ok(serde_json::json!({}))
    }
}

/// Replace directory `dst` with the complete directory `tmp` so that at every moment
/// either the old or the new one exists whole: `dst` → `dst.old`, `tmp` → `dst`, remove
/// `dst.old`. [`resolve_dir`] finds `dst.old` if a run died between the two renames.
pub fn replace_dir(tmp: &Path, dst: &Path) -> Result<()> {
    let old = old_dir(dst);
    if dst.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        std::fs::rename(dst, &old).map_err(|e| Error::io(dst, e))?;
    }
    std::fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

fn old_dir(dst: &Path) -> PathBuf {
    let mut s = dst.as_os_str().to_owned();
    s.push(".old");
    PathBuf::from(s)
}

/// `dst` if it exists, else the `dst.old` left by a run killed inside [`replace_dir`].
pub fn resolve_dir(dst: &Path) -> Option<PathBuf> {
    if dst.is_dir() {
        Some(dst.to_path_buf())
    } else {
        let old = old_dir(dst);
        old.is_dir().then_some(old)
    }
}

/// A loaded BERT encoder (`BertModel` or `BertForSequenceClassification`) on the
/// inference engine, with its tokenizer.
pub struct LoadedBert {
    pub encoder: crate::engine::Encoder,
    pub tokenizer: Tokenizer,
    /// The longest input in tokens: sentence-transformers' `max_seq_length` when the
    /// folder has `sentence_bert_config.json`, else `max_position_embeddings`.
    pub max_len: usize,
}

pub fn load_bert(dir: &Path) -> Result<LoadedBert> {
    let encoder = crate::engine::Encoder::load(dir)?;
    let tokenizer = Tokenizer::from_file(&dir.join(TOKENIZER))?;
    let limit = encoder.config.max_position_embeddings;
    check_vocab(dir, &tokenizer, encoder.config.vocab_size)?;
    let st = dir.join("sentence_bert_config.json");
    let max_len = if st.is_file() {
        read_json(&st)?
            .get("max_seq_length")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    } else {
        None
    }
    .unwrap_or(limit)
    .min(limit);
    Ok(LoadedBert {
        encoder,
        tokenizer,
        max_len,
    })
}

/// Build a BERT from a folder's config and weights: `BertModel` (bare names) or
/// `BertForSequenceClassification` (`bert.` names and `classifier.*`).
pub fn load_bert_model(dir: &Path, device: &Device) -> Result<(crate::models::bert::Bert, Params)> {
    use crate::models::bert::{Bert, BertConfig};
    let cfg_path = dir.join(CONFIG);
    let value = read_config(dir)?;
    if value.get("model_type").and_then(|v| v.as_str()) != Some("bert") {
        return Err(Error::bad_file(
            &cfg_path,
            "model_type is not \"bert\" (attn embeds with BERT encoders)",
        ));
    }
    let config: BertConfig = serde_json::from_value(value)
        .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid BERT config: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
    let tensors = read_weights(dir, device)?;
    let prefix = if tensors.contains_key("bert.embeddings.word_embeddings.weight") {
        "bert."
    } else {
        ""
    };
    let with_pooler = tensors.contains_key(&format!("{prefix}pooler.dense.weight"));
    let labels = tensors
        .contains_key("classifier.weight")
        .then(|| config.labels());
    let mut pb = ParamBuilder::load(tensors, device);
    let model = Bert::new(config, &mut pb, prefix, with_pooler, labels)
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    let params = pb
        .finish()
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    Ok((model, params))
}

/// A Marian folder's parameters, checked against its config: every tensor the model
/// has, with its shape (the tied and computed copies a checkpoint may hold are skipped),
/// once the inference engine has loaded the folder.
fn marian_params(dir: &Path, device: &Device) -> Result<Params> {
    // Only a folder the engine can run is exported (its config's limits included).
    let config = crate::engine::Seq2Seq::load(dir)?.config;
    let mut pb = ParamBuilder::load(read_weights(dir, device)?, device);
    let weights = |e: Error| Error::bad_file(dir.join(WEIGHTS), e.to_string());
    for (name, shape) in crate::train::seq2seq::tensor_shapes(&config) {
        pb.get(&name, &shape, crate::nn::Init::Zeros)
            .map_err(weights)?;
    }
    for tied in crate::engine::seq2seq::TIED_COPIES {
        pb.ignore(tied);
    }
    pb.finish().map_err(weights)
}

/// Load any supported model folder just to collect its parameters (for export).
pub fn load_params(dir: &Path, device: &Device) -> Result<Params> {
    let value = read_config(dir)?;
    match value.get("model_type").and_then(|v| v.as_str()) {
        Some("gpt2") => Ok(load_gpt2_model(dir, device)?.1),
        Some("llama") | Some("mistral") => Ok(load_llama_model(dir, device)?.1),
        Some("bert") => Ok(load_bert_model(dir, device)?.1),
        Some("marian") => marian_params(dir, device),
        other => Err(Error::bad_file(
            dir.join(CONFIG),
            format!("model_type {other:?} is not supported (gpt2, llama, bert, marian)"),
        )),
    }
}

/// Copy a model folder to `out` with its weights converted to `dtype`: config (with
/// `torch_dtype` set), weights, and the tokenizer and generation files when present.
pub fn export(dir: &Path, out: &Path, dtype: candle_core::DType, device: &Device) -> Result<()> {
    let params = load_params(dir, device)?;
    let mut tensors = BTreeMap::new();
    for (name, t) in params.tensors() {
        tensors.insert(name, t.to_dtype(dtype)?);
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_safetensors(&out.join(WEIGHTS), &tensors)?;
    for f in [
        TOKENIZER,
        GENERATION_CONFIG,
        "tokenizer_config.json",
        "special_tokens_map.json",
        "vocab.txt",
    ] {
        let src = dir.join(f);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            write_atomic(&out.join(f), &bytes)?;
        }
    }
    let mut config = read_config(dir)?;
    config["torch_dtype"] = match dtype {
        candle_core::DType::F16 => "float16",
        candle_core::DType::BF16 => "bfloat16",
        _ => "float32",
    }
    .into();
    write_json(&out.join(CONFIG), &config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("attn-atomic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/config.json");
        write_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        write_atomic(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        assert!(leftovers(path.parent().unwrap()).is_empty());
        // A failed write (the target is a non-empty folder, so the rename fails) keeps
        // what was there and removes its temporary file.
        let blocked = dir.join("sub/blocked");
        std::fs::create_dir_all(blocked.join("inside")).unwrap();
        let e = write_atomic(&blocked, b"x").unwrap_err().to_string();
        assert!(e.contains("blocked"), "{e}");
        assert!(blocked.join("inside").is_dir());
        assert!(leftovers(path.parent().unwrap()).is_empty());
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        // A planted symlink is replaced, not written through.
        #[cfg(unix)]
        {
            let victim = dir.join("victim");
            std::fs::write(&victim, b"precious").unwrap();
            let link = dir.join("sub/link.json");
            std::os::unix::fs::symlink(&victim, &link).unwrap();
            write_atomic(&link, b"new").unwrap();
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
            assert!(!link.is_symlink());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
