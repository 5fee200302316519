//! The `attn-serve` program itself: start-up errors and warnings, and serving under a
//! low open-file limit.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_attn-serve");

/// Run the program, which must stop by itself within 30 s (one that starts serving
/// instead is killed and the test fails): exit success and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("ATTN_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = Child(cmd.spawn().unwrap());
    let mut stderr = child.0.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "attn-serve {args:?} {env:?} did not stop (it is serving)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[test]
fn an_empty_key_stops_the_start() {
    let model = tiny_model("cli-keys");
    let m = model.to_str().unwrap();
    let dir = std::env::temp_dir().join(format!("attn-serve-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty-key");
    std::fs::write(&empty, "").unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (&["--model", m, "--api-key="], &[]),
        (&["--model", m, "--api-key", ""], &[]),
        (&["--model", m], &[("ATTN_API_KEY", "")]),
        (
            &["--model", m, "--api-key-file", empty.to_str().unwrap()],
            &[],
        ),
    ];
    for (args, env) in cases {
        let (ok, err) = run(args, env);
        assert!(!ok, "{args:?} {env:?} started");
        assert!(
            err.starts_with("error: ") && err.contains("empty"),
            "{args:?} {env:?}: {err}"
        );
    }
    // Out-of-range numbers and durations are refused before anything is loaded.
    for args in [
        ["--model", m, "--request-timeout", "1e300"],
        ["--model", m, "--request-timeout", "1e19"],
        ["--model", m, "--max-body-bytes", "0"],
        ["--model", m, "--max-concurrency", "1000000000000"],
    ] {
        let (ok, err) = run(&args, &[]);
        assert!(!ok && err.contains(args[2]), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn serving_without_a_key_warns() {
    let (ok, err) = run(&["--model", "/nonexistent/model"], &[]);
    assert!(!ok);
    assert!(err.contains("warning: no API key"), "{err}");
    assert!(err.lines().last().unwrap().starts_with("error: "), "{err}");
    let (_, err) = run(&["--model", "/nonexistent/model"], &[("ATTN_API_KEY", "k")]);
    assert!(!err.contains("warning"), "{err}");
}

/// A child process, killed (if still running) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_low_open_file_limit_does_not_lock_the_server_out() {
    let model = tiny_model("cli-nofile");
    // 64 descriptors, and timeouts long enough that only the cap can make room.
    let mut child = Child(
        Command::new("sh")
            .arg("-c")
            .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
            .arg(BIN)
            .args(["--model", model.to_str().unwrap(), "--port", "0"])
            .args([
                "--header-timeout",
                "60",
                "--keep-alive-timeout",
                "60",
                "--api-key",
                "k",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = BufReader::new(child.0.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no 'listening' line: {log:?}"));
        if let Some(a) = line.split("listening on http://").nth(1) {
            break a.trim().parse().unwrap();
        }
        log.push(line);
    };
    // Far more idle connections than descriptors: partial heads and silent ones.
    let mut held = Vec::new();
    for i in 0..150 {
        let mut s = TcpStream::connect(addr).unwrap();
        if i % 2 == 0 {
            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
                .unwrap();
        }
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = call(
        addr,
        "POST",
        "/v1/completions",
        &[("Authorization", "Bearer k")],
        json!({"prompt": "ROMEO:", "max_tokens": 2})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    drop(held);
    log.extend(rx.try_iter());
    assert!(
        log.iter().any(|l| l.contains("open-file limit")),
        "no note of the lowered cap: {log:?}"
    );
}
