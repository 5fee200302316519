//! The Hugging Face model folder: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `generation_config.json`. Every file is written atomically (a temporary file in the
//! same folder, flushed, then renamed over the old one), so a run killed at any moment
//! leaves the previous complete file in place.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::engine::io::Plain;
use crate::models::CausalLm;
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
    write_atomic(path, json_text(value).as_bytes())
}

/// A JSON value as attn writes it to a file: pretty-printed, ending in a newline.
pub fn json_text(value: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(value).expect("JSON values serialise");
    s.push('\n');
    s
}

/// Read and parse a JSON file, naming it in any error.
pub fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = crate::guard::read_file(path, MAX_JSON_BYTES)?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::bad_file(path, format!("not valid UTF-8 JSON: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_file(path, format!("not valid JSON: {e}")))
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

/// Every tensor of a model folder as f32 under its own name: `model.safetensors`, or
/// the shards listed in `model.safetensors.index.json` (each of which must hold what the
/// index says it does). NaN or infinite weights are refused, naming the tensor.
pub fn read_weights(dir: &Path) -> Result<Plain> {
    let (files, blobs) = crate::engine::io::read_weight_files(dir)?;
    let (tensors, _) = crate::engine::io::plain_tensors(&files, &blobs, |n| Some(n.to_string()))?;
    let index = dir.join("model.safetensors.index.json");
    // The shards an index lists (what `read_weight_files` read instead of one file).
    if !dir.join(WEIGHTS).is_file() && index.is_file() {
        let value = read_json(&index)?;
        if let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) {
            if let Some(name) = map.keys().find(|n| !tensors.contains_key(n.as_str())) {
                return Err(Error::bad_file(
                    &index,
                    format!("lists {name} but no shard holds it"),
                ));
            }
        }
    }
    Ok(tensors)
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

/// Save a GPT-2 of `config` with fresh weights (GPT-2's initialisation, drawn from
/// `seed`) as a model folder with `tokenizer`; returns its number of parameters. For
/// tests, benchmarks and serving checks that need a model but no training run.
pub fn save_random_gpt2(
    dir: &Path,
    config: &crate::models::gpt2::Gpt2Config,
    tokenizer: &Tokenizer,
    seed: u64,
) -> Result<usize> {
    let spec = crate::engine::DecoderSpec::from_gpt2(config)?;
    let model = crate::train::native::NativeDecoder::init(
        &spec,
        (0.0, 0.0, 0.0),
        seed,
        config.initializer_range,
    )?;
    save_model_folder(
        dir,
        &config.to_hf_json(),
        &model.tensors(),
        tokenizer,
        &serde_json::json!({}),
    )?;
    Ok(model.param_count())
}

/// A decoder-only language model of any supported family, with its tokenizer.
pub struct LoadedLm {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub generation: serde_json::Value,
    pub model_type: String,
}

/// Whether a folder holds 8- or 4-bit weights written by `attn quantize`.
pub fn is_quantized(value: &serde_json::Value) -> bool {
    value.get("attn_quantization").is_some()
}

/// Load a GPT-2 or Llama model folder (any weight type) for generation or scoring, on
/// the decoder engine ([`crate::engine::Decoder`]).
pub fn load_causal_lm(dir: &Path) -> Result<LoadedLm> {
    let value = read_config(dir)?;
    let model_type = model_type(dir, &value)?;
    if crate::engine::Family::of_model_type(&model_type).is_none() {
        return Err(Error::bad_file(
            dir.join(CONFIG),
            format!(
                "model_type {model_type:?} is not a causal language model attn runs (supported: {})",
                crate::engine::DECODER_TYPES.join(", ")
            ),
        ));
    }
    let (engine, tokenizer) = load_decoder(dir)?;
    Ok(LoadedLm {
        model: Box::new(engine),
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
    let limit = encoder.config.max_len();
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

/// The floating-point types a folder can be exported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    /// The name transformers writes as `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::Bf16 => "bfloat16",
        }
    }
}

/// Copy a model folder to `out` with its weights converted to `ty` (each value rounded
/// to nearest, ties to even, as PyTorch converts): config (with `torch_dtype` set),
/// weights in one file, and the tokenizer and generation files when present. Only a
/// folder the engine runs is exported (the engine loads it first, so its config's limits
/// and every shape are checked), and only the tensors the model reads: the buffers and
/// tied or computed copies some checkpoints also hold are left out.
pub fn export(dir: &Path, out: &Path, ty: FloatType) -> Result<()> {
    use crate::engine::{encoder, families, seq2seq, Family};
    let value = read_config(dir)?;
    if is_quantized(&value) {
        return Err(Error::bad_file(
            dir.join(CONFIG),
            "the folder holds quantized weights (attn quantize); export reads f32, f16 or bf16 folders",
        ));
    }
    let mt = model_type(dir, &value)?;
    let keep: Box<dyn Fn(&str) -> bool> = if let Some(family) = Family::of_model_type(&mt) {
        let spec = crate::engine::Decoder::load(dir, Some(crate::kernels::WeightType::F32))?.spec;
        let ignored = families::schema(&spec).ignored;
        Box::new(move |n| !ignored(&families::canonical_name(family, n)))
    } else if let Some(family) = crate::models::bert::EncoderFamily::of_model_type(&mt) {
        crate::engine::Encoder::load(dir)?;
        // Every tensor but the integer buffers: a masked-LM head or a base model's
        // pooler, which attn's tasks do not read, is still part of the model exported.
        Box::new(move |n| family.canonical(n).is_none_or(|k| !encoder::is_buffer(&k)))
    } else if mt == "marian" {
        crate::engine::Seq2Seq::load(dir)?;
        Box::new(|n| !seq2seq::is_tied_copy(n))
    } else if mt == "t5" {
        crate::engine::Seq2Seq::load(dir)?;
        Box::new(|n| !seq2seq::is_t5_copy(n))
    } else {
        return Err(Error::bad_file(
            dir.join(CONFIG),
            format!(
                "model_type {mt:?} is not supported (supported: {}, {}, {})",
                crate::engine::DECODER_TYPES.join(", "),
                crate::models::bert::ENCODER_TYPES.join(", "),
                seq2seq::SEQ2SEQ_TYPES.join(", ")
            ),
        ));
    };
    let (files, blobs) = crate::engine::io::read_weight_files(dir)?;
    let (tensors, _) =
        crate::engine::io::plain_tensors(&files, &blobs, |n| keep(n).then(|| n.to_string()))?;
    drop(blobs);
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    crate::engine::io::write_plain_as(&out.join(WEIGHTS), &tensors, ty)?;
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
    let mut config = value;
    config["torch_dtype"] = ty.torch_name().into();
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
