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
mod cli;
pub mod conn;
pub mod engine;
pub mod http;
pub mod metrics;
pub mod security;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use attn::tokenizer::Tokenizer;

pub use crate::cli::{config_from_args, main_with_args, Args};
pub use crate::conn::ConnLimits;

use crate::chat::ChatTemplate;
use crate::engine::{EngineModel, Job};
use crate::metrics::Metrics;

/// The longest any of the time limits may be: one day. (Longer ones used to overflow
/// `Instant` arithmetic or `Duration::from_secs_f64`.)
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Everything the command line sets. [`ServeConfig::validate`] (also run by [`build`])
/// checks it.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    /// The id clients use; the model folder's name by default.
    pub model_name: Option<String>,
    pub host: String,
    pub port: u16,
    /// `Authorization: Bearer KEY` required on /v1/ routes. `Some("")` is an error,
    /// never "no key".
    pub api_key: Option<String>,
    /// Host names (no port) accepted in the `Host` header besides the loopback names
    /// and the bound address; `"*"` accepts any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`http://host:port`) allowed to call the API from a browser (CORS);
    /// `"*"` allows any. None by default: no CORS headers at all.
    pub allowed_origins: Vec<String>,
    /// Sequences decoded together.
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; one more is answered 429.
    pub max_queue: usize,
    /// The largest `max_tokens` a request may ask for.
    pub max_tokens_limit: usize,
    pub max_body_bytes: usize,
    /// From arrival to the last token, queueing included.
    pub request_timeout: Duration,
    /// To receive a whole request head, from the connection's accept or the end of its
    /// previous response.
    pub header_timeout: Duration,
    /// How long a connection may wait for the first byte of its next request; zero
    /// turns keep-alive off. (`header_timeout` runs from the same moment, so an idle
    /// connection is closed after the shorter of the two.)
    pub keep_alive_timeout: Duration,
    /// To receive a whole request body once its head is in (408 after).
    pub body_timeout: Duration,
    /// How long a response write may wait for the client to read before the connection
    /// is closed.
    pub write_timeout: Duration,
    /// Open connections at most; see [`conn`] for what happens past it.
    pub max_connections: usize,
    /// Decode the running sequences as one batch per step (else one after the other).
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
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            max_concurrency: 16,
            max_queue: 64,
            max_tokens_limit: 1024,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(300),
            header_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            body_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 256,
            batched: true,
            max_attention_tokens: 64,
        }
    }
}

/// Upper bounds of the numeric settings: past them a value is a mistake (or an attempt
/// to make the server allocate), not a configuration.
const LIMITS: [(&str, usize, usize); 6] = [
    ("--max-concurrency", 1, 1024),
    ("--max-queue", 1, 100_000),
    ("--max-tokens-limit", 1, 1 << 24),
    ("--max-body-bytes", 64, 1 << 30),
    ("--max-attention-tokens", 1, 4096),
    ("--max-connections", 1, 65_536),
];

impl ServeConfig {
    /// Check every setting; the error names the command-line flag.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(key) = &self.api_key {
            check_api_key(key, "the API key")?;
        }
        let values = [
            self.max_concurrency,
            self.max_queue,
            self.max_tokens_limit,
            self.max_body_bytes,
            self.max_attention_tokens,
            self.max_connections,
        ];
        for ((flag, lo, hi), v) in LIMITS.iter().zip(values) {
            if v < *lo || v > *hi {
                return Err(format!("{flag} must be between {lo} and {hi} (got {v})"));
            }
        }
        let times = [
            ("--request-timeout", self.request_timeout, false),
            ("--header-timeout", self.header_timeout, false),
            ("--keep-alive-timeout", self.keep_alive_timeout, true),
            ("--body-timeout", self.body_timeout, false),
            ("--write-timeout", self.write_timeout, false),
        ];
        for (flag, d, zero_ok) in times {
            if d > MAX_TIMEOUT || (d.is_zero() && !zero_ok) {
                return Err(format!(
                    "{flag} must be {} at most {} seconds (got {} s)",
                    if zero_ok { "0 or" } else { "more than 0 and" },
                    MAX_TIMEOUT.as_secs(),
                    d.as_secs_f64()
                ));
            }
        }
        if self.host.trim().is_empty() {
            return Err("--host must not be empty".into());
        }
        security::Access::new(&self.host, &self.allowed_hosts, &self.allowed_origins)?;
        Ok(())
    }

    /// `host:port` to bind, with an IPv6 address in brackets (`--host ::1` works).
    pub fn bind_address(&self) -> String {
        let h = self.host.trim();
        if h.contains(':') && !h.starts_with('[') {
            format!("[{h}]:{}", self.port)
        } else {
            format!("{h}:{}", self.port)
        }
    }

    /// The limits the accept loop applies.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// A key that can be sent and compared: not empty (an empty key used to turn
/// authentication off), no surrounding whitespace (the server trims what it receives),
/// printable ASCII (what an HTTP header carries as text).
pub(crate) fn check_api_key(key: &str, what: &str) -> Result<(), String> {
    if key.trim().is_empty() {
        return Err(format!(
            "{what} is empty; give a key, or none at all to serve without one"
        ));
    }
    if key.trim() != key {
        return Err(format!("{what} starts or ends with whitespace"));
    }
    if !key.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(format!(
            "{what} has characters other than printable ASCII, which an Authorization header cannot carry"
        ));
    }
    Ok(())
}

/// Shared by every handler.
pub struct AppState {
    pub cfg: ServeConfig,
    /// The Host allow-list and CORS origins.
    pub access: security::Access,
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
    cfg.validate()?;
    let access = security::Access::new(&cfg.host, &cfg.allowed_hosts, &cfg.allowed_origins)?;
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
        access,
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
    let config = attn::checkpoint::read_config(dir).map_err(|e| e.to_string())?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if attn::models::bert::EncoderFamily::of_model_type(model_type).is_some() {
        let bert = attn::checkpoint::load_bert(dir).map_err(|e| e.to_string())?;
        let info = ModelInfo {
            tokenizer: bert.tokenizer.clone(),
            context: 0,
            vocab_size: bert.encoder.config.vocab_size,
            bos: None,
            encoder_max_len: bert.max_len,
            batched: false,
        };
        return Ok((EngineModel::Bert(bert), info));
    }
    let (engine, tokenizer) = attn::checkpoint::load_decoder(dir).map_err(|e| e.to_string())?;
    let backend = backend::Backend::new(engine, batched);
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

/// Serve `app` on `listener` under `limits` (header and keep-alive timeouts, the
/// connection cap: see [`conn`]) until `shutdown` completes; then stop accepting and
/// return once the requests in flight are answered.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    conn::serve(listener, app, limits, shutdown).await
}

/// Start a server on a background thread (its own runtime) and return its address:
/// for tests and for embedding in other programs. `cfg.port` 0 picks a free port.
pub fn spawn(cfg: ServeConfig) -> Result<SocketAddr, String> {
    let addr = cfg.bind_address();
    let limits = cfg.conn_limits();
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
                let _ = serve(listener, app, limits, std::future::pending()).await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(local)
}
