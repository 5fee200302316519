#!/usr/bin/env python3
"""Fault cases against a running attn-serve, each followed by a check that it still serves.

    python3 scripts/serve_faults.py --url http://127.0.0.1:8080 --api-key KEY [--max-tokens-limit 512]

Cases: malformed JSON (400), a 10 MB body (413), max_tokens above the limit (400), a
wrong API key (401), no API key (401), an unknown model (404), and a client that hangs
up mid-stream (its generation stops: the client_disconnected counter in /metrics goes up
and the token counter stops). Standard library only; exits 1 on any mismatch.
"""

import argparse
import json
import socket
import sys
import time
from urllib.parse import urlparse

FAILED = []


def raw(host, port, method, path, body=b"", headers=None, read=True):
    s = socket.create_connection((host, port), timeout=60)
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if method == "POST":
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    try:
        s.sendall(head.encode() + b"\r\n" + body)
    except OSError:
        pass  # the server may answer (413) and close before reading everything
    if not read:
        return s
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        pass
    s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split()[1]) if head else 0
    return status, rest.decode(errors="replace")


def metric(host, port, name):
    _, body = raw(host, port, "GET", "/metrics")
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def report(what, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {what}: {detail}")
    if not ok:
        FAILED.append(what)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", required=True)
    ap.add_argument("--max-tokens-limit", type=int, default=1024)
    a = ap.parse_args()
    u = urlparse(a.url)
    host, port = u.hostname, u.port or 80
    auth = {"Authorization": f"Bearer {a.api_key}"}

    def still_serving(after):
        st, body = raw(host, port, "POST", "/v1/completions",
                       json.dumps({"prompt": "ROMEO:", "max_tokens": 4}).encode(), auth)
        ok = st == 200 and json.loads(body)["usage"]["completion_tokens"] >= 1
        report(f"  still serving after {after}", ok, f"status {st}")

    def case(what, want, body, headers):
        st, text = raw(host, port, "POST", "/v1/completions", body, headers)
        try:
            err = json.loads(text)["error"]
            shape = f"type={err['type']} code={err.get('code')} message={err['message'][:90]!r}"
        except Exception:
            shape = f"not an OpenAI error body: {text[:120]!r}"
            st = -st
        report(what, st == want, f"status {st} (want {want}); {shape}")
        still_serving(what)

    case("malformed JSON", 400, b'{"prompt": "ROMEO:", "max_tokens": ', auth)
    big = b'{"prompt": "' + b"a" * (10 * 2 ** 20) + b'"}'
    case("10 MB body", 413, big, auth)
    case("max_tokens above the limit", 400,
         json.dumps({"prompt": "ROMEO:", "max_tokens": a.max_tokens_limit + 1}).encode(), auth)
    case("wrong API key", 401, json.dumps({"prompt": "ROMEO:"}).encode(), {"Authorization": "Bearer wrong"})
    case("missing API key", 401, json.dumps({"prompt": "ROMEO:"}).encode(), {})
    case("unknown model", 404, json.dumps({"model": "gpt-9", "prompt": "ROMEO:"}).encode(), auth)

    # A streaming client that reads a little and hangs up.
    before = metric(host, port, 'attn_generations_total{reason="client_disconnected"}')
    tokens_before = metric(host, port, "attn_tokens_generated_total")
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": a.max_tokens_limit, "stream": True,
                       "ignore_eos": True}).encode()
    s = raw(host, port, "POST", "/v1/completions", body, auth, read=False)
    got = b""
    while got.count(b"data: ") < 5:
        got += s.recv(4096)
    s.close()
    t = time.time()
    while time.time() - t < 10:
        after = metric(host, port, 'attn_generations_total{reason="client_disconnected"}')
        if after > before and metric(host, port, "attn_active_sequences") == 0:
            break
        time.sleep(0.05)
    t1 = metric(host, port, "attn_tokens_generated_total")
    time.sleep(0.5)
    t2 = metric(host, port, "attn_tokens_generated_total")
    report("client drops mid-stream", after == before + 1 and t1 == t2 and t1 - tokens_before < a.max_tokens_limit,
           f'attn_generations_total{{reason="client_disconnected"}} {before:.0f} -> {after:.0f}; '
           f"{t1 - tokens_before:.0f} of {a.max_tokens_limit} tokens generated, then none "
           f"(counter {t1:.0f} and {t2:.0f} half a second apart)")
    still_serving("the dropped client")
    if FAILED:
        print(f"faults: {len(FAILED)} failed: {FAILED}", file=sys.stderr)
        sys.exit(1)
    print("faults: all answered as specified")


if __name__ == "__main__":
    main()
