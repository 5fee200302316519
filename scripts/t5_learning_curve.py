"""Does attn's T5 learn as transformers' does, trained the same way from scratch?

    scripts/t5_learning_curve.py [--task reverse|copy] [--steps 1500] [--lr 1e-3]
                                 [--warmup 100] [--eval-every 250] [--attn PATH]

A synthetic task where the answer is known to be learnable (the source is a random
string of 5-12 letters, the target that string reversed, or copied), 20,000 training
pairs and 200 validation pairs, characters as tokens. attn trains with
`attn summarize train --arch t5` (a T5 v1.1: gated-GELU, untied head, d_model 128,
2+2 layers, 4 heads, d_ff 256); transformers trains `T5ForConditionalGeneration` of the
same configuration with attn's recipe: AdamW (0.9, 0.98, eps 1e-9, no weight decay),
gradient clipping at 1.0, linear warm-up then lr ∝ 1/√step, dropout 0.1, label
smoothing 0.1, batches of 32 pairs; its head is drawn N(0, d_model^-1/2) as attn draws
it (transformers' own N(0, 1) starts the loss near 50 at this width). The two see
different batches and initial weights (seeded each its own way), so the curves agree in
shape and level, not digit for digit. Prints the validation loss (mean cross-entropy per
target token, no smoothing) of both at every evaluation, and the wall time of each.

Single-step parity (logits, loss, every gradient) is tested elsewhere
(`crates/attn/tests/t5.rs`); this shows that many steps compose the same way.
"""

import argparse
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_data(folder: Path, task: str, seed: int = 1):
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def line():
        return "".join(rng.choice(letters) for _ in range(rng.randint(5, 12)))

    def target(s):
        return s[::-1] if task == "reverse" else s

    train = [line() for _ in range(20000)]
    valid = [line() for _ in range(200)]
    (folder / "train.tsv").write_text("".join(f"{s}\t{target(s)}\n" for s in train))
    (folder / "valid.src").write_text("".join(f"{s}\n" for s in valid))
    (folder / "valid.tgt").write_text("".join(f"{target(s)}\n" for s in valid))
    return [(s, target(s)) for s in train], [(s, target(s)) for s in valid]


def run_attn(attn: str, folder: Path, a) -> tuple[dict, float]:
    cmd = [attn, "summarize", "train", "--pairs", str(folder / "train.tsv"),
           "--valid-src", str(folder / "valid.src"), "--valid-tgt", str(folder / "valid.tgt"),
           "--arch", "t5", "--vocab", "char", "--d-model", "128", "--layers", "2",
           "--heads", "4", "--ffn", "256", "--batch-size", "32", "--lr", str(a.lr),
           "--warmup", str(a.warmup), "--max-steps", str(a.steps),
           "--eval-interval", str(a.eval_every), "--bleu-sample", "200",
           "--dropout", "0.1", "--label-smoothing", "0.1",
           "--out", str(folder / "attn_model"), "--overwrite"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": "2"})
    if p.returncode != 0:
        sys.exit(f"attn failed: {p.stderr[-2000:]}")
    curve = {int(m[1]): float(m[2]) for m in re.finditer(r"step (\d+): train loss [\d.]+, val loss ([\d.]+)", p.stderr)}
    return curve, time.time() - t0


def run_transformers(train, valid, a) -> tuple[dict, float]:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = random.Random(0)
    chars = sorted({c for s, t in train + valid for c in s + t})
    pad, eos = 0, 1
    ids = {c: i + 2 for i, c in enumerate(chars)}

    def enc(s):
        return [ids[c] for c in s] + [eos]

    cfg = T5Config(vocab_size=len(chars) + 2, d_model=128, d_kv=32, d_ff=256, num_layers=2,
                   num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False, dropout_rate=0.1, decoder_start_token_id=pad,
                   pad_token_id=pad, eos_token_id=eos)
    model = T5ForConditionalGeneration(cfg)
    torch.nn.init.normal_(model.lm_head.weight, std=128 ** -0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    w = max(a.warmup, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / w, math.sqrt(w / (s + 1))))

    def batch(pairs):
        src = [enc(s) for s, _ in pairs]
        tgt = [enc(t) for _, t in pairs]
        ls, lt = max(map(len, src)), max(map(len, tgt))
        x = torch.tensor([s + [pad] * (ls - len(s)) for s in src])
        y = torch.tensor([t + [-100] * (lt - len(t)) for t in tgt])
        return x, (x != pad).long(), y

    smooth = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=0.1)
    plain = torch.nn.CrossEntropyLoss(ignore_index=-100)
    curve = {}
    t0 = time.time()
    for step in range(1, a.steps + 1):
        model.train()
        x, m, y = batch(rng.sample(train, 32))
        logits = model(input_ids=x, attention_mask=m, labels=y).logits
        loss = smooth(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % a.eval_every == 0:
            model.eval()
            with torch.no_grad():
                x, m, y = batch(valid)
                logits = model(input_ids=x, attention_mask=m, labels=y).logits
                curve[step] = plain(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
    return curve, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=["reverse", "copy"], default="reverse")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--attn", default=str(ROOT / "target/release/attn"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        train, valid = make_data(folder, a.task)
        attn_curve, attn_s = run_attn(a.attn, folder, a)
    hf_curve, hf_s = run_transformers(train, valid, a)
    print(f"task {a.task}, lr {a.lr}, warm-up {a.warmup}, {a.steps} steps of 32 pairs")
    print(f"{'step':>6} {'attn val loss':>14} {'transformers':>13}")
    for step in sorted(hf_curve):
        at = attn_curve.get(step)
        print(f"{step:>6} {at if at is not None else float('nan'):>14.4f} {hf_curve[step]:>13.4f}")
    print(f"wall: attn {attn_s:.1f} s, transformers {hf_s:.1f} s")


if __name__ == "__main__":
    main()
