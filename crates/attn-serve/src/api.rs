//! Request parsing and validation, and errors in OpenAI's JSON shape:
//! `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            code: Some("invalid_value"),
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "invalid_request_error", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(500, "server_error", message)
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if self.status == 401 {
            r.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        r
    }
}

/// Typed access to the fields of a JSON request object, with OpenAI-style errors.
pub struct Fields<'a>(pub &'a serde_json::Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn of(v: &'a Value) -> Result<Self, ApiError> {
        v.as_object()
            .map(Fields)
            .ok_or_else(|| ApiError::bad_request("the request body must be a JSON object"))
    }

    /// The field, treating JSON null as absent.
    pub fn get(&self, k: &str) -> Option<&'a Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    pub fn f64(&self, k: &str) -> Result<Option<f64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::invalid(k, format!("'{k}' must be a number"))),
        }
    }

    pub fn uint(&self, k: &str) -> Result<Option<u64>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ApiError::invalid(k, format!("'{k}' must be a non-negative integer"))
            }),
        }
    }

    pub fn bool(&self, k: &str) -> Result<Option<bool>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(k, format!("'{k}' must be true or false"))),
        }
    }

    pub fn str(&self, k: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ApiError::invalid(k, format!("'{k}' must be a string"))),
        }
    }
}

/// Sampling and length settings shared by completions and chat completions.
#[derive(Debug, Clone)]
pub struct GenParams {
    pub max_tokens: usize,
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    pub seed: u64,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    pub ignore_eos: bool,
    /// Token ids that also end the answer (like the model's end-of-text): the chat
    /// template's `eos_token` for chat completions.
    pub end_ids: Vec<u32>,
}

/// Read the sampling parameters. `default_max` applies when `max_tokens` is absent;
/// `limit` is the server's `--max-tokens-limit`.
pub fn gen_params(f: &Fields, default_max: usize, limit: usize) -> Result<GenParams, ApiError> {
    let max_key = if f.get("max_completion_tokens").is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let max_tokens = match f.uint(max_key)? {
        None => default_max.min(limit),
        Some(0) => {
            return Err(ApiError::invalid(
                max_key,
                format!("'{max_key}' must be at least 1"),
            ))
        }
        Some(n) if n > limit as u64 => {
            return Err(ApiError::invalid(
                max_key,
                format!(
                    "'{max_key}' is {n}, above this server's limit of {limit} (--max-tokens-limit)"
                ),
            ))
        }
        Some(n) => n as usize,
    };
    let temperature = f.f64("temperature")?.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("'temperature' is {temperature}; it must be between 0 and 2"),
        ));
    }
    let top_p = f.f64("top_p")?;
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("'top_p' is {p}; it must be in (0, 1]"),
            ));
        }
    }
    let top_k = match f.uint("top_k")? {
        Some(0) => None,
        k => k.map(|k| k as usize),
    };
    if let Some(n) = f.uint("n")? {
        if n != 1 {
            return Err(ApiError::invalid("n", "only n = 1 is supported"));
        }
    }
    for k in ["logprobs", "echo"] {
        let on = match f.get(k) {
            None | Some(Value::Bool(false)) => false,
            Some(_) => true,
        };
        if on {
            return Err(ApiError::invalid(
                k,
                format!("'{k}' is not supported by this server"),
            ));
        }
    }
    let seed = match f.get("seed") {
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        Some(v) => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u,
            (None, Some(i)) => i as u64,
            _ => return Err(ApiError::invalid("seed", "'seed' must be an integer")),
        },
    };
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            let mut v = Vec::new();
            for it in items {
                match it.as_str() {
                    Some(s) => v.push(s.to_string()),
                    None => {
                        return Err(ApiError::invalid(
                            "stop",
                            "'stop' must be a string or a list of strings",
                        ))
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "'stop' must be a string or a list of strings",
            ))
        }
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid("stop", "at most 4 stop sequences"));
    }
    if stop.iter().any(|s| s.is_empty()) {
        return Err(ApiError::invalid(
            "stop",
            "stop sequences must not be empty",
        ));
    }
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(o) => Fields::of(o)
            .map_err(|_| ApiError::invalid("stream_options", "'stream_options' must be an object"))?
            .bool("include_usage")?
            .unwrap_or(false),
    };
    Ok(GenParams {
        max_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        stop,
        stream,
        include_usage,
        ignore_eos: f.bool("ignore_eos")?.unwrap_or(false),
        end_ids: vec![],
    })
}

/// Standard base64 (with padding), for `encoding_format: "base64"` embeddings.
pub fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn parameters_are_checked() {
        let v = json!({"max_tokens": 5000, "temperature": 0.5});
        let e = gen_params(&Fields::of(&v).unwrap(), 16, 256).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("max_tokens")));
        let v = json!({"temperature": "hot"});
        assert_eq!(
            gen_params(&Fields::of(&v).unwrap(), 16, 256)
                .unwrap_err()
                .param
                .as_deref(),
            Some("temperature")
        );
        let v = json!({"stop": "\n\n", "seed": -3, "top_p": 0.9});
        let p = gen_params(&Fields::of(&v).unwrap(), 16, 256).unwrap();
        assert_eq!(
            (p.stop, p.seed, p.max_tokens),
            (vec!["\n\n".to_string()], (-3i64) as u64, 16)
        );
    }
}
