"""BERT's training step on attn's engine against transformers, same shapes, one run.

    cargo build --release --example encoder_step
    PY=$(scripts/python_env.sh)
    $PY scripts/encoder_step_reference.py --example target/release/examples/encoder_step \
        --model ../shared/models/all-MiniLM-L6-v2 --batch 32 --tokens 64 --rounds 3

Each round runs attn's example (forward, backward and AdamW on random ids, every
sequence `--tokens` long, median of 4 steps after a first) and then a plain
transformers loop at the same shape (BertForSequenceClassification, eager attention,
AdamW, 2 threads, median of 4 steps after a first); rounds alternate so that the
machine's drift hits both. Both run with the model's dropout (0.1). `ATTN_ISA=avx2` restricts attn; restrict
torch with ATEN_CPU_CAPABILITY=avx2.
"""

import argparse
import json
import os
import statistics
import subprocess
import time


def torch_step(model_dir: str, batch: int, tokens: int, threads: int) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(threads)
    m = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, attn_implementation="eager")
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, m.config.vocab_size, (batch, tokens), generator=g)
    y = torch.arange(batch) % 2
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        opt.zero_grad()
        m(input_ids=x, attention_mask=torch.ones_like(x), labels=y).loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--example", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    rows = []
    for _ in range(a.rounds):
        out = subprocess.run([a.example, a.model, str(a.batch), str(a.tokens), "4"],
                             check=True, capture_output=True, text=True, env=env).stdout
        ours = json.loads(out.strip().splitlines()[-1])
        theirs = torch_step(a.model, a.batch, a.tokens, a.threads)
        rows.append((ours["median_step_s"], theirs))
        print(f"attn ({ours['isa']}) {ours['median_step_s']:.3f} s/step, "
              f"transformers {theirs:.3f} s/step, ratio {theirs / ours['median_step_s']:.2f}x", flush=True)
    best_ours = min(r[0] for r in rows)
    best_theirs = min(r[1] for r in rows)
    print(f"best: attn {best_ours:.3f} s, transformers {best_theirs:.3f} s, ratio {best_theirs / best_ours:.2f}x")


if __name__ == "__main__":
    main()
