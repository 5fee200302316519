#!/usr/bin/env python3
"""PyTorch / Hugging Face reference figures for the `attn` Rust toolkit.

Two subcommands:

  bench   Training and decode throughput of transformers' GPT2LMHeadModel
          (eager attention, CPU, fp32) on the same shapes the `attn bench`
          CLI measures. With --attn PATH it also runs the attn binary in the
          same process run, alternating attn / PyTorch per shape, and prints
          the ratio attn/PyTorch (above 1 means attn is faster).

            shape      model                         what
            cpu        4 layers, 4 heads, 128 wide   train: ctx 64, batch 12
            6x384      6 layers, 6 heads, 384 wide   train: ctx 256, batch 8
            llama-6x384 LlamaForCausalLM, 6 layers,     train: ctx 256, batch 8
                       384 wide, 6 query / 2 key-value heads, SwiGLU 1024, untied
            cpu        (decode)                      1-token prompt, 63 new tokens
            gpt2-small 12 layers, 12 heads, 768 wide decode: 1-token prompt, 128 new
                       (vocab 50257, n_positions 1024, random init)

          A training step is forward with labels, backward, clip_grad_norm_(1.0),
          AdamW(lr 1e-3, betas (0.9, 0.99), weight decay 0.1) step, zero_grad.
          Tokens are random ids from a fixed seed, vocab 65, dropout 0.
          tokens/s = steps * batch * context / elapsed (after warm-up steps).
          Decode is greedy model.generate(use_cache=True); new tokens / s.

  recipe  nanoGPT's CPU Shakespeare-char recipe (4x4x128, block 64, batch 12,
          2000 iters, warm-up 100 + cosine to 1e-4, weight decay on >=2-D
          params only, grad clip 1.0) trained with transformers GPT-2 blocks.
          Progress goes to stderr; the last stdout line is JSON:
          {"final_val_loss", "best_val_loss", "train_seconds", "iters"}.
          train_seconds excludes evaluation time.

Run from the repository root:

  $(scripts/python_env.sh) scripts/torch_reference.py bench --attn target/release/attn
  $(scripts/python_env.sh) scripts/torch_reference.py bench --steps 5 --json
  $(scripts/python_env.sh) scripts/torch_reference.py recipe [--iters 50] [--data PATH]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.utils import logging as hf_logging

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO_ROOT, "..", "shared", "data", "tinyshakespeare", "input.txt")

# name -> (n_layer, n_head, n_embd, context, batch, vocab); llama-* shapes are
# LlamaForCausalLM with 2 key/value heads and attn's default SwiGLU width (8/3 x n_embd
# rounded up to 32), untied head.
TRAIN_SHAPES = {
    "cpu": (4, 4, 128, 64, 12, 65),
    "6x384": (6, 6, 384, 256, 8, 65),
    "llama-6x384": (6, 6, 384, 256, 8, 65),
}
LLAMA_KV_HEADS = 2
# name -> (n_layer, n_head, n_embd, n_positions, vocab, new tokens)
DECODE_SHAPES = {
    "cpu": (4, 4, 128, 64, 65, 63),
    "gpt2-small": (12, 12, 768, 1024, 50257, 128),
}
# attn CLI arguments that measure the same shape (on the CPU, as PyTorch here, also on
# a machine with a GPU)
ATTN_TRAIN_ARGS = {
    "cpu": ["--device", "cpu", "--preset", "shakespeare-char-cpu"],
    "6x384": ["--device", "cpu", "--preset", "shakespeare-char", "--batch-size", "8", "--dropout", "0"],
    "llama-6x384": ["--device", "cpu", "--preset", "shakespeare-char", "--batch-size", "8", "--dropout", "0",
                    "--arch", "llama", "--n-kv-head", str(LLAMA_KV_HEADS)],
}
ATTN_DECODE_ARGS = {
    "cpu": ["--preset", "shakespeare-char-cpu"],
    "gpt2-small": ["--preset", "gpt2-small", "--max-new-tokens", "128"],
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_model(n_layer, n_head, n_embd, n_positions, vocab):
    kw = {}
    if vocab < 50257:  # GPT-2's bos/eos id 50256 does not exist in a small vocab
        kw = dict(bos_token_id=None, eos_token_id=None)
    cfg = GPT2Config(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_positions,
                     vocab_size=vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     attn_implementation="eager", **kw)
    return GPT2LMHeadModel(cfg)


# ---------------------------------------------------------------- bench

def make_llama(n_layer, n_head, n_embd, n_positions, vocab):
    from transformers import LlamaConfig, LlamaForCausalLM
    inter = -(-8 * n_embd // 3)
    inter = -(-inter // 32) * 32
    cfg = LlamaConfig(hidden_size=n_embd, intermediate_size=inter, num_hidden_layers=n_layer,
                      num_attention_heads=n_head, num_key_value_heads=LLAMA_KV_HEADS,
                      max_position_embeddings=n_positions, vocab_size=vocab,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                      attn_implementation="eager")
    return LlamaForCausalLM(cfg)


def torch_train_tps(shape, steps, warmup, seed):
    n_layer, n_head, n_embd, ctx, batch, vocab = TRAIN_SHAPES[shape]
    torch.manual_seed(seed)
    build = make_llama if shape.startswith("llama") else make_model
    model = build(n_layer, n_head, n_embd, ctx, vocab).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (batch, ctx), generator=gen)

    def step():
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - t0
    return steps * batch * ctx / elapsed


@torch.no_grad()
def torch_decode_tps(shape, seed, repeats=2):
    n_layer, n_head, n_embd, n_pos, vocab, new = DECODE_SHAPES[shape]
    torch.manual_seed(seed)
    model = make_model(n_layer, n_head, n_embd, n_pos, vocab).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)
    kw = dict(attention_mask=torch.ones_like(prompt), do_sample=False, use_cache=True,
              eos_token_id=None, pad_token_id=0)
    model.generate(prompt, max_new_tokens=4, **kw)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kw)
        elapsed = time.perf_counter() - t0
        best = max(best, (out.shape[1] - prompt.shape[1]) / elapsed)
    return best


def run_attn(binary, args):
    """Run `attn bench ... --json`; return tokens_per_sec or None on failure."""
    cmd = [binary, "bench", *args, "--json"]
    log("$ " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        log(f"attn failed to start: {e}")
        return None
    if p.returncode != 0:
        log(f"attn exited {p.returncode}; stderr:\n{p.stderr}")
        return None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            return float(json.loads(line)["tokens_per_sec"])
        except (ValueError, KeyError, TypeError):
            continue
    log(f"attn printed no JSON with tokens_per_sec; stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return None


def cmd_bench(a):
    hf_logging.set_verbosity_error()
    rows, failed = [], False
    jobs = [("train", s) for s in TRAIN_SHAPES] + [("decode", s) for s in DECODE_SHAPES]
    for kind, shape in jobs:
        if a.shapes and shape not in a.shapes:
            continue
        row = {"kind": kind, "shape": shape, "attn": None, "pytorch": None, "ratio": None}
        if a.attn:
            args = (["train", *ATTN_TRAIN_ARGS[shape], "--steps", str(a.steps)] if kind == "train"
                    else ["generate", *ATTN_DECODE_ARGS[shape]])
            row["attn"] = run_attn(a.attn, args)
            row["attn_failed"] = row["attn"] is None
            failed |= row["attn_failed"]
        log(f"pytorch {kind} {shape} ...")
        if kind == "train":
            row["pytorch"] = torch_train_tps(shape, a.steps, a.warmup, a.seed)
        else:
            row["pytorch"] = torch_decode_tps(shape, a.seed)
        if row["attn"] is not None:
            row["ratio"] = row["attn"] / row["pytorch"]
        rows.append(row)

    if a.json:
        print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                          "steps": a.steps, "results": rows}))
    else:
        fmt = lambda v, p: "-" if v is None else f"{v:.{p}f}"
        print(f"{'kind':<7}{'shape':<12}{'attn tok/s':>12}{'pytorch tok/s':>15}{'ratio':>8}")
        for r in rows:
            attn_s = "FAILED" if a.attn and r["attn"] is None else fmt(r["attn"], 1)
            print(f"{r['kind']:<7}{r['shape']:<12}{attn_s:>12}{fmt(r['pytorch'], 1):>15}"
                  f"{fmt(r['ratio'], 2):>8}")
    return 1 if failed else 0


# ---------------------------------------------------------------- recipe

def get_lr(it, lr, min_lr, warmup, decay_iters):
    """nanoGPT's schedule: linear warm-up, cosine decay to min_lr, then flat."""
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def cmd_recipe(a):
    hf_logging.set_verbosity_error()
    with open(a.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    block, batch = 64, 12
    log(f"data {a.data}: {len(text)} chars, vocab {len(chars)}, "
        f"train {n} / val {len(data) - n} tokens")

    torch.manual_seed(a.seed)
    model = make_model(4, 4, 128, block, len(chars))
    gen = torch.Generator().manual_seed(a.seed)

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block - 1, (batch,), generator=gen)
        x = torch.stack([d[i:i + block] for i in ix.tolist()])
        y = torch.stack([d[i + 1:i + 1 + block] for i in ix.tolist()])
        return x, y

    def lm_loss(x, y):
        # transformers shifts labels internally; our y is already shifted, so
        # compute the cross entropy directly over all block positions (nanoGPT).
        logits = model(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ("train", "val"):
            out[split] = sum(lm_loss(*get_batch(split)).item()
                             for _ in range(a.eval_iters)) / a.eval_iters
        model.train()
        return out

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    lr, min_lr, warmup, decay_iters = 1e-3, 1e-4, 100, 2000
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
    log(f"model {sum(p.numel() for p in params) / 1e6:.3f}M params, {a.iters} iters")

    model.train()
    train_seconds, best_val, losses = 0.0, float("inf"), None
    for it in range(a.iters + 1):
        if it % a.eval_interval == 0 or it == a.iters:
            losses = estimate_loss()
            best_val = min(best_val, losses["val"])
            log(f"step {it}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
                f"train time {train_seconds:.1f}s")
        if it == a.iters:
            break
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = get_lr(it, lr, min_lr, warmup, decay_iters)
        x, y = get_batch("train")
        loss = lm_loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - t0
        if it % a.log_interval == 0:
            log(f"iter {it}: loss {loss.item():.4f}, lr {opt.param_groups[0]['lr']:.2e}")

    print(json.dumps({"final_val_loss": round(losses["val"], 4), "best_val_loss": round(best_val, 4),
                      "train_seconds": round(train_seconds, 2), "iters": a.iters}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=1337)
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("bench", help="training / decode throughput, optionally vs the attn binary")
    b.add_argument("--attn", help="path to the attn binary; run it alongside PyTorch")
    b.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    b.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    b.add_argument("--shapes", nargs="*", help="restrict to these shape names (cpu 6x384 gpt2-small)")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")

    r = sub.add_parser("recipe", help="nanoGPT Shakespeare-char CPU recipe reference run")
    r.add_argument("--data", default=DEFAULT_DATA, help="tinyshakespeare input.txt")
    r.add_argument("--iters", type=int, default=2000)
    r.add_argument("--eval-interval", type=int, default=250)
    r.add_argument("--eval-iters", type=int, default=20)
    r.add_argument("--log-interval", type=int, default=100)

    a = p.parse_args()
    torch.set_num_threads(a.threads)
    sys.exit(cmd_bench(a) if a.cmd == "bench" else cmd_recipe(a))


if __name__ == "__main__":
    main()
