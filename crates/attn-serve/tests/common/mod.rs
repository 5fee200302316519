//! A tiny GPT-2 model folder, a server on an ephemeral port, and a raw HTTP/1.1 client
//! over `TcpStream` (no client library: the bytes on the wire are what is tested).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use attn::checkpoint::save_random_gpt2;
use attn::models::gpt2::Gpt2Config;
use attn::tokenizer::Tokenizer;
use attn_serve::ServeConfig;

pub const TEXT: &str = "ROMEO: But soft, what light through yonder window breaks?\nJULIET: O Romeo, Romeo! wherefore art thou Romeo?\nUser: Assistant: System: x\n";

/// A random 2-layer GPT-2 with a char tokenizer and no end-of-text token, written once
/// per test binary under the temp folder.
pub fn tiny_model(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attn-serve-test-{name}-{}", std::process::id()));
    if dir.join("config.json").is_file() {
        return dir;
    }
    let tok = Tokenizer::train_char(TEXT).unwrap();
    let mut cfg = Gpt2Config::new(tok.vocab_size(), 64, 32, 2, 4);
    cfg.set_dropout(0.0);
    save_random_gpt2(&dir, &cfg, &tok, 7).unwrap();
    dir
}

pub fn start(model: &Path, tweak: impl FnOnce(&mut ServeConfig)) -> SocketAddr {
    let mut cfg = ServeConfig {
        model: model.to_path_buf(),
        port: 0,
        ..Default::default()
    };
    tweak(&mut cfg);
    attn_serve::spawn(cfg).unwrap()
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An OpenAI error object: returns (type, code, param).
    pub fn error(&self) -> (String, Option<String>, Option<String>) {
        let v = self.json();
        let e = &v["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{}",
            self.body
        );
        (
            e["type"].as_str().unwrap().to_string(),
            e["code"].as_str().map(str::to_string),
            e["param"].as_str().map(str::to_string),
        )
    }
}

fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

pub fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

fn dechunk(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
        rest = &rest[eol + 2 + size + 2..];
    }
    out
}

/// Send `request` as it is and read the whole response (the request should say
/// `Connection: close`, or be one the server closes after).
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // A server may answer (413) and close before reading a large body: ignore the
    // write error then, the answer is what counts.
    let _ = s.write_all(request);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut raw = Vec::new();
    let _ = r.read_to_end(&mut raw);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(&raw) } else { raw };
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

/// A request with exactly the given header lines (no Host or Content-Type added), plus
/// `Connection: close` and, with a body, its Content-Length.
pub fn call_exact(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes)
}

/// One response on a kept-alive connection (its body by Content-Length).
pub fn read_response(r: &mut BufReader<TcpStream>) -> (u16, String) {
    let (status, headers) = read_head(r);
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// Whether the server has closed `s` (end of stream or a reset), looking for at most
/// `wait`; data the server sent before closing is skipped.
pub fn is_closed(s: &mut TcpStream, wait: Duration) -> bool {
    let t = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = wait
            .saturating_sub(t.elapsed())
            .max(Duration::from_millis(1));
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if t.elapsed() >= wait {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// One request, the whole response read (Connection: close).
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    raw(addr, &request_bytes(addr, method, path, headers, body))
}

pub fn post(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Response {
    call(addr, "POST", path, &[], body.to_string().as_bytes())
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    call(addr, "GET", path, &[], b"")
}

/// A streaming request kept open: read its server-sent events one at a time.
pub struct Stream {
    pub status: u16,
    reader: BufReader<TcpStream>,
}

impl Stream {
    pub fn open(addr: SocketAddr, path: &str, body: &serde_json::Value) -> Stream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(&request_bytes(
            addr,
            "POST",
            path,
            &[],
            body.to_string().as_bytes(),
        ))
        .unwrap();
        let mut reader = BufReader::new(s);
        let (status, _) = read_head(&mut reader);
        Stream { status, reader }
    }

    /// The next `data:` payload (chunk-size lines of the transfer encoding skipped).
    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.strip_prefix("data: ") {
                return Some(d.trim_end().to_string());
            }
        }
    }
}

/// The value of an unlabelled metric or of one with the given label text, or `None`
/// when /metrics does not have that series.
pub fn try_metric(addr: SocketAddr, name_and_labels: &str) -> Option<f64> {
    let text = get(addr, "/metrics").body;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{name_and_labels}: {v:?} is not a number ({e})"))
        })
}

/// The value of a series that must be there: a series that disappears (or is renamed)
/// fails the test instead of reading as 0.
pub fn metric(addr: SocketAddr, name_and_labels: &str) -> f64 {
    try_metric(addr, name_and_labels)
        .unwrap_or_else(|| panic!("/metrics has no series {name_and_labels}"))
}

/// Wait (up to 30 s) until `f` holds.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
