#!/usr/bin/env python3
"""Bounded load test for attn-serve: N concurrent streaming clients for M seconds.

    python3 scripts/serve_load.py --url http://127.0.0.1:8080 --clients 4 --seconds 20 \
        [--max-tokens 64] [--pid SERVER_PID] [--api-key KEY] [--json]

Each client sends streaming completions one after another (a fresh connection each,
`stream_options.include_usage`, `ignore_eos` so every answer is max_tokens long) until
the time is up, then finishes the request it is in. Reported: aggregate generated
tokens per second over the whole run, time to first token (p50 / p99, from sending the
request to the first text chunk), requests that failed (anything but 200 and a designed
429), and the server's peak resident memory (polled from /proc/PID/status when --pid is
given, and its VmHWM from /metrics). Standard library only. Exits 1 on any failure.
"""

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlparse


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


async def one_request(host, port, body, key):
    """Returns (status, ttft seconds or None, completion tokens, error text)."""
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = json.dumps(body).encode()
        head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
        if key:
            head += f"Authorization: Bearer {key}\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        await writer.drain()
        status_line = await reader.readline()
        status = int(status_line.split()[1])
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        if status != 200:
            return status, None, 0, (await reader.read()).decode(errors="replace")[:300]
        ttft, tokens, done, err = None, 0, False, None
        while True:
            line = await reader.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            payload = line[6:].strip()
            if payload == b"[DONE]":
                done = True
                break
            ev = json.loads(payload)
            if "error" in ev:
                err = ev["error"].get("message")
                continue
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            for ch in ev.get("choices", []):
                if ch.get("text") and ttft is None:
                    ttft = time.perf_counter() - t0
        if not done or err:
            return 599, ttft, tokens, err or "stream ended without [DONE]"
        return 200, ttft, tokens, None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass


async def client(i, args, host, port, deadline, results):
    n = 0
    while time.perf_counter() < deadline:
        body = {"prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95,
                "seed": i * 100003 + n, "stream": True, "stream_options": {"include_usage": True},
                "ignore_eos": True}
        n += 1
        try:
            results.append(await one_request(host, port, body, args.api_key))
        except Exception as e:  # connection refused / reset: a failure
            results.append((0, None, 0, repr(e)))
        if results[-1][0] == 429:
            await asyncio.sleep(0.05)


def rss_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


async def watch_memory(pid, stop, peak):
    while not stop.is_set():
        peak[0] = max(peak[0], rss_of(pid))
        await asyncio.sleep(0.2)


async def scrape(host, port, name):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--api-key")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    u = urlparse(args.url)
    host, port = u.hostname, u.port or 80

    results = []
    stop = asyncio.Event()
    peak = [0]
    mem = asyncio.create_task(watch_memory(args.pid, stop, peak)) if args.pid else None
    t0 = time.perf_counter()
    deadline = t0 + args.seconds
    await asyncio.gather(*(client(i, args, host, port, deadline, results) for i in range(args.clients)))
    wall = time.perf_counter() - t0
    stop.set()
    if mem:
        await mem
    hwm = await scrape(host, port, "attn_process_peak_resident_memory_bytes")

    ok = [r for r in results if r[0] == 200]
    rejected = [r for r in results if r[0] == 429]
    failed = [r for r in results if r[0] not in (200, 429)]
    ttfts = [r[1] for r in ok if r[1] is not None]
    tokens = sum(r[2] for r in ok)
    summary = {
        "label": args.label,
        "clients": args.clients,
        "seconds": round(wall, 2),
        "max_tokens": args.max_tokens,
        "requests": len(results),
        "ok": len(ok),
        "rejected_429": len(rejected),
        "failed": len(failed),
        "tokens": tokens,
        "tokens_per_sec": round(tokens / wall, 1),
        "ttft_p50_ms": round(1000 * percentile(ttfts, 50), 1),
        "ttft_p99_ms": round(1000 * percentile(ttfts, 99), 1),
        "peak_rss_mb_polled": round(peak[0] / 2 ** 20, 1) if args.pid else None,
        "peak_rss_mb_vmhwm": round(hwm / 2 ** 20, 1),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>20}: {v}")
    for r in failed[:5]:
        print(f"failed request: status {r[0]}: {r[3]}", file=sys.stderr)
    if failed or not ok:
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
