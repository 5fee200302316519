//! The Hugging Face model folder: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `generation_config.json`. Every file is written atomically (a temporary file in the
//! same folder, flushed, then renamed over the old one), so a run killed at any moment
//! leaves the previous complete file in place.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::models::gpt2::{Gpt2, Gpt2Config};
use crate::nn::{ParamBuilder, Params};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "model.safetensors";
pub const TOKENIZER: &str = "tokenizer.json";
pub const GENERATION_CONFIG: &str = "generation_config.json";

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
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
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

/// Read every tensor of a safetensors file.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    if !path.is_file() {
        return Err(Error::bad_file(path, "file not found"));
    }
    candle_core::safetensors::load(path, device)
        .map_err(|e| Error::bad_file(path, format!("not a valid safetensors file: {e}")))
}

/// Save a GPT-2 model folder in HF layout.
pub fn save_gpt2(
    dir: &Path,
    config: &Gpt2Config,
    params: &Params,
    tokenizer: &Tokenizer,
    generation: &serde_json::Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    // Weights first and config last: a folder is complete once config.json is there.
    write_safetensors(&dir.join(WEIGHTS), &params.tensors())?;
    tokenizer.save(&dir.join(TOKENIZER))?;
    write_json(&dir.join(GENERATION_CONFIG), generation)?;
    write_json(&dir.join(CONFIG), &config.to_hf_json())
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

/// Load a GPT-2 model folder, checking that config, weights and tokenizer agree.
pub fn load_gpt2(dir: &Path, device: &Device) -> Result<LoadedGpt2> {
    let cfg_path = dir.join(CONFIG);
    let value = read_config(dir)?;
    match value.get("model_type").and_then(|v| v.as_str()) {
        Some("gpt2") => {}
        other => {
            return Err(Error::bad_file(
                &cfg_path,
                format!("model_type {other:?} is not a GPT-2 model (expected \"gpt2\")"),
            ))
        }
    }
    let config: Gpt2Config = serde_json::from_value(value)
        .map_err(|e| Error::bad_file(&cfg_path, format!("not a valid GPT-2 config: {e}")))?;
    config
        .validate()
        .map_err(|e| Error::bad_file(&cfg_path, e.to_string()))?;
    let tensors = read_safetensors(&dir.join(WEIGHTS), device)?;
    let mut pb = ParamBuilder::load(tensors, device);
    let model = Gpt2::new(config, &mut pb)?;
    let params = pb
        .finish()
        .map_err(|e| Error::bad_file(dir.join(WEIGHTS), e.to_string()))?;
    let tokenizer = Tokenizer::from_file(&dir.join(TOKENIZER))?;
    if tokenizer.vocab_size() > model.config.vocab_size {
        return Err(Error::bad_file(
            dir.join(TOKENIZER),
            format!(
                "the tokenizer has {} tokens but the model's vocab_size is {}: they do not belong together",
                tokenizer.vocab_size(),
                model.config.vocab_size
            ),
        ));
    }
    let gen_path = dir.join(GENERATION_CONFIG);
    let generation = if gen_path.is_file() {
        read_json(&gen_path)?
    } else {
        serde_json::json!({})
    };
    Ok(LoadedGpt2 {
        model,
        params,
        tokenizer,
        generation,
        dir: dir.to_path_buf(),
    })
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
