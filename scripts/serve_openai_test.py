#!/usr/bin/env python3
"""Talk to a running attn-serve with the official `openai` package (no mocks).

    python scripts/serve_openai_test.py --base-url http://127.0.0.1:8080/v1 --api-key KEY \
        [--embed-base-url http://127.0.0.1:8081/v1]

Checks completions, chat, streaming of both, seeds, stop strings, usage, and that
errors arrive as the openai package's typed exceptions: wrong key (401), unknown model
(404), max_tokens above the limit (400). Exits non-zero on the first failure.
"""

import argparse
import sys
import time

import openai
from openai import OpenAI


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def expect_error(kind, status, fn, what):
    try:
        fn()
    except kind as e:
        check(e.status_code == status, f"{what}: {kind.__name__} with status {e.status_code}")
        body = e.body if isinstance(e.body, dict) else {}
        check(bool(body.get("message")), f"{what}: OpenAI error body with a message ({body.get('message')!r})")
        return
    check(False, f"{what}: expected {kind.__name__}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--embed-base-url")
    a = ap.parse_args()

    client = OpenAI(base_url=a.base_url, api_key=a.api_key, max_retries=0, timeout=120)
    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) == 1, f"models.list -> {ids}")
    model = ids[0]
    check(client.models.retrieve(model).id == model, "models.retrieve")

    c = client.completions.create(model=model, prompt="ROMEO:", max_tokens=32, temperature=0.8, top_p=0.95, seed=7)
    text = c.choices[0].text
    check(len(text) > 0, f"completion text {text!r}")
    check(c.usage.completion_tokens == 32 or c.choices[0].finish_reason == "stop", f"usage {c.usage}")
    check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "usage adds up")
    again = client.completions.create(model=model, prompt="ROMEO:", max_tokens=32, temperature=0.8, top_p=0.95, seed=7)
    check(again.choices[0].text == text, "the same seed gives the same text")

    pieces = []
    finish = None
    usage = None
    for chunk in client.completions.create(model=model, prompt="ROMEO:", max_tokens=32, temperature=0.8,
                                           top_p=0.95, seed=7, stream=True, stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            pieces.append(ch.text)
            finish = ch.finish_reason or finish
    check(len([p for p in pieces if p]) > 1, f"streamed completion arrived in {len(pieces)} chunks")
    check("".join(pieces) == text, "streamed text equals the non-streamed text for the same seed")
    check(finish in ("length", "stop"), f"stream finish_reason {finish}")
    check(usage is not None and usage.completion_tokens > 0, f"usage chunk {usage}")

    # Each event is written as its token is made, not held to the end: over a long
    # stream the first piece arrives well before the last (the browser test slows its
    # network and so checks the page alone).
    t0 = time.perf_counter()
    times = []
    for chunk in client.completions.create(model=model, prompt="ROMEO:", max_tokens=500, temperature=0.8,
                                           seed=7, stream=True, extra_body={"ignore_eos": True}):
        if any(ch.text for ch in chunk.choices):
            times.append(time.perf_counter() - t0)
    check(len(times) > 100 and times[0] < 0.5 * times[-1],
          f"a 500-token stream's first piece after {times[0]:.3f} s, its last after {times[-1]:.3f} s "
          f"({len(times)} pieces)")

    stop_at = text[len(text) // 2:len(text) // 2 + 2]
    s = client.completions.create(model=model, prompt="ROMEO:", max_tokens=32, temperature=0.8, top_p=0.95,
                                  seed=7, stop=[stop_at])
    check(s.choices[0].finish_reason == "stop" and s.choices[0].text == text[:text.find(stop_at)],
          f"stop string {stop_at!r} cuts the text")

    chat = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "Speak verse."},
                                                                 {"role": "user", "content": "What light?"}],
                                          max_tokens=24, temperature=0.7, seed=1)
    msg = chat.choices[0].message
    check(msg.role == "assistant" and msg.content is not None, f"chat reply {msg.content!r}")
    check(chat.usage.prompt_tokens > 0, f"chat usage {chat.usage}")

    deltas = []
    roles = []
    for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "What light?"}],
                                                max_tokens=24, stream=True):
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            if ch.delta.content:
                deltas.append(ch.delta.content)
    check(roles == ["assistant"], f"streamed chat sends the role once ({roles})")
    check(len(deltas) > 0, f"streamed chat text {''.join(deltas)!r}")

    expect_error(openai.BadRequestError, 400,
                 lambda: client.completions.create(model=model, prompt="x", max_tokens=10 ** 9),
                 "max_tokens above the limit")
    expect_error(openai.BadRequestError, 400,
                 lambda: client.completions.create(model=model, prompt="x", temperature=9),
                 "temperature out of range")
    expect_error(openai.NotFoundError, 404,
                 lambda: client.completions.create(model="no-such-model", prompt="x"),
                 "unknown model")
    if a.api_key != "none":
        bad = OpenAI(base_url=a.base_url, api_key="wrong-" + a.api_key, max_retries=0)
        expect_error(openai.AuthenticationError, 401, lambda: bad.models.list(), "wrong API key")
    check(client.completions.create(model=model, prompt="ROMEO:", max_tokens=4).usage.completion_tokens >= 1,
          "still serving after the errors")

    if a.embed_base_url:
        e = OpenAI(base_url=a.embed_base_url, api_key=a.api_key, max_retries=0)
        emodel = e.models.list().data[0].id
        r = e.embeddings.create(model=emodel, input=["A man is eating food.", "A man eats a meal.",
                                                     "The stock market fell."])
        v = [d.embedding for d in r.data]
        dot = lambda x, y: sum(p * q for p, q in zip(x, y))
        check(len(v) == 3 and len(v[0]) == 384, f"embeddings of {emodel}: 3 x {len(v[0])}")
        check(abs(dot(v[0], v[0]) - 1) < 1e-3, "embeddings are unit length")
        check(dot(v[0], v[1]) > dot(v[0], v[2]), f"similar sentences are closer ({dot(v[0], v[1]):.3f} > {dot(v[0], v[2]):.3f})")
        r2 = e.embeddings.create(model=emodel, input="A man is eating food.", encoding_format="float")
        check(max(abs(p - q) for p, q in zip(r2.data[0].embedding, v[0])) < 1e-5, "float and base64 encodings agree")
    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
