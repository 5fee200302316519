#!/usr/bin/env python3
"""Training throughput on a CUDA GPU: attn (`attn bench train --device cuda`) beside
PyTorch + transformers' GPT2LMHeadModel (SDPA attention) on the same shapes, in one
run, with the ratio and each run's model FLOP utilisation (MFU):

    python3 scripts/torch_gpu_reference.py --attn target/release/attn [--steps 20]

  shape       model                        batch
  gpt2-small  12 layers, 12 heads, 768     8 x 1024 tokens, vocab 50257
  6x384       6 layers, 6 heads, 384       64 x 256 tokens, vocab 65 (nanoGPT shakespeare-char)

PyTorch runs in three modes: f32 (TF32 off: the arithmetic attn's f32 path does), bf16
autocast eager, and bf16 autocast with torch.compile. A step: forward with labels,
backward, clip_grad_norm_(1.0), fused AdamW, zero_grad; dropout 0; random token ids.
MFU counts 6 N + 12 L C T FLOPs per token (nanoGPT's estimate) against --peak TFLOP/s
(790: the bf16 matrix rate measured on this H200).

With --recipe input.txt it runs nanoGPT's shakespeare-char recipe instead, attn
(`attn train --preset shakespeare-char --device cuda`) then PyTorch (transformers GPT-2
blocks, bf16 autocast, torch.compile unless --modes says bf16): 6x384, context 256,
batch 64, dropout 0.2, AdamW lr 1e-3 (betas 0.9/0.99, weight decay 0.1 on matrices),
100 warm-up steps and cosine decay to 1e-4 over 5,000, clipping at 1.0, the loss of 200
batches of each split every 250 steps; it prints each side's best validation loss,
training seconds and wall seconds.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

# The script's own check runs it on the CPU (TORCH_DEVICE=cpu); the figures are CUDA's.
DEV = os.environ.get("TORCH_DEVICE", "cuda")


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


SHAPES = {
    "gpt2-small": dict(layers=12, heads=12, width=768, ctx=1024, batch=8, vocab=50257,
                       attn=["--preset", "gpt2-small", "--batch-size", "8", "--vocab-size", "50257"]),
    "6x384": dict(layers=6, heads=6, width=384, ctx=256, batch=64, vocab=65,
                  attn=["--preset", "shakespeare-char", "--dropout", "0"]),
}


def flops_per_token(s, n_params):
    return 6 * n_params + 12 * s["layers"] * s["width"] * s["ctx"]


def torch_tps(s, mode, steps, warmup):
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=s["layers"], n_head=s["heads"], n_embd=s["width"], n_positions=s["ctx"],
                     vocab_size=s["vocab"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(DEV)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=DEV == "cuda")
    run = torch.compile(model) if mode == "bf16+compile" else model
    x = torch.randint(0, s["vocab"], (s["batch"], s["ctx"]), device=DEV)

    def step():
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=mode != "f32"):
            loss = run(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    sync()
    secs = time.perf_counter() - t0
    del model, opt, run
    if DEV == "cuda":
        torch.cuda.empty_cache()
    return steps * s["batch"] * s["ctx"] / secs, n_params


def attn_tps(binary, s, steps, dtype):
    cmd = [binary, "bench", "train", "--device", "cuda", "--dtype", dtype, "--grad-accum", "1",
           "--steps", str(steps), "--json"] + s["attn"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(f"attn failed: {' '.join(cmd)}\n{r.stderr}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_sec"]


def torch_recipe(path, mode, iters, eval_iters=200, seed=1337):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torch_reference import get_lr
    from transformers import AutoModelForCausalLM, GPT2Config

    wall0 = time.perf_counter()
    text = open(path, encoding="utf-8").read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long, device=DEV)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    block, batch, eval_interval = 256, 64, 250
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=block, vocab_size=len(chars),
                     resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.2, bos_token_id=0, eos_token_id=0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").to(DEV)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), fused=DEV == "cuda")
    run = torch.compile(model) if mode == "bf16+compile" else model
    offsets = torch.arange(block, device=DEV)

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - block - 1, (batch,), device=DEV)
        return d[ix[:, None] + offsets], d[ix[:, None] + offsets + 1]

    def lm_loss(x, y):
        with torch.autocast(DEV, dtype=torch.bfloat16, enabled=mode != "f32"):
            logits = run(input_ids=x).logits
        return torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))

    @torch.no_grad()
    def estimate():
        model.eval()
        out = {k: torch.stack([lm_loss(*get_batch(k)) for _ in range(eval_iters)]).mean().item()
               for k in ("train", "val")}
        model.train()
        return out

    train_seconds, best = 0.0, float("inf")
    for it in range(iters + 1):
        if it % eval_interval == 0 or it == iters:
            losses = estimate()
            best = min(best, losses["val"])
            print(f"torch step {it}: train {losses['train']:.4f}, val {losses['val']:.4f}", flush=True)
        if it == iters:
            break
        sync()
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = get_lr(it, 1e-3, 1e-4, 100, 5000)
        loss = lm_loss(*get_batch("train"))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        train_seconds += time.perf_counter() - t0
    return {"best_val_loss": best, "final_val_loss": losses["val"], "train_seconds": train_seconds,
            "wall_seconds": time.perf_counter() - wall0}


def recipe(a):
    rows = []
    if a.attn:
        cmd = [a.attn, "train", "--preset", "shakespeare-char", "--data", a.recipe, "--device", "cuda",
               "--out", "/tmp/attn-recipe", "--overwrite", "--max-iters", str(a.iters),
               "--eval-iters", str(a.eval_iters), "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0:
            rows.append(("attn (bf16)", json.loads(r.stdout.strip().splitlines()[-1])))
        else:
            print(f"attn failed: {' '.join(cmd)}\n{r.stderr[-2000:]}", file=sys.stderr)
    for mode in a.modes:
        rows.append((f"torch ({mode})", torch_recipe(a.recipe, mode, a.iters, a.eval_iters)))
    print(f"\nshakespeare-char, {a.iters} steps")
    print(f"{'run':<22}{'best val':>10}{'final val':>11}{'train s':>10}{'wall s':>9}")
    for name, r in rows:
        print(f"{name:<22}{r['best_val_loss']:>10.4f}{r['final_val_loss']:>11.4f}"
              f"{r['train_seconds']:>10.1f}{r['wall_seconds']:>9.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--attn", help="the attn binary (run first, on the same shapes)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak", type=float, default=790.0, help="TFLOP/s for MFU")
    p.add_argument("--shapes", nargs="*", default=list(SHAPES))
    p.add_argument("--modes", nargs="*", default=None,
                   help="PyTorch modes (default: f32 bf16 bf16+compile; with --recipe, bf16+compile)")
    p.add_argument("--recipe", help="tinyshakespeare input.txt: run the shakespeare-char recipe")
    p.add_argument("--iters", type=int, default=5000, help="recipe steps (default 5000)")
    p.add_argument("--eval-iters", type=int, default=200, help="recipe: batches per loss estimate")
    a = p.parse_args()
    if a.recipe:
        a.modes = a.modes or ["bf16+compile"]
        return recipe(a)
    a.modes = a.modes or ["f32", "bf16", "bf16+compile"]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(torch.cuda.get_device_name(0) if DEV == "cuda" else DEV, "torch", torch.__version__, flush=True)
    rows = []
    for name in a.shapes:
        s = SHAPES[name]
        attn = {}
        for dtype in ("f32", "bf16"):
            attn[dtype] = attn_tps(a.attn, s, a.steps, dtype) if a.attn else None
            if attn[dtype]:
                print(f"{name}: attn {dtype} {attn[dtype]:,.0f} tok/s", flush=True)
        for mode in a.modes:
            got = attn["f32" if mode == "f32" else "bf16"]
            try:
                tps, n = torch_tps(s, mode, a.steps, a.warmup + (2 if "compile" in mode else 0))
            except Exception as e:  # one mode failing leaves the others' figures
                print(f"{name} {mode}: torch failed: {e}", flush=True)
                continue
            fpt = flops_per_token(s, n)
            rows.append((name, mode, tps, got, fpt))
            print(f"{name} {mode}: torch {tps:,.0f} tok/s", flush=True)
    print("\nattn runs in f32 beside torch f32, in bf16 (mixed precision) beside the bf16 modes")
    print(f"\n{'shape':<12}{'torch mode':<14}{'torch tok/s':>13}{'MFU':>7}{'attn tok/s':>13}{'MFU':>7}{'attn/torch':>11}")
    for name, mode, tps, got, fpt in rows:
        mfu = lambda t: f"{100 * t * fpt / (a.peak * 1e12):.1f}%"
        attn_s = f"{got:,.0f}" if got else "-"
        print(f"{name:<12}{mode:<14}{tps:>13,.0f}{mfu(tps):>7}{attn_s:>13}{(mfu(got) if got else '-'):>7}"
              f"{(f'{got / tps:.3f}' if got else '-'):>11}")


if __name__ == "__main__":
    main()
