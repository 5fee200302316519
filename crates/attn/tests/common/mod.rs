//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A test input that is absent: a failure, so that no test passes without its data,
/// unless skips were asked for with `ATTN_ALLOW_SKIPS=1` (never under `CI=true`); then
/// `None`, said on stderr.
pub fn missing(what: &str, dir: &std::path::Path) -> Option<PathBuf> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let allowed = std::env::var("ATTN_ALLOW_SKIPS").is_ok_and(|v| v == "1");
    if ci || !allowed {
        panic!(
            "the {what} {} is missing{}: put it there, point the variable at it, or set \
             ATTN_ALLOW_SKIPS=1 to skip the tests that need it",
            dir.display(),
            if ci { " under CI" } else { "" }
        );
    }
    eprintln!(
        "skipping (ATTN_ALLOW_SKIPS=1): no {what} at {}",
        dir.display()
    );
    None
}

/// The shared data folder: `$ATTN_DATA_DIR`, else `../shared/data` beside the workspace.
/// Absent, it is a failure (see [`missing`]).
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.is_dir() {
        return Some(dir);
    }
    missing("shared data folder (ATTN_DATA_DIR)", &dir)
}

/// A fresh empty temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shared models folder (`$ATTN_MODELS_DIR`, else `../shared/models`), with the same
/// rule as [`data_dir`].
pub fn models_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        });
    if dir.is_dir() {
        return Some(dir);
    }
    missing("shared models folder (ATTN_MODELS_DIR)", &dir)
}

/// Copy every file of `src` into a fresh folder `dst`.
pub fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dst);
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

/// The (step, loss) of every training step of a run to its end.
pub fn losses(t: &mut attn::train::Trainer) -> Vec<(usize, f64)> {
    let mut out = vec![];
    t.run(&mut |e| {
        if let attn::train::Event::Step(s) = e {
            out.push((s.step, s.loss))
        }
    })
    .unwrap();
    out
}

/// A small language with structure to learn, written to `path`, and a tiny model and
/// schedule to train on it (dropout on, so that resuming must restore the RNG).
pub fn synthetic_text(path: &std::path::Path) {
    // A small language with structure to learn: words from a fixed list.
    let words = [
        "the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far",
    ];
    let mut rng = attn::rng::Rng::new(9);
    let text: String = (0..3000)
        .map(|i| {
            let w = words[rng.below(words.len())];
            if i % 12 == 11 {
                format!("{w}.\n")
            } else {
                format!("{w} ")
            }
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

pub fn tiny_config(max_iters: usize) -> attn::train::TrainConfig {
    attn::train::TrainConfig {
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        block_size: 16,
        dropout: 0.1,
        batch_size: 4,
        grad_accum: 2,
        max_iters,
        warmup_iters: 2,
        lr_decay_iters: 6,
        eval_interval: 3,
        eval_iters: 2,
        log_interval: 1,
        ..attn::train::TrainConfig::default()
    }
}

/// A tensor of a reference file (the fixtures' `reference.safetensors`, written by
/// transformers through `scripts/make_hf_fixtures.py`): its values as f64, whatever
/// their stored type, and its shape.
pub struct Ref {
    pub v: Vec<f64>,
    pub shape: Vec<usize>,
    pub dtype: safetensors::Dtype,
}

impl Ref {
    pub fn f32(&self) -> Vec<f32> {
        self.v.iter().map(|&x| x as f32).collect()
    }
    /// The values as token ids.
    pub fn ids(&self) -> Vec<u32> {
        self.v.iter().map(|&x| x as u32).collect()
    }
    /// The rows of a matrix of ids.
    pub fn id_rows(&self) -> Vec<Vec<u32>> {
        let cols = *self.shape.last().unwrap();
        self.ids().chunks(cols).map(|c| c.to_vec()).collect()
    }
}

/// Every tensor of a safetensors file, read with the `safetensors` crate alone (not
/// through attn's loaders, which are what the tests check).
pub fn read_reference(path: &std::path::Path) -> std::collections::HashMap<String, Ref> {
    use safetensors::Dtype;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let b = t.data();
            let v: Vec<f64> = match t.dtype() {
                Dtype::F32 => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => b
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                Dtype::F16 => b
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
                Dtype::BF16 => b
                    .chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                    .collect(),
                Dtype::I64 => b
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::I32 => b
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::U32 => b
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::U8 => b.iter().map(|&x| x as f64).collect(),
                other => panic!("{}: {name} has dtype {other:?}", path.display()),
            };
            let (shape, dtype) = (t.shape().to_vec(), t.dtype());
            (name, Ref { v, shape, dtype })
        })
        .collect()
}

/// A fixture of `tests/fixtures/hf`.
pub fn hf_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name)
}

/// CUDA GPU 0, or `None` where none opens (the expected case on CPU machines and in CI),
/// said on stderr with the reason, which must name CUDA; with `ATTN_REQUIRE_GPU` set
/// (the device script sets it) a GPU that does not open fails the test instead.
pub fn gpu_or_skip() -> Option<attn::kernels::cuda::Gpu> {
    match attn::kernels::cuda::Gpu::open(0) {
        Ok(g) => Some(g),
        Err(e) => {
            assert!(
                std::env::var("ATTN_REQUIRE_GPU").is_err(),
                "ATTN_REQUIRE_GPU is set and no GPU opened: {e}"
            );
            assert!(e.to_string().contains("CUDA"), "an unclear error: {e}");
            eprintln!("skipped: no CUDA GPU here ({e})");
            None
        }
    }
}
