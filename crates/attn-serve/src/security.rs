//! Who may talk to the server from a browser: the `Host` allow-list, the JSON-only rule
//! for POST bodies, and CORS for origins named on the command line.
//!
//! Why each exists, for a server without an API key on loopback:
//!
//! - **JSON only.** A web page can make a browser send a "simple" cross-origin POST
//!   (`text/plain`, form encodings) without asking first; `application/json` is not
//!   simple, so the browser sends a CORS preflight first, which this server only
//!   approves for `--allowed-origin`s. Requiring JSON therefore stops pages from firing
//!   generations (CSRF).
//! - **Host allow-list.** With DNS rebinding a page at `evil.example` makes its own name
//!   resolve to 127.0.0.1 and then reads this server's answers as same-origin. The
//!   browser still sends `Host: evil.example`, so answering only to known names stops it.
//!   A request with *no* Host header (HTTP/1.0) cannot come from a browser, which always
//!   sends one, so it is accepted.
//! - **CORS.** No `Access-Control-*` header is sent unless origins are allowed with
//!   `--allowed-origin`; then only those origins get them (and an answer to preflight).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

/// One allowed host: a DNS name (lower case, no trailing dot) or an address, compared
/// by value so that `[0:0:0:0:0:0:0:1]` and `[::1]` are the same host.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostName {
    Name(String),
    Ip(IpAddr),
}

impl std::fmt::Display for HostName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostName::Name(n) => f.write_str(n),
            HostName::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            HostName::Ip(a) => write!(f, "{a}"),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
}

/// A host without a port: a name, an IPv4 address, or an IPv6 address with or without
/// brackets.
fn parse_bare_host(s: &str) -> Option<HostName> {
    let inner = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    if let Some(v6) = inner {
        return v6.parse::<Ipv6Addr>().ok().map(|a| HostName::Ip(a.into()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(HostName::Ip(ip));
    }
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(is_name_char) {
        return None;
    }
    Some(HostName::Name(name))
}

/// The host part of a `Host` header value (`name`, `name:port`, `[v6]`, `[v6]:port`);
/// `None` when it is malformed.
fn parse_host_header(value: &str) -> Option<HostName> {
    let (host, port) = if value.starts_with('[') {
        let end = value.find(']')?;
        let rest = &value[end + 1..];
        let port = if rest.is_empty() {
            ""
        } else {
            rest.strip_prefix(':')?
        };
        (&value[..=end], port)
    } else {
        match value.split_once(':') {
            Some((h, p)) => (h, p),
            None => (value, ""),
        }
    };
    if !port.chars().all(|c| c.is_ascii_digit()) || port.len() > 5 {
        return None;
    }
    parse_bare_host(host)
}

/// Lower case, no trailing slash: how browsers write `Origin`.
fn normalize_origin(s: &str) -> Result<String, String> {
    let o = s.trim().trim_end_matches('/').to_ascii_lowercase();
    if o == "*" {
        return Ok(o);
    }
    let rest = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
        .ok_or_else(|| {
            format!("--allowed-origin '{s}': an origin is http:// or https:// and a host, e.g. http://localhost:3000, or *")
        })?;
    if rest.is_empty() || rest.contains('/') || parse_host_header(rest).is_none() {
        return Err(format!(
            "--allowed-origin '{s}': an origin is a scheme, a host and an optional port, without a path"
        ));
    }
    Ok(o)
}

/// The Host allow-list and the CORS origins, checked once at start-up.
#[derive(Debug, Clone)]
pub struct Access {
    any_host: bool,
    hosts: Vec<HostName>,
    any_origin: bool,
    origins: Vec<String>,
}

impl Access {
    /// Loopback names, the bound address when it is a specific one (or the name it was
    /// given as), and `extra_hosts`; `*` among them allows any host.
    pub fn new(
        bind_host: &str,
        extra_hosts: &[String],
        origins: &[String],
    ) -> Result<Access, String> {
        let mut hosts = vec![
            HostName::Name("localhost".into()),
            HostName::Ip(Ipv4Addr::LOCALHOST.into()),
            HostName::Ip(Ipv6Addr::LOCALHOST.into()),
        ];
        let mut extra = Vec::new();
        match parse_bare_host(bind_host.trim()) {
            Some(HostName::Ip(ip)) if ip.is_unspecified() => {}
            Some(h) => extra.push(h),
            None => {}
        }
        let mut any_host = false;
        for h in extra_hosts {
            let h = h.trim();
            if h == "*" {
                any_host = true;
                continue;
            }
            let parsed = parse_bare_host(h).ok_or_else(|| {
                format!(
                    "--allowed-host '{h}': give a host name or an IP address, without a port (any port is allowed)"
                )
            })?;
            extra.push(parsed);
        }
        for h in extra {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let mut any_origin = false;
        let mut list = Vec::new();
        for o in origins {
            let o = normalize_origin(o)?;
            if o == "*" {
                any_origin = true;
            } else {
                list.push(o);
            }
        }
        Ok(Access {
            any_host,
            hosts,
            any_origin,
            origins: list,
        })
    }

    /// Whether a `Host` header value (or the authority of an absolute request target)
    /// names this server.
    pub fn host_allowed(&self, value: &str) -> bool {
        self.any_host || parse_host_header(value).is_some_and(|h| self.hosts.contains(&h))
    }

    /// The allowed hosts, for error messages.
    pub fn hosts_list(&self) -> String {
        if self.any_host {
            return "any host".into();
        }
        self.hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether any origin may make cross-origin requests.
    pub fn cors_enabled(&self) -> bool {
        self.any_origin || !self.origins.is_empty()
    }

    /// The `Access-Control-Allow-Origin` value for a request's `Origin`, if allowed.
    pub fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            return Some(HeaderValue::from_static("*"));
        }
        let o = origin.to_str().ok()?;
        let o = o.to_ascii_lowercase();
        self.origins.contains(&o).then(|| origin.clone())
    }
}

/// Whether a `Content-Type` value is JSON: `application/json`, any case, any parameters.
pub fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// What the checks decided for one request.
pub enum Verdict {
    /// Go on to the handler.
    Pass,
    /// Answer with this and do not call the handler.
    Answer(Response),
}

fn shorten(s: &str) -> String {
    let mut t: String = s.chars().take(80).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

/// The Host check: every `Host` header and the authority of an absolute target must be
/// allowed; a request without either is accepted (see the module notes).
pub fn check_host(access: &Access, headers: &HeaderMap, uri: &axum::http::Uri) -> Verdict {
    let mut names: Vec<String> = Vec::new();
    for v in headers.get_all(header::HOST) {
        match v.to_str() {
            Ok(s) => names.push(s.trim().to_string()),
            Err(_) => names.push(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        }
    }
    if let Some(a) = uri.authority() {
        names.push(a.as_str().rsplit('@').next().unwrap_or("").to_string());
    }
    match names.iter().find(|n| !access.host_allowed(n)) {
        None => Verdict::Pass,
        Some(bad) => Verdict::Answer(
            ApiError::new(
                403,
                "invalid_request_error",
                format!(
                    "The Host '{}' is not allowed; this server answers to {} (start it with --allowed-host NAME to add a name).",
                    shorten(bad),
                    access.hosts_list()
                ),
            )
            .with_code("host_not_allowed")
            .into_response(),
        ),
    }
}

/// POST bodies must be JSON (415 otherwise).
pub fn check_content_type(method: &Method, headers: &HeaderMap) -> Verdict {
    if method != Method::POST {
        return Verdict::Pass;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("?"));
    if ct.is_some_and(is_json) {
        return Verdict::Pass;
    }
    let got = match ct {
        Some(c) => format!("got '{}'", shorten(c)),
        None => "got none".into(),
    };
    Verdict::Answer(
        ApiError::new(
            415,
            "invalid_request_error",
            format!("Request bodies must be JSON: send 'Content-Type: application/json' ({got})."),
        )
        .with_code("unsupported_media_type")
        .into_response(),
    )
}

/// The answer to a CORS preflight from an allowed origin; `Pass` for anything else
/// (a preflight from another origin then gets the router's 404/405 and no CORS
/// headers, which the browser takes as a refusal).
pub fn preflight(access: &Access, method: &Method, headers: &HeaderMap) -> Verdict {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return Verdict::Pass;
    }
    let Some(allow) = headers
        .get(header::ORIGIN)
        .and_then(|o| access.allow_origin(o))
    else {
        return Verdict::Pass;
    };
    // The origin is trusted, so the headers it asks for are allowed (the OpenAI
    // JavaScript client sends several of its own); odd values fall back to the two
    // this API needs.
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| {
            v.to_str().is_ok_and(|s| {
                s.len() <= 1024
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_, ".contains(c))
            })
        })
        .cloned()
        .unwrap_or(HeaderValue::from_static("authorization, content-type"));
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    Verdict::Answer(r)
}

/// CORS headers on an actual response: `Access-Control-Allow-Origin` for an allowed
/// origin, and `Vary: Origin` whenever CORS is on (the answer depends on the origin).
pub fn add_cors(access: &Access, origin: Option<&HeaderValue>, resp: &mut Response) {
    if !access.cors_enabled() {
        return;
    }
    let h = resp.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(allow) = origin.and_then(|o| access.allow_origin(o)) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(bind: &str, extra: &[&str]) -> Access {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Access::new(bind, &extra, &[]).unwrap()
    }

    #[test]
    fn loopback_names_with_any_port() {
        let a = access("127.0.0.1", &[]);
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.0.0.1:65535",
            "[::1]",
            "[::1]:8080",
            "[0:0:0:0:0:0:0:1]:80",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.2",
            "::1",
            "[::1",
            "localhost:80:80",
            "localhost:http",
            "",
            "a b",
            "0.0.0.0",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn bound_address_and_extra_names() {
        let a = access("192.168.1.5", &["Box.LAN", "10.0.0.7", "::2"]);
        for ok in [
            "192.168.1.5:8080",
            "box.lan",
            "box.lan:1",
            "10.0.0.7",
            "[::2]:9",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        assert!(!a.host_allowed("192.168.1.6"));
        // An unspecified bind address adds nothing.
        assert!(!access("0.0.0.0", &[]).host_allowed("0.0.0.0"));
        assert!(!access("::", &[]).host_allowed("[::]"));
        assert!(access("x", &["*"]).host_allowed("anything.example:1"));
        assert!(Access::new("127.0.0.1", &["box:8080".into()], &[]).is_err());
        assert!(Access::new("127.0.0.1", &["".into()], &[]).is_err());
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ;charset=UTF-8",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/jsonx",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "text/plain; application/json",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let a = Access::new("127.0.0.1", &[], &["http://LOCALHOST:3000/".into()]).unwrap();
        assert!(a.cors_enabled());
        let yes = HeaderValue::from_static("http://localhost:3000");
        assert_eq!(a.allow_origin(&yes), Some(yes.clone()));
        assert_eq!(
            a.allow_origin(&HeaderValue::from_static("http://localhost:3001")),
            None
        );
        assert_eq!(a.allow_origin(&HeaderValue::from_static("null")), None);
        assert!(!access("127.0.0.1", &[]).cors_enabled());
        for bad in [
            "localhost:3000",
            "http://x/path",
            "ftp://x",
            "http://",
            "null",
        ] {
            assert!(
                Access::new("127.0.0.1", &[], &[bad.into()]).is_err(),
                "{bad}"
            );
        }
        let any = Access::new("127.0.0.1", &[], &["*".into()]).unwrap();
        assert_eq!(
            any.allow_origin(&HeaderValue::from_static("https://a.example")),
            Some(HeaderValue::from_static("*"))
        );
    }
}
