//! # attn-serve
//!
//! An HTTP server for attn models: OpenAI-compatible completions, chat completions (with
//! server-sent-event streaming) and embeddings, a browser playground with attention
//! maps, Prometheus metrics. The async runtime (tokio + axum) lives here, not in the
//! `attn` library: the model runs on one dedicated thread ([`engine`]) fed through a
//! bounded queue.

pub mod api;
pub mod backend;
pub mod chat;
pub mod engine;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use attn::tokenizer::Tokenizer;

use crate::chat::ChatTemplate;
use crate::engine::{EngineModel, Job};
use crate::metrics::Metrics;

/// Everything the command line sets.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// The id clients use; the model folder's name by default.
    pub model_name: Option<String>,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Sequences decoded together.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; one more is answered 429.
    pub max_queue: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    pub max_body_bytes: usize,
    /// From arrival to the last token, queueing included.
    pub request_timeout: Duration,
    /// Decode GPT-2 sequences as one batch per step (else one after the other).
    pub batched: bool,
    pub max_attention_tokens: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            model: PathBuf::new(),
            model_name: None,
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_concurrency: 16,
            max_queue: 64,
            max_tokens_limit: 1024,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(300),
            batched: true,
            max_attention_tokens: 64,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub cfg: ServeConfig,
    pub model_id: String,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    /// Context window of a language model; 0 for an encoder.
    pub context: usize,
    pub vocab_size: usize,
    pub bos: Option<u32>,
    pub encoder_max_len: usize,
    pub batched: bool,
    pub jobs: std::sync::mpsc::Sender<Job>,
    pub metrics: Arc<Metrics>,
    pub created: u64,
}

impl AppState {
    pub fn is_lm(&self) -> bool {
        self.context > 0
    }
}

/// Load the model, start its thread, and build the application.
pub fn build(cfg: ServeConfig) -> Result<axum::Router, String> {
    if cfg.max_concurrency == 0 || cfg.max_queue == 0 || cfg.max_tokens_limit == 0 {
        return Err(
            "--max-concurrency, --max-queue and --max-tokens-limit must be at least 1".into(),
        );
    }
    let model_id = cfg.model_name.clone().unwrap_or_else(|| {
        cfg.model
            .canonicalize()
            .unwrap_or_else(|_| cfg.model.clone())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let chat = ChatTemplate::load(&cfg.model)?;
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    // The model is loaded on its own thread (a `dyn CausalLm` need not be `Send`),
    // which reports what the HTTP side needs to know and then runs the jobs.
    let (info_tx, info_rx) = std::sync::mpsc::channel::<Result<ModelInfo, String>>();
    let m = metrics.clone();
    let (dir, conc, batched) = (cfg.model.clone(), cfg.max_concurrency, cfg.batched);
    std::thread::Builder::new()
        .name("attn-model".into())
        .spawn(move || match load(&dir, batched) {
            Ok((model, info)) => {
                let _ = info_tx.send(Ok(info));
                engine::run(model, rx, m, conc);
            }
            Err(e) => {
                let _ = info_tx.send(Err(e));
            }
        })
        .map_err(|e| format!("cannot start the model thread: {e}"))?;
    let info = info_rx
        .recv()
        .map_err(|_| "the model thread stopped while loading".to_string())??;
    let ModelInfo {
        tokenizer,
        context,
        vocab_size,
        bos,
        encoder_max_len,
        batched,
    } = info;
    let state = Arc::new(AppState {
        cfg,
        model_id,
        tokenizer,
        chat,
        context,
        vocab_size,
        bos,
        encoder_max_len,
        batched,
        jobs: tx,
        metrics,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    Ok(http::router(state))
}

struct ModelInfo {
    tokenizer: Tokenizer,
    context: usize,
    vocab_size: usize,
    bos: Option<u32>,
    encoder_max_len: usize,
    batched: bool,
}

fn load(dir: &std::path::Path, batched: bool) -> Result<(EngineModel, ModelInfo), String> {
    let dev = candle_core::Device::Cpu;
    let config = attn::checkpoint::read_config(dir).map_err(|e| e.to_string())?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model_type == "bert" {
        let bert = attn::checkpoint::load_bert(dir, &dev).map_err(|e| e.to_string())?;
        let info = ModelInfo {
            tokenizer: bert.tokenizer.clone(),
            context: 0,
            vocab_size: bert.model.config.vocab_size,
            bos: None,
            encoder_max_len: bert.max_len,
            batched: false,
        };
        return Ok((EngineModel::Bert(bert), info));
    }
    let (backend, tokenizer) = if model_type == "gpt2" {
        let (engine, tokenizer) =
            attn::checkpoint::load_gpt2_engine(dir).map_err(|e| e.to_string())?;
        (backend::Backend::gpt2(engine, batched), tokenizer)
    } else {
        let lm = attn::checkpoint::load_causal_lm_graph(dir, &dev).map_err(|e| e.to_string())?;
        (backend::Backend::interleaved(lm.model), lm.tokenizer)
    };
    let info = ModelInfo {
        tokenizer: tokenizer.clone(),
        context: backend.context(),
        vocab_size: backend.vocab_size(),
        bos: backend.bos(),
        encoder_max_len: 0,
        batched: backend.is_batched(),
    };
    Ok((EngineModel::Lm { backend, tokenizer }, info))
}

/// Serve `app` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Start a server on a background thread (its own runtime) and return its address:
/// for tests and for embedding in other programs. `cfg.port` 0 picks a free port.
pub fn spawn(cfg: ServeConfig) -> Result<SocketAddr, String> {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let app = build(cfg)?;
    let std_listener =
        std::net::TcpListener::bind(&addr).map_err(|e| format!("cannot bind {addr}: {e}"))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let local = std_listener.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("attn-http".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let _ = serve(listener, app, std::future::pending()).await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
