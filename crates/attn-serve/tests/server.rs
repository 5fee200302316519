//! The server on an ephemeral port, spoken to over raw TCP.
//!
//! One file of this length because every test shares the same server helpers and raw
//! HTTP/SSE readers: endpoints and streaming first, then faults and limits, hosts, CORS
//! and keys, connection timeouts and caps, shutdown, chat templates and embeddings.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Every `data:` event of an SSE body, checking the framing on the way.
fn sse_events(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream does not end with [DONE]: {body:?}"
    );
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without 'data: ': {e:?}"))
                .to_string()
        })
        .collect()
}

#[test]
fn endpoints_streaming_and_usage() {
    let model = tiny_model("endpoints");
    let addr = start(&model, |c| c.model_name = Some("tiny".into()));

    let r = get(addr, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["batched_decode"], true);
    let r = get(addr, "/v1/models");
    assert_eq!(r.json()["data"][0]["id"], "tiny");
    assert_eq!(get(addr, "/v1/models/tiny").status, 200);
    assert_eq!(get(addr, "/v1/models/other").status, 404);
    let page = get(addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("attn playground") && !page.body.contains("https://"));

    // Greedy, not streamed.
    let req = json!({"model": "tiny", "prompt": "ROMEO:", "max_tokens": 24, "temperature": 0});
    let r = post(addr, "/v1/completions", &req);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["usage"]["completion_tokens"], 24);
    assert_eq!(v["usage"]["total_tokens"], 30);
    let whole = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(whole.chars().count(), 24);

    // The same request streamed: OpenAI chunks, then usage, then [DONE]; same text.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let r = post(addr, "/v1/completions", &sreq);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_events(&r.body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let mut text = String::new();
    for c in &chunks[..chunks.len() - 1] {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], chunks[0]["id"]);
        text.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(text, whole);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 24);

    // A stop string cuts the text before it and ends with finish_reason "stop".
    let cut = &whole[whole.len() / 2..whole.len() / 2 + 2];
    let mut stop = req.clone();
    stop["stop"] = json!([cut]);
    let v = post(addr, "/v1/completions", &stop).json();
    let t = v["choices"][0]["text"].as_str().unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(t, &whole[..whole.find(cut).unwrap()]);

    // Chat, streamed: a role chunk first, deltas, then an empty delta with the reason.
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "Romeo?"}], "max_tokens": 8, "stream": true, "seed": 3});
    let r = post(addr, "/v1/chat/completions", &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let events = sse_events(&r.body);
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let end: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert!(end["choices"][0]["finish_reason"].is_string());
    assert_eq!(end["choices"][0]["delta"], json!({}));
    // Not streamed, a seed makes sampling repeatable.
    let mut once = chat.clone();
    once["stream"] = json!(false);
    let a = post(addr, "/v1/chat/completions", &once).json();
    let b = post(addr, "/v1/chat/completions", &once).json();
    assert_eq!(a["object"], "chat.completion");
    assert_eq!(a["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    assert_eq!(
        a["usage"]["prompt_tokens"],
        "User: Romeo?\nAssistant:".chars().count()
    );

    // Attention maps: every row of every head is a distribution over earlier tokens.
    let r = post(addr, "/v1/attention", &json!({"input": "ROMEO: O"}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["n_layer"].as_u64(), v["n_head"].as_u64()),
        (Some(2), Some(4))
    );
    assert_eq!(v["tokens"].as_array().unwrap().len(), 8);
    for layer in v["attention"].as_array().unwrap() {
        for head in layer.as_array().unwrap() {
            for (i, row) in head.as_array().unwrap().iter().enumerate() {
                let row: Vec<f64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect();
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-3);
                assert!(row[i + 1..].iter().all(|&w| w == 0.0), "causal");
            }
        }
    }
    assert_eq!(
        post(addr, "/v1/attention", &json!({"input": "a".repeat(65)})).status,
        400
    );

    // Embeddings are for encoders.
    let r = post(addr, "/v1/embeddings", &json!({"input": "x"}));
    assert_eq!(r.status, 400);

    let m = get(addr, "/metrics").body;
    for name in [
        "attn_requests_total{endpoint=\"/v1/completions\",status=\"200\"}",
        "attn_tokens_generated_total",
        "attn_time_to_first_token_seconds_bucket",
        "attn_time_per_output_token_seconds_count",
        "attn_queue_depth",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
    assert!(metric(addr, "attn_tokens_generated_total") >= 24.0 * 3.0);
}

#[test]
fn faults_are_answered_and_the_server_keeps_serving() {
    let model = tiny_model("faults");
    let addr = start(&model, |c| {
        c.api_key = Some("sekret".into());
        c.max_tokens_limit = 64;
        c.max_body_bytes = 4096;
    });
    let key = [("Authorization", "Bearer sekret")];
    let good = json!({"prompt": "ROMEO:", "max_tokens": 4});
    let still_serving = || {
        let r = call(
            addr,
            "POST",
            "/v1/completions",
            &key,
            good.to_string().as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["usage"]["completion_tokens"], 4);
    };
    still_serving();

    // (what, headers, body, expected status, expected error type)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            key.to_vec(),
            b"{\"prompt\": ".to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "not an object",
            key.to_vec(),
            b"[1, 2]".to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "wrong type",
            key.to_vec(),
            br#"{"prompt": "a", "temperature": "hot"}"#.to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "temperature out of range",
            key.to_vec(),
            br#"{"prompt": "a", "temperature": 7}"#.to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "max_tokens over the limit",
            key.to_vec(),
            br#"{"prompt": "a", "max_tokens": 65}"#.to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "character outside the vocabulary",
            key.to_vec(),
            "{\"prompt\": \"\u{1F980}\"}".as_bytes().to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "token id outside the vocabulary",
            key.to_vec(),
            br#"{"prompt": [1, 99999]}"#.to_vec(),
            400,
            "invalid_request_error",
        ),
        (
            "no key",
            vec![],
            good.to_string().into_bytes(),
            401,
            "invalid_request_error",
        ),
        (
            "wrong key",
            vec![("Authorization", "Bearer nope")],
            good.to_string().into_bytes(),
            401,
            "invalid_request_error",
        ),
        (
            "unknown model",
            key.to_vec(),
            br#"{"model": "gpt-9", "prompt": "a"}"#.to_vec(),
            404,
            "invalid_request_error",
        ),
        (
            "body too large",
            key.to_vec(),
            format!("{{\"prompt\": \"{}\"}}", "a".repeat(10 << 20)).into_bytes(),
            413,
            "invalid_request_error",
        ),
    ];
    for (what, headers, body, status, kind) in cases {
        let r = call(addr, "POST", "/v1/completions", &headers, &body);
        assert_eq!(r.status, status, "{what}: {}", r.body);
        assert_eq!(r.error().0, kind, "{what}");
        still_serving();
    }
    // Chat messages that are not messages.
    let r = call(
        addr,
        "POST",
        "/v1/chat/completions",
        &key,
        br#"{"messages": [{"role": "wizard"}]}"#,
    );
    assert_eq!(
        (r.status, r.error().2.as_deref()),
        (400, Some("messages[0]"))
    );
    // Unknown routes and methods answer in the same shape; health needs no key.
    assert_eq!(call(addr, "GET", "/v1/nothing", &key, b"").status, 404);
    assert_eq!(call(addr, "GET", "/v1/completions", &key, b"").status, 405);
    assert_eq!(get(addr, "/health").status, 200);
    // A body that lies about its length, then closes.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\"").unwrap();
    }
    still_serving();
    let m = get(addr, "/metrics").body;
    assert!(
        m.contains("attn_requests_total{endpoint=\"/v1/completions\",status=\"401\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("attn_requests_total{endpoint=\"/v1/completions\",status=\"413\"} 1"),
        "{m}"
    );
}

#[test]
fn full_queue_is_429_and_a_dropped_client_stops_its_generation() {
    let model = tiny_model("queue");
    let addr = start(&model, |c| {
        c.max_concurrency = 1;
        c.max_queue = 1;
        c.max_tokens_limit = 1_000_000;
    });
    let long =
        json!({"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": true, "ignore_eos": true});
    // A runs; B waits in the queue; C finds the queue full.
    let mut a = Stream::open(addr, "/v1/completions", &long);
    assert_eq!(a.status, 200);
    assert!(a.next_data().is_some());
    let b_thread = std::thread::spawn(move || {
        let mut b = Stream::open(addr, "/v1/completions", &long);
        let first = b.next_data();
        (b.status, first, b)
    });
    wait_until("B queued", || metric(addr, "attn_queue_depth") == 1.0);
    let c = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(c.status, 429, "{}", c.body);
    assert_eq!(c.error().1.as_deref(), Some("queue_full"));
    assert!(c.error().0.contains("rate_limit"));

    // A hangs up: its generation stops, and B gets the slot.
    let before = metric(
        addr,
        "attn_generations_total{reason=\"client_disconnected\"}",
    );
    drop(a);
    wait_until("A's generation to stop", || {
        metric(
            addr,
            "attn_generations_total{reason=\"client_disconnected\"}",
        ) > before
    });
    let (status, first, b) = b_thread.join().unwrap();
    assert_eq!(status, 200);
    assert!(first.is_some());
    drop(b);
    wait_until("B's generation to stop", || {
        metric(
            addr,
            "attn_generations_total{reason=\"client_disconnected\"}",
        ) >= before + 2.0
    });
    // Nothing is left running, and the token counter stands still.
    wait_until("no active sequence", || {
        metric(addr, "attn_active_sequences") == 0.0
    });
    let t1 = metric(addr, "attn_tokens_generated_total");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric(addr, "attn_tokens_generated_total"), t1);
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200);
}

#[test]
fn requests_past_their_time_limit_end_with_504() {
    let model = tiny_model("timeout");
    let addr = start(&model, |c| {
        c.request_timeout = Duration::from_millis(300);
        c.max_tokens_limit = 1_000_000;
    });
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "R", "max_tokens": 1_000_000, "ignore_eos": true}),
    );
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.error().1.as_deref(), Some("timeout"));
    // Streamed: the error arrives as an event once tokens have been sent.
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "R", "max_tokens": 1_000_000, "ignore_eos": true, "stream": true}),
    );
    assert_eq!(r.status, 200);
    let events = sse_events(&r.body);
    let err: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "timeout");
    assert!(metric(addr, "attn_generations_total{reason=\"timeout\"}") >= 2.0);
    assert_eq!(
        post(
            addr,
            "/v1/completions",
            &json!({"prompt": "R", "max_tokens": 3})
        )
        .status,
        200
    );
}

#[test]
fn concurrent_requests_share_batched_decode_steps() {
    let model = tiny_model("batch");
    let addr = start(&model, |c| c.max_concurrency = 8);
    let greedy =
        |p: &str| json!({"prompt": p, "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    // Alone, each prompt gives some greedy text; eight at once must give the same texts.
    let prompts = [
        "R",
        "ROMEO:",
        "JULIET: O",
        "But soft, what",
        "O",
        "wherefore",
        "light",
        "Romeo, Romeo!",
    ];
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            post(addr, "/v1/completions", &greedy(p)).json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = greedy(p);
            std::thread::spawn(move || {
                post(addr, "/v1/completions", &body).json()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
        })
        .collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(alone, together);
    // Some decode steps really ran more than one sequence.
    let m = get(addr, "/metrics").body;
    let single = m
        .lines()
        .find_map(|l| l.strip_prefix("attn_decode_batch_size_bucket{le=\"1\"} "))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap();
    let all = metric(addr, "attn_decode_batch_size_count");
    assert!(all > single, "every decode step had one sequence:\n{m}");
}

#[test]
fn embeddings_from_minilm() {
    let dir = std::env::var_os("ATTN_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/models")
        })
        .join("all-MiniLM-L6-v2");
    if !dir.is_dir() {
        // Missing data fails the test unless skips were asked for (never under CI).
        let skip = std::env::var("ATTN_ALLOW_SKIPS").is_ok_and(|v| v == "1")
            && std::env::var("CI").map_or(true, |v| v != "true");
        assert!(
            skip,
            "{} is missing (set ATTN_MODELS_DIR, or ATTN_ALLOW_SKIPS=1 to skip)",
            dir.display()
        );
        eprintln!("skipping (ATTN_ALLOW_SKIPS=1): no {}", dir.display());
        return;
    }
    let addr = start(&dir, |_| {});
    let r = post(
        addr,
        "/v1/embeddings",
        &json!({"input": ["A man is eating food.", "A man eats a meal.", "The stock market fell."]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let e: Vec<Vec<f64>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(e[0].len(), 384);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!((dot(&e[0], &e[0]) - 1.0).abs() < 1e-4);
    assert!(dot(&e[0], &e[1]) > dot(&e[0], &e[2]) + 0.2);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    // The values themselves: sentence-transformers' normalized embeddings of the MiniLM
    // fixture's sentences (scripts/make_hf_fixtures.py).
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../attn/tests/fixtures/hf/minilm");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("meta.json")).unwrap()).unwrap();
    let want: Vec<Vec<f32>> = {
        let bytes = std::fs::read(fixture.join("reference.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("embeddings_normalized").unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        v.chunks(t.shape()[1]).map(|c| c.to_vec()).collect()
    };
    let r = post(addr, "/v1/embeddings", &json!({"input": meta["sentences"]}));
    assert_eq!(r.status, 200, "{}", r.body);
    let data = r.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), want.len());
    let mut worst = 0f64;
    for (d, w) in data.iter().zip(&want) {
        let got = d["embedding"].as_array().unwrap();
        assert_eq!(got.len(), w.len());
        for (g, x) in got.iter().zip(w) {
            worst = worst.max((g.as_f64().unwrap() - *x as f64).abs());
        }
    }
    assert!(
        worst < 1e-5,
        "server embeddings differ from sentence-transformers by {worst}"
    );
    // base64 (what the openai package asks for by default): little-endian f32.
    let r = post(
        addr,
        "/v1/embeddings",
        &json!({"input": "A man is eating food.", "encoding_format": "base64"}),
    );
    assert_eq!(
        r.json()["data"][0]["embedding"].as_str().unwrap().len(),
        2048
    ); // 384 × 4 bytes
       // A decoder-only endpoint on an encoder is a 400.
    assert_eq!(
        post(addr, "/v1/completions", &json!({"prompt": "x"})).status,
        400
    );
}

// ---- Hostile input: browsers (CSRF, DNS rebinding), keys, connections ----

#[test]
fn post_bodies_must_be_json() {
    let model = tiny_model("json-only");
    let addr = start(&model, |_| {});
    let body = json!({"prompt": "ROMEO:", "max_tokens": 2}).to_string();
    let host = ("Host", "127.0.0.1");
    let before = metric(addr, "attn_prompt_tokens_total");
    // What a web page can send without a CORS preflight, and no type at all: 415.
    for ct in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut headers = vec![host];
        headers.extend(ct.map(|c| ("Content-Type", c)));
        let r = call_exact(addr, "POST", "/v1/completions", &headers, body.as_bytes());
        assert_eq!(r.status, 415, "{ct:?}: {}", r.body);
        assert_eq!(
            r.error(),
            (
                "invalid_request_error".into(),
                Some("unsupported_media_type".into()),
                None
            ),
            "{ct:?}"
        );
    }
    // Nothing reached the model.
    assert_eq!(metric(addr, "attn_prompt_tokens_total"), before);
    for ct in ["application/json", "Application/JSON; charset=UTF-8"] {
        let r = call_exact(
            addr,
            "POST",
            "/v1/completions",
            &[host, ("Content-Type", ct)],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{ct}: {}", r.body);
    }
}

#[test]
fn foreign_hosts_are_refused() {
    let model = tiny_model("hosts");
    let addr = start(&model, |_| {});
    let body = json!({"prompt": "ROMEO:", "max_tokens": 2}).to_string();
    let json_ct = ("Content-Type", "application/json");
    // DNS rebinding: the browser sends the attacker's name.
    for host in [
        "evil.example",
        "evil.example:8080",
        "localhost.evil.example",
        "127.0.0.2",
    ] {
        for (method, path) in [
            ("POST", "/v1/completions"),
            ("GET", "/v1/models"),
            ("GET", "/"),
        ] {
            let r = call_exact(
                addr,
                method,
                path,
                &[("Host", host), json_ct],
                body.as_bytes(),
            );
            assert_eq!(r.status, 403, "{host} {path}: {}", r.body);
            assert_eq!(r.error().1.as_deref(), Some("host_not_allowed"), "{host}");
        }
    }
    // Two Host headers, one foreign; an absolute target naming another host.
    let r = call_exact(
        addr,
        "GET",
        "/v1/models",
        &[("Host", "localhost"), ("Host", "evil.example")],
        b"",
    );
    assert_eq!(r.status, 403);
    let r = raw(
        addr,
        b"GET http://evil.example/v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    // Loopback names with any port.
    for host in [
        "localhost",
        "LocalHost:1234",
        "127.0.0.1:80",
        "[::1]:8080",
        &addr.to_string(),
    ] {
        let r = call_exact(
            addr,
            "POST",
            "/v1/completions",
            &[("Host", host), json_ct],
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.body);
    }
    // No Host at all (HTTP/1.0) cannot come from a browser: accepted.
    let r = raw(addr, b"GET /v1/models HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        metric(
            addr,
            "attn_requests_total{endpoint=\"/v1/completions\",status=\"403\"}"
        ),
        4.0
    );
}

#[test]
fn allowed_extra_hosts_are_accepted() {
    let model = tiny_model("extra-hosts");
    let addr = start(&model, |c| c.allowed_hosts = vec!["Box.LAN".into()]);
    assert_eq!(
        call_exact(addr, "GET", "/v1/models", &[("Host", "box.lan:8080")], b"").status,
        200
    );
    assert_eq!(
        call_exact(addr, "GET", "/v1/models", &[("Host", "localhost")], b"").status,
        200
    );
    assert_eq!(
        call_exact(addr, "GET", "/v1/models", &[("Host", "evil.example")], b"").status,
        403
    );
    let any = start(&model, |c| c.allowed_hosts = vec!["*".into()]);
    assert_eq!(
        call_exact(any, "GET", "/v1/models", &[("Host", "evil.example")], b"").status,
        200
    );
}

fn cors_headers(r: &Response) -> Vec<&(String, String)> {
    r.headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
        .collect()
}

#[test]
fn no_cors_headers_by_default() {
    let model = tiny_model("no-cors");
    let addr = start(&model, |_| {});
    let origin = ("Origin", "http://evil.example");
    let host = ("Host", "localhost");
    let r = call_exact(addr, "GET", "/v1/models", &[host, origin], b"");
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    let r = call_exact(
        addr,
        "OPTIONS",
        "/v1/completions",
        &[
            host,
            origin,
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    );
    assert_ne!(
        r.status / 100,
        2,
        "a preflight must not succeed: {}",
        r.body
    );
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    let body = json!({"prompt": "R", "max_tokens": 1}).to_string();
    let r = call_exact(
        addr,
        "POST",
        "/v1/completions",
        &[host, origin, ("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
}

#[test]
fn cors_only_for_allowed_origins() {
    let model = tiny_model("cors");
    let addr = start(&model, |c| {
        c.allowed_origins = vec!["http://localhost:3000".into()];
        c.api_key = Some("k3y".into());
    });
    let host = ("Host", "127.0.0.1");
    let preflight = |origin: &str| {
        call_exact(
            addr,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                host,
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type, x-stainless-os",
                ),
            ],
            b"",
        )
    };
    // The allowed origin's preflight is answered (without a key: preflights carry none).
    let r = preflight("http://localhost:3000");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    // Another origin's is not.
    let r = preflight("http://evil.example");
    assert_ne!(r.status / 100, 2);
    assert!(cors_headers(&r).is_empty(), "{:?}", r.headers);
    // Actual requests: the header for the allowed origin only, errors included.
    let body = json!({"prompt": "R", "max_tokens": 1}).to_string();
    let post = |origin: &str, key: &str| {
        call_exact(
            addr,
            "POST",
            "/v1/completions",
            &[
                host,
                ("Origin", origin),
                ("Content-Type", "application/json"),
                ("Authorization", key),
            ],
            body.as_bytes(),
        )
    };
    let r = post("http://localhost:3000", "Bearer k3y");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(r
        .header("vary")
        .is_some_and(|v| v.to_ascii_lowercase().contains("origin")));
    let r = post("http://localhost:3000", "Bearer wrong");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let r = post("http://evil.example", "Bearer k3y");
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "{:?}",
        r.headers
    );
}

#[test]
fn empty_api_keys_are_start_up_errors() {
    let model = tiny_model("empty-key");
    let m = model.to_str().unwrap();
    for args in [
        vec!["attn-serve", "--model", m, "--api-key="],
        vec!["attn-serve", "--model", m, "--api-key", "  "],
    ] {
        let e = attn_serve::config_from_args(&args).unwrap_err();
        assert!(e.contains("empty"), "{args:?}: {e}");
    }
    // The library refuses it too, whoever builds the configuration.
    let cfg = attn_serve::ServeConfig {
        model: model.clone(),
        api_key: Some(String::new()),
        ..Default::default()
    };
    assert!(attn_serve::build(cfg.clone()).is_err());
    assert!(attn_serve::spawn(cfg).is_err());
    // An empty key file as well.
    let dir = std::env::temp_dir().join(format!("attn-serve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let e = attn_serve::config_from_args([
        "attn-serve",
        "--model",
        m,
        "--api-key-file",
        empty.to_str().unwrap(),
    ])
    .unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = attn_serve::config_from_args([
        "attn-serve",
        "--model",
        m,
        "--api-key-file",
        "/nonexistent/key",
    ])
    .unwrap_err();
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn api_key_file_works() {
    let model = tiny_model("key-file");
    let dir = std::env::temp_dir().join(format!("attn-serve-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("key");
    std::fs::write(&file, "s3cret-from-file\r\n").unwrap();
    let mut cfg = attn_serve::config_from_args([
        "attn-serve",
        "--model",
        model.to_str().unwrap(),
        "--api-key-file",
        file.to_str().unwrap(),
    ])
    .unwrap();
    assert_eq!(cfg.api_key.as_deref(), Some("s3cret-from-file"));
    cfg.port = 0;
    let addr = attn_serve::spawn(cfg).unwrap();
    assert_eq!(get(addr, "/v1/models").status, 401);
    let r = call(
        addr,
        "GET",
        "/v1/models",
        &[("Authorization", "Bearer s3cret-from-file")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn partial_headers_are_cut_off_after_the_header_timeout() {
    use std::io::Write;
    let model = tiny_model("header-timeout");
    let addr = start(&model, |c| {
        c.header_timeout = Duration::from_millis(600);
        c.keep_alive_timeout = Duration::from_secs(30);
    });
    // Slowloris: a head that never ends, one header line every 100 ms.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let t = std::time::Instant::now();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    let mut closed_after = None;
    for i in 0..50 {
        if is_closed(&mut s, Duration::from_millis(100))
            || s.write_all(format!("X-Slow-{i}: x\r\n").as_bytes())
                .is_err()
        {
            closed_after = Some(t.elapsed());
            break;
        }
    }
    let after = closed_after.expect("the server kept a trickling head open for 5 s");
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_secs(3),
        "closed after {after:?}"
    );
    assert_eq!(get(addr, "/health").status, 200);
}

#[test]
fn idle_connections_close_after_the_keep_alive_timeout() {
    use std::io::{BufReader, Write};
    let model = tiny_model("keep-alive");
    let addr = start(&model, |c| {
        c.keep_alive_timeout = Duration::from_millis(400);
        c.header_timeout = Duration::from_secs(30);
    });
    // A connection that never sends anything.
    let mut silent = std::net::TcpStream::connect(addr).unwrap();
    let t = std::time::Instant::now();
    assert!(is_closed(&mut silent, Duration::from_secs(5)));
    let after = t.elapsed();
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_secs(3),
        "{after:?}"
    );
    // One that made a request and then waits.
    let s = std::net::TcpStream::connect(addr).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    for _ in 0..2 {
        // Kept alive between requests that come in time.
        w.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut r).0, 200);
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = std::time::Instant::now();
    assert!(is_closed(&mut w, Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn slow_bodies_are_answered_408() {
    use std::io::{BufReader, Write};
    let model = tiny_model("body-timeout");
    let addr = start(&model, |c| c.body_timeout = Duration::from_millis(300));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
        .unwrap();
    let t = std::time::Instant::now();
    let (status, headers) = read_head(&mut BufReader::new(s));
    assert_eq!(status, 408, "{headers:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn past_the_connection_cap_a_request_is_still_served_quickly() {
    use std::io::{BufReader, Write};
    let model = tiny_model("cap");
    // Long timeouts: only the cap can make room.
    let addr = start(&model, |c| {
        c.max_connections = 8;
        c.header_timeout = Duration::from_secs(60);
        c.keep_alive_timeout = Duration::from_secs(60);
    });
    // 24 connections: partial heads, idle keep-alive ones, and silent ones.
    let mut held = Vec::new();
    for i in 0..24 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        match i % 3 {
            0 => s
                .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .unwrap(),
            1 => {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
                    .unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                // It may already have been closed to make room for a later one.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    read_response(&mut r)
                }));
            }
            _ => {}
        }
        held.push(s);
    }
    // A normal request is answered at once.
    let t = std::time::Instant::now();
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "ROMEO:", "max_tokens": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // And the server really holds at most 8: the older ones were closed.
    let closed = held
        .iter_mut()
        .map(|s| is_closed(s, Duration::from_millis(300)))
        .filter(|&c| c)
        .count();
    assert!(
        closed >= 24 + 1 - 8,
        "only {closed} of 24 idle connections closed"
    );
    assert!(!is_closed(
        held.last_mut().unwrap(),
        Duration::from_millis(10)
    ));
}

#[test]
fn past_the_cap_with_every_connection_busy_the_answer_is_503() {
    use std::io::Write;
    let model = tiny_model("cap-busy");
    let addr = start(&model, |c| {
        c.max_connections = 2;
        c.max_tokens_limit = 1_000_000;
    });
    // Two busy connections: a long stream, and a request whose body is still coming.
    let long =
        json!({"prompt": "ROMEO:", "max_tokens": 1_000_000, "stream": true, "ignore_eos": true});
    let mut a = Stream::open(addr, "/v1/completions", &long);
    assert!(a.next_data().is_some());
    let mut b = std::net::TcpStream::connect(addr).unwrap();
    b.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let r = get(addr, "/health");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.error().1.as_deref(), Some("too_many_connections"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(t.elapsed() < Duration::from_secs(1));
    // Both still served.
    assert!(a.next_data().is_some());
    b.write_all(format!("{:99}", "}").as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(b);
    assert_eq!(read_head(&mut r).0, 400);
    drop((a, r));
    wait_until("a connection free", || get(addr, "/health").status == 200);
}

#[test]
fn graceful_shutdown_finishes_the_streams_in_flight() {
    let model = tiny_model("shutdown");
    let cfg = attn_serve::ServeConfig {
        model: model.clone(),
        port: 0,
        max_tokens_limit: 100_000,
        ..Default::default()
    };
    let limits = cfg.conn_limits();
    let app = attn_serve::build(cfg).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            attn_serve::serve(listener, app, limits, async {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    let req = json!({"prompt": "ROMEO:", "max_tokens": 300, "stream": true, "ignore_eos": true});
    let mut s = Stream::open(addr, "/v1/completions", &req);
    assert_eq!(s.status, 200);
    assert!(s.next_data().is_some());
    // An idle keep-alive connection is closed by the shutdown.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stop_tx.send(()).unwrap();
    assert!(is_closed(&mut idle, Duration::from_secs(5)));
    // The stream runs to its end.
    let mut events = 1;
    let mut last = String::new();
    while let Some(d) = s.next_data() {
        events += 1;
        last = d;
    }
    assert_eq!(last, "[DONE]");
    assert!(events >= 300, "{events} events");
    server.join().unwrap().unwrap();
    assert!(std::net::TcpStream::connect(addr).is_err());
}

/// A model that always answers "!" (its final norm gives one fixed vector, which only
/// the embedding of "!" matches), with a chat template whose `eos_token` is "!".
fn bang_model() -> std::path::PathBuf {
    let src = tiny_model("bang-src");
    let dir = std::env::temp_dir().join(format!("attn-serve-test-bang-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let tok = attn::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let bang = tok.token_to_id("!").unwrap() as usize;
    let mut t = attn::checkpoint::read_weights(&src).unwrap();
    let c = t["transformer.ln_f.weight"].1[0];
    t.insert("transformer.ln_f.weight".into(), (vec![0.0; c], vec![c]));
    t.insert("transformer.ln_f.bias".into(), (vec![1.0; c], vec![c]));
    let wte = &mut t.get_mut("transformer.wte.weight").unwrap().0;
    wte[bang * c..(bang + 1) * c].fill(1.0);
    attn::engine::io::write_plain(&dir.join("model.safetensors"), &t).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({
            "chat_template": "{% for m in messages %}{{ m.content }}\n{% endfor %}",
            "eos_token": "!",
        })
        .to_string(),
    )
    .unwrap();
    dir
}

#[test]
fn chat_answers_end_at_the_templates_eos_token() {
    let addr = start(&bang_model(), |_| {});
    // The completions endpoint has no template: the model's "!"s run to max_tokens.
    let r = post(
        addr,
        "/v1/completions",
        &json!({"prompt": "Romeo", "max_tokens": 5, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "!!!!!");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Chat with the template: its eos_token "!" ends the answer at once, as "stop".
    for stream in [false, true] {
        let r = post(
            addr,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "Romeo?"}], "max_tokens": 5,
                    "temperature": 0, "stream": stream}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let text = if stream {
            let chunks: Vec<Value> = sse_events(&r.body)
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e).ok())
                .collect();
            assert!(
                chunks
                    .iter()
                    .any(|c| c["choices"][0]["finish_reason"] == "stop"),
                "{chunks:?}"
            );
            chunks
                .iter()
                .filter_map(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .map(String::from)
                })
                .collect::<String>()
        } else {
            let v = r.json();
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
            assert_eq!(v["usage"]["completion_tokens"], 0);
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(text, "", "stream {stream}");
    }
}

/// RoBERTa and DistilBERT folders (transformers' fixtures with a char tokenizer) are
/// served as encoders: their embeddings are the engine's mean-pooled, normalised ones.
#[test]
fn embeddings_from_roberta_and_distilbert_folders() {
    for name in ["roberta-3heads", "distilbert-3heads"] {
        let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../attn/tests/fixtures/hf")
            .join(name);
        let dir = std::env::temp_dir().join(format!("attn-serve-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let tok = attn::tokenizer::Tokenizer::train_char("abcdefghijklmnopqrstuvwxyz ").unwrap();
        tok.save(&dir.join("tokenizer.json")).unwrap();
        let texts = ["a cat sat", "dogs bark loudly"];
        let want = {
            let loaded = attn::checkpoint::load_bert(&dir).unwrap();
            let ids: Vec<Vec<u32>> = texts
                .iter()
                .map(|t| {
                    loaded
                        .tokenizer
                        .encode_for_model(t, loaded.max_len)
                        .unwrap()
                })
                .collect();
            let refs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            loaded
                .encoder
                .embed(&refs, attn::engine::Pooling::Mean, true)
                .unwrap()
        };
        let addr = start(&dir, |_| {});
        let r = post(addr, "/v1/embeddings", &json!({"input": texts}));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let data = r.json()["data"].as_array().unwrap().clone();
        assert_eq!(data.len(), 2);
        for (d, w) in data.iter().zip(&want) {
            let got: Vec<f64> = d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(got.len(), 24, "{name}");
            let worst = got
                .iter()
                .zip(w)
                .map(|(g, x)| (g - *x as f64).abs())
                .fold(0f64, f64::max);
            assert!(worst < 1e-6, "{name}: served embeddings differ by {worst}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
