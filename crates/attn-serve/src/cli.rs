//! The command line: `attn-serve --model DIR ...` (also `attn serve ...`, which calls
//! [`main_with_args`] in-process).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::{check_api_key, ServeConfig, MAX_TIMEOUT};

/// Serve a model folder over HTTP: OpenAI-compatible API, playground, metrics.
#[derive(Parser, Debug)]
#[command(name = "attn-serve", version)]
pub struct Args {
    /// Model folder: a GPT-2 or Llama decoder (completions, chat, attention maps) or a
    /// BERT encoder (embeddings).
    #[arg(long)]
    pub model: PathBuf,
    /// Address to bind; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/ routes. A key given here shows in
    /// `ps`: prefer --api-key-file or the ATTN_API_KEY environment variable (read when
    /// neither flag is given). An empty key is an error.
    #[arg(long, value_name = "KEY", conflicts_with = "api_key_file")]
    pub api_key: Option<String>,
    /// Read the API key from this file (one line; the trailing newline is dropped).
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<PathBuf>,
    /// Also answer requests whose Host header names NAME (any port); repeatable. By
    /// default only localhost, 127.0.0.1, [::1] and the --host address are accepted
    /// (against DNS rebinding). `*` accepts any host.
    #[arg(long = "allowed-host", value_name = "NAME")]
    pub allowed_hosts: Vec<String>,
    /// Let web pages from ORIGIN (e.g. http://localhost:3000) call the API (CORS);
    /// repeatable; `*` for any. None by default.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,
    /// Sequences decoded at the same time.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Requests that may wait for a decoding slot; beyond this the answer is 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// The largest max_tokens a request may ask for.
    #[arg(long, default_value_t = 1024)]
    pub max_tokens_limit: usize,
    /// Largest request body in bytes (413 above it).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Seconds a request may take, from arrival to its last token.
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = positive_seconds)]
    pub request_timeout: Duration,
    /// Seconds to receive a whole request head, from the connection's start or the end
    /// of its previous response.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = positive_seconds)]
    pub header_timeout: Duration,
    /// Seconds a connection may stay idle waiting for its next request (0: no
    /// keep-alive, one request per connection). The header timeout also runs from the
    /// end of the previous response, so the longer of the two does not matter.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = seconds_or_zero)]
    pub keep_alive_timeout: Duration,
    /// Seconds to receive a whole request body (408 after).
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = positive_seconds)]
    pub body_timeout: Duration,
    /// Seconds a response may wait for the client to read before the connection is
    /// closed.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = positive_seconds)]
    pub write_timeout: Duration,
    /// Open connections at most. Past it the longest-idle connection is closed to make
    /// room; when all are busy a new one is answered 503.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// The model id clients send (default: the folder's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Decode sequences one after the other instead of as one batch per step.
    #[arg(long)]
    pub no_batch: bool,
    /// Longest input, in tokens, for POST /v1/attention.
    #[arg(long, default_value_t = 64)]
    pub max_attention_tokens: usize,
}

fn seconds(s: &str, zero_ok: bool) -> Result<Duration, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    let max = MAX_TIMEOUT.as_secs();
    if !v.is_finite() || v < 0.0 || v > max as f64 || (v == 0.0 && !zero_ok) {
        return Err(format!(
            "{s} is out of range: give {} seconds, at most {max} (one day)",
            if zero_ok { "0 or more" } else { "more than 0" }
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive_seconds(s: &str) -> Result<Duration, String> {
    seconds(s, false)
}

fn seconds_or_zero(s: &str) -> Result<Duration, String> {
    seconds(s, true)
}

/// The key in a key file: the file's text without its trailing line break(s).
fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read --api-key-file {}: {e}", path.display()))?;
    let key = text.trim_end_matches(['\n', '\r']);
    check_api_key(
        key,
        &format!("the key in --api-key-file {}", path.display()),
    )?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0) {
            eprintln!(
                "attn-serve: warning: --api-key-file {} is readable by every user (chmod 600 it)",
                path.display()
            );
        }
    }
    Ok(key.to_string())
}

impl Args {
    /// The configuration these arguments give, the key read from `--api-key`,
    /// `--api-key-file` or `ATTN_API_KEY` (in that order), and everything checked.
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let api_key = match (self.api_key, &self.api_key_file) {
            (Some(k), _) => {
                check_api_key(&k, "--api-key")?;
                Some(k)
            }
            (None, Some(path)) => Some(read_key_file(path)?),
            (None, None) => match std::env::var_os("ATTN_API_KEY") {
                None => None,
                Some(v) => {
                    let k = v
                        .into_string()
                        .map_err(|_| "ATTN_API_KEY is not valid UTF-8".to_string())?;
                    check_api_key(&k, "ATTN_API_KEY")?;
                    Some(k)
                }
            },
        };
        let cfg = ServeConfig {
            model: self.model,
            model_name: self.served_model_name,
            host: self.host,
            port: self.port,
            api_key,
            allowed_hosts: self.allowed_hosts,
            allowed_origins: self.allowed_origins,
            max_concurrency: self.max_concurrency,
            max_queue: self.max_queue,
            max_tokens_limit: self.max_tokens_limit,
            max_body_bytes: self.max_body_bytes,
            request_timeout: self.request_timeout,
            header_timeout: self.header_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            body_timeout: self.body_timeout,
            write_timeout: self.write_timeout,
            max_connections: self.max_connections,
            batched: !self.no_batch,
            max_attention_tokens: self.max_attention_tokens,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parse a command line (the program name first) into a checked configuration, without
/// loading anything: what `attn-serve` would serve with, or the error it would print.
/// Clap's own errors (and `--help`) come back as their rendered text.
pub fn config_from_args<I, T>(args: I) -> Result<ServeConfig, String>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Args::try_parse_from(args)
        .map_err(|e| e.render().to_string())?
        .into_config()
}

/// Keep freed buffers in the heap (as the attn command does) and cap malloc arenas, so
/// that memory stays flat under many concurrent requests.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Raise the soft open-file limit towards the hard one when it is too low for
/// `connections` (each is a descriptor), as servers commonly do; the accept loop lowers
/// its cap to what the limit allows in any case.
fn raise_descriptor_limit(connections: usize) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let want: libc::rlim_t = (connections as libc::rlim_t).saturating_add(256);
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0
                && r.rlim_cur != libc::RLIM_INFINITY
                && r.rlim_cur < want
            {
                let new = if r.rlim_max == libc::RLIM_INFINITY {
                    want
                } else {
                    want.min(r.rlim_max)
                };
                if new > r.rlim_cur {
                    r.rlim_cur = new;
                    libc::setrlimit(libc::RLIMIT_NOFILE, &r);
                }
            }
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = connections;
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The whole `attn-serve` program: parse `args` (the program name first), check them,
/// load the model and serve until Ctrl-C. Errors are printed as `error: ...` lines and
/// give a non-zero exit code (2 for usage errors, as clap does).
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tune_allocator();
    raise_descriptor_limit(cfg.max_connections);
    if cfg.api_key.is_none() {
        let who = if is_loopback(&cfg.host) {
            "every program and user on this machine".to_string()
        } else {
            format!("anyone who can reach {}", cfg.host)
        };
        eprintln!(
            "attn-serve: warning: no API key, so {who} can use this server; set one with --api-key-file PATH or ATTN_API_KEY"
        );
    }
    let addr = cfg.bind_address();
    let limits = cfg.conn_limits();
    let app = match crate::build(cfg) {
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
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {addr}: {e}")))?;
        eprintln!("attn-serve: listening on http://{}", listener.local_addr()?);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!(
                "attn-serve: shutting down after the requests in flight (Ctrl-C again to stop now)"
            );
            let _ = first_tx.send(());
        };
        let again = async move {
            if first_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            let _ = tokio::signal::ctrl_c().await;
        };
        tokio::select! {
            r = crate::serve(listener, app, limits, shutdown) => r,
            _ = again => {
                eprintln!("attn-serve: stopped");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_serve_config() {
        let c = config_from_args(["attn-serve", "--model", "m"]).unwrap();
        let d = ServeConfig::default();
        assert_eq!(c.host, d.host);
        assert_eq!(c.port, d.port);
        assert_eq!(c.max_concurrency, d.max_concurrency);
        assert_eq!(c.max_queue, d.max_queue);
        assert_eq!(c.max_tokens_limit, d.max_tokens_limit);
        assert_eq!(c.max_body_bytes, d.max_body_bytes);
        assert_eq!(c.request_timeout, d.request_timeout);
        assert_eq!(c.header_timeout, d.header_timeout);
        assert_eq!(c.keep_alive_timeout, d.keep_alive_timeout);
        assert_eq!(c.body_timeout, d.body_timeout);
        assert_eq!(c.write_timeout, d.write_timeout);
        assert_eq!(c.max_connections, d.max_connections);
        assert_eq!(c.max_attention_tokens, d.max_attention_tokens);
        assert_eq!(c.batched, d.batched);
    }

    #[test]
    fn durations_are_checked_at_parse_time() {
        for bad in ["1e300", "1e19", "86401", "-1", "0", "nan", "inf", "soon"] {
            let arg = format!("--request-timeout={bad}");
            let e = config_from_args(["attn-serve", "--model", "m", &arg]).unwrap_err();
            assert!(e.contains("--request-timeout"), "{bad}: {e}");
        }
        let c = config_from_args([
            "attn-serve",
            "--model",
            "m",
            "--request-timeout",
            "86400",
            "--header-timeout",
            "0.25",
            "--keep-alive-timeout",
            "0",
        ])
        .unwrap();
        assert_eq!(c.request_timeout, MAX_TIMEOUT);
        assert_eq!(c.header_timeout, Duration::from_millis(250));
        assert!(c.keep_alive_timeout.is_zero());
        assert!(config_from_args(["attn-serve", "--model", "m", "--header-timeout", "0"]).is_err());
    }

    #[test]
    fn numbers_are_checked_at_start() {
        for (flag, bad) in [
            ("--max-concurrency", "0"),
            ("--max-concurrency", "100000000000"),
            ("--max-queue", "0"),
            ("--max-body-bytes", "0"),
            ("--max-tokens-limit", "18446744073709551615"),
            ("--max-attention-tokens", "0"),
            ("--max-connections", "0"),
            ("--max-connections", "10000000"),
        ] {
            let e = config_from_args(["attn-serve", "--model", "m", flag, bad]).unwrap_err();
            assert!(e.contains(flag), "{flag} {bad}: {e}");
        }
    }

    #[test]
    fn empty_keys_and_key_conflicts_are_errors() {
        for bad in ["", " ", "a\u{e9}b", " key"] {
            let arg = format!("--api-key={bad}");
            let e = config_from_args(["attn-serve", "--model", "m", &arg]).unwrap_err();
            assert!(e.contains("--api-key"), "{bad:?}: {e}");
        }
        let e = config_from_args([
            "attn-serve",
            "--model",
            "m",
            "--api-key",
            "k",
            "--api-key-file",
            "f",
        ])
        .unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let c = config_from_args(["attn-serve", "--model", "m", "--api-key", "k"]).unwrap();
        assert_eq!(c.api_key.as_deref(), Some("k"));
        // The library refuses an empty key too.
        let cfg = ServeConfig {
            api_key: Some(String::new()),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("empty"));
    }

    #[test]
    fn hosts_and_origins_are_checked() {
        assert!(config_from_args(["attn-serve", "--model", "m", "--allowed-host", "a:1"]).is_err());
        assert!(config_from_args([
            "attn-serve",
            "--model",
            "m",
            "--allowed-origin",
            "a.example"
        ])
        .is_err());
        let c = config_from_args([
            "attn-serve",
            "--model",
            "m",
            "--allowed-host",
            "box.lan",
            "--allowed-host",
            "*",
            "--allowed-origin",
            "http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(c.allowed_hosts, ["box.lan", "*"]);
        assert_eq!(c.allowed_origins, ["http://localhost:3000"]);
        let v6 = config_from_args(["attn-serve", "--model", "m", "--host", "::1"]).unwrap();
        assert_eq!(v6.bind_address(), "[::1]:8080");
        assert_eq!(c.bind_address(), "127.0.0.1:8080");
    }
}
