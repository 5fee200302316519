//! The server on an ephemeral port, spoken to over raw TCP.

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
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "{} is missing under CI",
            dir.display()
        );
        eprintln!("skipping: no {}", dir.display());
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
