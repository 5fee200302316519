//! Routes and handlers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use attn::generate::SamplingConfig;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::api::{gen_params, ApiError, Fields, GenParams};
use crate::chat::{parse_messages, SIMPLE_STOP};
use crate::engine::{Event, Finish, GenJob, Job};
use crate::security::{self, Verdict};
use crate::AppState;

const PLAYGROUND: &str = include_str!("../static/playground.html");

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(playground))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/attention", post(attention))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The label for request metrics: known routes by name, everything else as "other".
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/embeddings" => "/v1/embeddings",
        "/v1/attention" => "/v1/attention",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        _ => "other",
    }
}

fn same_secret(a: &[u8], b: &[u8]) -> bool {
    // Compare every byte whatever the first difference, so timing says little.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every request passes here first: the Host allow-list, CORS preflight, the API key
/// on /v1/ routes, JSON-only POST bodies (see [`crate::security`]); then the handler;
/// then CORS headers for an allowed origin and request counting by endpoint and status.
async fn guard(State(st): St, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let label = endpoint_label(&path);
    let origin = req.headers().get(header::ORIGIN).cloned();
    let answer = {
        let checks: [&dyn Fn() -> Verdict; 4] = [
            &|| security::check_host(&st.access, req.headers(), req.uri()),
            &|| security::preflight(&st.access, req.method(), req.headers()),
            &|| check_key(&st, &path, req.headers()),
            &|| security::check_content_type(req.method(), req.headers()),
        ];
        checks.iter().find_map(|check| match check() {
            Verdict::Answer(r) => Some(r),
            Verdict::Pass => None,
        })
    };
    let mut resp = match answer {
        Some(r) => r,
        None => next.run(req).await,
    };
    security::add_cors(&st.access, origin.as_ref(), &mut resp);
    st.metrics.request(label, resp.status().as_u16());
    resp
}

/// `Authorization: Bearer KEY` on /v1/ routes when the server has a key.
fn check_key(st: &AppState, path: &str, headers: &axum::http::HeaderMap) -> Verdict {
    let Some(key) = &st.cfg.api_key else {
        return Verdict::Pass;
    };
    if !path.starts_with("/v1/") {
        return Verdict::Pass;
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let e = match given {
        Some(g) if same_secret(g.as_bytes(), key.as_bytes()) => return Verdict::Pass,
        Some(_) => ApiError::new(401, "invalid_request_error", "Incorrect API key provided."),
        None => ApiError::new(
            401,
            "invalid_request_error",
            "Missing API key: send it as 'Authorization: Bearer KEY'.",
        ),
    };
    Verdict::Answer(e.with_code("invalid_api_key").into_response())
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        format!("Unknown endpoint: {} {}", req.method(), req.uri().path()),
    )
    .with_code("unknown_url")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        405,
        "invalid_request_error",
        format!(
            "Method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
    .with_code("method_not_allowed")
}

async fn playground() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PLAYGROUND,
    )
        .into_response()
}

async fn health(State(st): St) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "model": st.model_id,
        "kind": if st.is_lm() { "causal_lm" } else { "encoder" },
        "batched_decode": st.batched,
        "queue_depth": st.metrics.queue_depth.load(Ordering::Relaxed),
        "active_sequences": st.metrics.active.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn model_card(st: &AppState) -> Value {
    json!({"id": st.model_id, "object": "model", "created": st.created, "owned_by": "attn"})
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&st)]}))
}

async fn model(State(st): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    if id != st.model_id {
        return Err(unknown_model(&id));
    }
    Ok(Json(model_card(&st)))
}

fn unknown_model(name: &str) -> ApiError {
    let mut e = ApiError::new(
        404,
        "invalid_request_error",
        format!("The model '{name}' does not exist"),
    )
    .with_code("model_not_found");
    e.param = Some("model".into());
    e
}

/// Read the body (at most `--max-body-bytes`) and parse it as a JSON object.
async fn read_json(st: &AppState, req: Request) -> Result<Value, ApiError> {
    let limit = st.cfg.max_body_bytes;
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            format!("The request body is larger than this server's limit of {limit} bytes"),
        )
        .with_code("request_too_large")
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A body that trickles in would hold its connection (busy, so never closed to make
    // room under --max-connections) for as long as the client likes: bound it.
    let read = tokio::time::timeout(
        st.cfg.body_timeout,
        axum::body::to_bytes(req.into_body(), limit),
    );
    let bytes = read
        .await
        .map_err(|_| {
            ApiError::new(
                408,
                "invalid_request_error",
                format!(
                    "The request body did not arrive within {} s (--body-timeout)",
                    st.cfg.body_timeout.as_secs_f64()
                ),
            )
            .with_code("request_timeout")
        })?
        .map_err(|e| {
            if std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("length limit"))
                || e.to_string().contains("length limit")
            {
                too_large()
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
        .with_code("invalid_json")
    })?;
    if !v.is_object() {
        return Err(
            ApiError::bad_request("the request body must be a JSON object")
                .with_code("invalid_json"),
        );
    }
    Ok(v)
}

fn check_model(st: &AppState, f: &Fields) -> Result<(), ApiError> {
    match f.str("model")? {
        Some(m) if m != st.model_id => Err(unknown_model(m)),
        _ => Ok(()),
    }
}

fn need_lm(st: &AppState, what: &str) -> Result<(), ApiError> {
    if st.is_lm() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "model",
            format!(
                "the model '{}' is an encoder: it serves embeddings, not {what}",
                st.model_id
            ),
        ))
    }
}

/// Put a job in the bounded queue, or answer 429 when it is full.
fn submit(st: &AppState, job: Job) -> Result<(), ApiError> {
    let before = st.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
    if before >= st.cfg.max_queue {
        st.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            429,
            "rate_limit_exceeded",
            format!(
                "The server is busy: {} requests are already waiting (--max-queue). Retry later.",
                st.cfg.max_queue
            ),
        )
        .with_code("queue_full"));
    }
    st.jobs.send(job).map_err(|_| {
        st.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        ApiError::new(503, "server_error", "the model thread has stopped")
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}-{:x}{:04x}", t & 0xffff_ffff_ffff, n & 0xffff)
}

/// Prompt ids from text, or the model's start token for an empty prompt.
fn encode_prompt(st: &AppState, text: &str, param: &str) -> Result<Vec<u32>, ApiError> {
    let mut ids = st
        .tokenizer
        .encode(text)
        .map_err(|e| ApiError::invalid(param, format!("the prompt cannot be tokenized: {e}")))?;
    if ids.is_empty() {
        let start = st.bos.or_else(|| {
            st.tokenizer
                .encode("\n")
                .ok()
                .and_then(|v| v.first().copied())
        });
        match start {
            Some(id) => ids.push(id),
            None => {
                return Err(ApiError::invalid(
                    param,
                    "the prompt is empty and the model has no start token",
                ))
            }
        }
    }
    Ok(ids)
}

async fn completions(State(st): St, req: Request) -> Response {
    let r = async {
        let body = read_json(&st, req).await?;
        let f = Fields::of(&body)?;
        check_model(&st, &f)?;
        need_lm(&st, "completions")?;
        let p = gen_params(&f, 16, st.cfg.max_tokens_limit)?;
        let ids = match f.get("prompt") {
            None => return Err(ApiError::invalid("prompt", "'prompt' is required")),
            Some(Value::String(s)) => encode_prompt(&st, s, "prompt")?,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                encode_prompt(&st, a[0].as_str().unwrap_or(""), "prompt")?
            }
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_u64) => {
                let ids: Vec<u32> = a
                    .iter()
                    .filter_map(Value::as_u64)
                    .map(|x| x.min(u32::MAX as u64) as u32)
                    .collect();
                if ids.iter().any(|&i| i as usize >= st.vocab_size) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!(
                            "token ids must be below the vocabulary size {}",
                            st.vocab_size
                        ),
                    ));
                }
                ids
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "prompt",
                    "'prompt' must be a string, a list of one string, or a list of token ids",
                ))
            }
        };
        generate(&st, ids, p, false).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn chat_completions(State(st): St, req: Request) -> Response {
    let r = async {
        let body = read_json(&st, req).await?;
        let f = Fields::of(&body)?;
        check_model(&st, &f)?;
        need_lm(&st, "chat completions")?;
        let mut p = gen_params(&f, 256, st.cfg.max_tokens_limit)?;
        let messages = parse_messages(f.get("messages"))?;
        let prompt = st.chat.render(&messages)?;
        if st.chat.is_simple() && p.stop.len() < 4 {
            p.stop.push(SIMPLE_STOP.to_string());
        }
        // A template's end-of-turn token ends the answer, as transformers' generate does
        // with the eos ids of a chat model's generation config.
        if let Some(id) = st
            .chat
            .eos_token()
            .and_then(|t| st.tokenizer.token_to_id(t))
        {
            p.end_ids.push(id);
        }
        let ids = encode_prompt(&st, &prompt, "messages")?;
        generate(&st, ids, p, true).await
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// Formats events as OpenAI response objects or stream chunks.
struct Shape {
    id: String,
    created: u64,
    model: String,
    chat: bool,
    include_usage: bool,
}

fn usage(f: &Finish) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

impl Shape {
    fn object(&self) -> &'static str {
        if self.chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        }
    }

    fn chunk(&self, text: Option<&str>, finish: Option<&str>, role: bool) -> String {
        let choice = if self.chat {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(t) = text {
                delta.insert("content".into(), t.into());
            }
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
        };
        let v = json!({"id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": [choice]});
        format!("data: {v}\n\n")
    }

    fn usage_chunk(&self, f: &Finish) -> String {
        let v = json!({"id": self.id, "object": self.object(), "created": self.created, "model": self.model, "choices": [], "usage": usage(f)});
        format!("data: {v}\n\n")
    }

    /// The SSE lines for one event; the second value says the stream is over.
    fn event(&self, ev: Option<Event>) -> (Vec<String>, bool) {
        match ev {
            Some(Event::Text(t)) => (vec![self.chunk(Some(&t), None, false)], false),
            Some(Event::Done(f)) => {
                let mut out = vec![self.chunk(
                    if self.chat { None } else { Some("") },
                    Some(f.reason),
                    false,
                )];
                if self.include_usage {
                    out.push(self.usage_chunk(&f));
                }
                out.push("data: [DONE]\n\n".into());
                (out, true)
            }
            Some(Event::Error(e)) => (
                vec![format!("data: {}\n\n", e.body()), "data: [DONE]\n\n".into()],
                true,
            ),
            None => {
                let e = ApiError::internal("the generation ended without a result");
                (
                    vec![format!("data: {}\n\n", e.body()), "data: [DONE]\n\n".into()],
                    true,
                )
            }
        }
    }

    fn whole(&self, text: String, f: &Finish) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": f.reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": null, "finish_reason": f.reason})
        };
        json!({
            "id": self.id,
            "object": if self.chat { "chat.completion" } else { "text_completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(f),
        })
    }
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    pending: VecDeque<String>,
    over: bool,
    shape: Shape,
}

async fn generate(
    st: &AppState,
    mut ids: Vec<u32>,
    p: GenParams,
    chat: bool,
) -> Result<Response, ApiError> {
    let prompt_tokens = ids.len();
    let keep = st.context.saturating_sub(1).max(1);
    if ids.len() > keep {
        ids.drain(..ids.len() - keep);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let arrived = Instant::now();
    let sampling = SamplingConfig {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        repetition_penalty: 1.0,
        seed: p.seed,
        ignore_eos: p.ignore_eos,
        vocab_limit: Some(st.tokenizer.vocab_size()),
    };
    sampling
        .validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    submit(
        st,
        Job::Generate(GenJob {
            prompt: ids,
            prompt_tokens,
            max_tokens: p.max_tokens,
            sampling,
            stop: p.stop.clone(),
            end_ids: p.end_ids.clone(),
            arrived,
            // Checked: `Instant + Duration` panics on overflow.
            deadline: arrived.checked_add(st.cfg.request_timeout),
            events: tx,
        }),
    )?;
    let shape = Shape {
        id: request_id(if chat { "chatcmpl" } else { "cmpl" }),
        created: now_secs(),
        model: st.model_id.clone(),
        chat,
        include_usage: p.include_usage,
    };
    if !p.stream {
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done(f)) => return Ok(Json(shape.whole(text, &f)).into_response()),
                Some(Event::Error(e)) => return Err(e),
                None => return Err(ApiError::internal("the generation ended without a result")),
            }
        }
    }
    // Wait for the first event so that a failure before any token (a timeout in the
    // queue, a model error) is an HTTP error status rather than an event.
    let first = rx.recv().await;
    if let Some(Event::Error(e)) = first {
        return Err(e);
    }
    let mut pending = VecDeque::new();
    if chat {
        pending.push_back(shape.chunk(Some(""), None, true));
    }
    let (lines, over) = shape.event(first);
    pending.extend(lines);
    let state = StreamState {
        rx,
        pending,
        over,
        shape,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(line) = s.pending.pop_front() {
                return Some((Ok::<Bytes, Infallible>(Bytes::from(line)), s));
            }
            if s.over {
                return None;
            }
            let ev = s.rx.recv().await;
            let (lines, over) = s.shape.event(ev);
            s.pending.extend(lines);
            s.over = over;
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

async fn embeddings(State(st): St, req: Request) -> Response {
    let r = async {
        let body = read_json(&st, req).await?;
        let f = Fields::of(&body)?;
        check_model(&st, &f)?;
        if st.is_lm() {
            return Err(ApiError::invalid("model", format!("the model '{}' is a language model; embeddings need an encoder such as all-MiniLM-L6-v2", st.model_id)));
        }
        let texts: Vec<&str> = match f.get("input") {
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(ApiError::invalid("input", "'input' must be a string or a non-empty list of strings")),
        };
        if texts.len() > 256 {
            return Err(ApiError::invalid("input", "at most 256 inputs per request"));
        }
        let base64 = match f.str("encoding_format")? {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(ApiError::invalid("encoding_format", format!("'{other}' is not one of float, base64"))),
        };
        if f.get("dimensions").is_some() {
            return Err(ApiError::invalid("dimensions", "'dimensions' is not supported by this model"));
        }
        let mut batch = Vec::with_capacity(texts.len());
        for t in &texts {
            batch.push(
                st.tokenizer
                    .encode_for_model(t, st.encoder_max_len)
                    .map_err(|e| ApiError::invalid("input", format!("cannot tokenize: {e}")))?,
            );
        }
        let tokens: usize = batch.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        submit(&st, Job::Embed { batch, reply })?;
        let vectors = rx.await.map_err(|_| ApiError::internal("the model thread dropped the request"))??;
        let data: Vec<Value> = vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let emb = if base64 {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Value::String(crate::api::base64(&bytes))
                } else {
                    json!(v)
                };
                json!({"object": "embedding", "index": i, "embedding": emb})
            })
            .collect();
        Ok(Json(json!({
            "object": "list",
            "data": data,
            "model": st.model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }))
        .into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/attention {"input": "..."}`: the attention weights of every layer and head
/// for a short input, `attention[layer][head][query][key]`.
async fn attention(State(st): St, req: Request) -> Response {
    let r = async {
        let body = read_json(&st, req).await?;
        let f = Fields::of(&body)?;
        check_model(&st, &f)?;
        need_lm(&st, "attention maps")?;
        let text = f
            .str("input")?
            .ok_or_else(|| ApiError::invalid("input", "'input' (a string) is required"))?;
        let ids = encode_prompt(&st, text, "input")?;
        let max = st.cfg.max_attention_tokens.min(st.context);
        if ids.len() > max {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "the input has {} tokens; attention maps are limited to {max}",
                    ids.len()
                ),
            ));
        }
        let tokens: Vec<String> = ids
            .iter()
            .map(|&id| {
                st.tokenizer
                    .decode(&[id])
                    .unwrap_or_else(|_| format!("#{id}"))
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        submit(
            &st,
            Job::Attention {
                ids: ids.clone(),
                reply,
            },
        )?;
        let maps = rx
            .await
            .map_err(|_| ApiError::internal("the model thread dropped the request"))??;
        let rounded: Vec<Vec<Vec<Vec<f64>>>> = maps
            .iter()
            .map(|l| {
                l.iter()
                    .map(|h| {
                        h.iter()
                            .map(|r| r.iter().map(|&w| (w as f64 * 1e4).round() / 1e4).collect())
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Ok(Json(json!({
            "object": "attention",
            "model": st.model_id,
            "tokens": tokens,
            "token_ids": ids,
            "n_layer": maps.len(),
            "n_head": maps.first().map_or(0, Vec::len),
            "attention": rounded,
        }))
        .into_response())
    }
    .await;
    r.unwrap_or_else(IntoResponse::into_response)
}
