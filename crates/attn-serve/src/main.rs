//! `attn-serve --model DIR`: serve an attn model over HTTP (see README.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use attn_serve::ServeConfig;
use clap::Parser;

/// Serve a model folder over HTTP: OpenAI-compatible API, playground, metrics.
#[derive(Parser)]
#[command(name = "attn-serve", version)]
struct Args {
    /// Model folder: a GPT-2 or Llama decoder (completions, chat, attention maps) or a
    /// BERT encoder (embeddings).
    #[arg(long)]
    model: PathBuf,
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/ routes (also read from ATTN_API_KEY).
    #[arg(long, env = "ATTN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Sequences decoded at the same time.
    #[arg(long, default_value_t = 16)]
    max_concurrency: usize,
    /// Requests that may wait for a decoding slot; beyond this the answer is 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// The largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    max_tokens_limit: usize,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Seconds a request may take, from arrival to its last token.
    #[arg(long, default_value_t = 300.0)]
    request_timeout: f64,
    /// The model id clients send (default: the folder's name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// Decode sequences one after the other instead of as one batch per step.
    #[arg(long)]
    no_batch: bool,
    /// Longest input, in tokens, for POST /v1/attention.
    #[arg(long, default_value_t = 64)]
    max_attention_tokens: usize,
}

/// Keep freed buffers in the heap (as the attn command does) and cap malloc arenas, so
/// that memory stays flat under many concurrent requests.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let a = Args::parse();
    if !(a.request_timeout.is_finite() && a.request_timeout > 0.0) {
        eprintln!("error: --request-timeout must be a positive number of seconds");
        return ExitCode::FAILURE;
    }
    let cfg = ServeConfig {
        model: a.model,
        model_name: a.served_model_name,
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_concurrency: a.max_concurrency,
        max_queue: a.max_queue,
        max_tokens_limit: a.max_tokens_limit,
        max_body_bytes: a.max_body_bytes,
        request_timeout: Duration::from_secs_f64(a.request_timeout),
        batched: !a.no_batch,
        max_attention_tokens: a.max_attention_tokens,
    };
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let app = match attn_serve::build(cfg) {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        eprintln!("attn-serve: listening on http://{}", listener.local_addr()?);
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("attn-serve: shutting down");
        };
        attn_serve::serve(listener, app, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
