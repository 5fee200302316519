"""`attn classify train` against a plain transformers training loop, whole commands, one run.

    PY=$(scripts/python_env.sh)
    $PY scripts/classify_reference.py --attn target/release/attn \
        --model ../shared/models/all-MiniLM-L6-v2 --steps 30 --rounds 2 [--avx2]

The data: sentence-polarity reviews joined (same label) until each text is at least 64
MiniLM tokens long, so that with `--max-len 64` every example is exactly 64 tokens on
both sides and both compute the same shapes: `--steps` batches of 32 for training, 64
examples for validation. Both sides fine-tune all-MiniLM-L6-v2 for sequence
classification for one epoch (AdamW, lr 5e-5, weight decay 0.01, linear warm-up over
10% of the steps then linear decay, dropout 0.1, shuffled batches), evaluate accuracy on
the validation set and save the model. Each side is timed as a whole command from a
fresh process (attn: the `attn classify train` command; transformers: `python` running
the loop below, its imports and model loading included, as a user runs it), on
`--threads` threads; rounds alternate so that the machine's drift hits both. `--avx2`
restricts both to AVX2 (ATTN_ISA=avx2; ATEN_CPU_CAPABILITY, MKL_ENABLE_INSTRUCTIONS and
ONEDNN_MAX_CPU_ISA for torch).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCH_LOOP = r'''
import sys, time, random
t_start = time.perf_counter()
import torch
from transformers import AutoTokenizer, AutoModelForSequenceClassification, get_linear_schedule_with_warmup

model_dir, train_tsv, valid_tsv, out_dir, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
torch.manual_seed(42)
random.seed(42)

def read(path):
    rows = [l.rstrip("\n").split("\t", 1) for l in open(path, encoding="utf-8") if l.strip()]
    return [r[1] for r in rows], [r[0] for r in rows]

tx, ty = read(train_tsv)
vx, vy = read(valid_tsv)
labels = sorted(set(ty))
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForSequenceClassification.from_pretrained(
    model_dir, num_labels=len(labels), attn_implementation="eager")
enc = lambda xs: tok(xs, truncation=True, max_length=64, padding="max_length", return_tensors="pt")
train = enc(tx)
ytr = torch.tensor([labels.index(y) for y in ty])
valid = enc(vx)
yva = torch.tensor([labels.index(y) for y in vy])
assert int(train["attention_mask"].sum()) == train["attention_mask"].numel(), "texts shorter than 64 tokens"
batch = 32
steps = len(tx) // batch
no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                         {"params": no_decay, "weight_decay": 0.0}], lr=5e-5)
sched = get_linear_schedule_with_warmup(opt, int(0.1 * steps), steps)
order = list(range(len(tx)))
random.shuffle(order)
model.train()
t_train = time.perf_counter()
for s in range(steps):
    idx = torch.tensor(order[s * batch:(s + 1) * batch])
    out = model(input_ids=train["input_ids"][idx], attention_mask=train["attention_mask"][idx],
                token_type_ids=train["token_type_ids"][idx], labels=ytr[idx])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad()
t_trained = time.perf_counter()
model.eval()
correct = 0
with torch.no_grad():
    for i in range(0, len(vx), batch):
        logits = model(input_ids=valid["input_ids"][i:i + batch],
                       attention_mask=valid["attention_mask"][i:i + batch],
                       token_type_ids=valid["token_type_ids"][i:i + batch]).logits
        correct += int((logits.argmax(-1) == yva[i:i + batch]).sum())
model.save_pretrained(out_dir)
tok.save_pretrained(out_dir)
print(f"TORCH steps={steps} train_s={t_trained - t_train:.3f} accuracy={correct / len(vx):.4f}")
'''


def texts(data: Path, tokenizer, n: int) -> list[tuple[str, str]]:
    """`n` (label, text) pairs, each text one label's sentences joined to >= 64 tokens."""
    pos = (data / "rt-polarity.pos").read_text(encoding="utf-8", errors="replace").splitlines()
    neg = (data / "rt-polarity.neg").read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    pools = {"pos": iter(pos), "neg": iter(neg)}
    while len(out) < n:
        label = "pos" if len(out) % 2 == 0 else "neg"
        parts = []
        while len(tokenizer.encode(" ".join(parts)).ids) < 64:
            parts.append(next(pools[label]).strip())
        out.append((label, " ".join(parts)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/sentence-polarity"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--avx2", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(Path(a.model) / "tokenizer.json"))
    tk.no_padding()
    tk.no_truncation()
    examples = texts(Path(a.data), tk, a.steps * 32 + 64)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), RAYON_NUM_THREADS=str(a.threads))
    if a.avx2:
        env.update(ATTN_ISA="avx2", ATEN_CPU_CAPABILITY="avx2", MKL_ENABLE_INSTRUCTIONS="AVX2",
                   ONEDNN_MAX_CPU_ISA="AVX2")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write = lambda p, rows: p.write_text("".join(f"{l}\t{t}\n" for l, t in rows), encoding="utf-8")
        write(tmp / "train.tsv", examples[:a.steps * 32])
        write(tmp / "valid.tsv", examples[a.steps * 32:])
        (tmp / "loop.py").write_text(TORCH_LOOP)
        for r in range(a.rounds):
            t0 = time.perf_counter()
            p = subprocess.run(
                [a.attn, "classify", "train", "--data", str(tmp / "train.tsv"), "--valid", str(tmp / "valid.tsv"),
                 "--model", a.model, "--out", str(tmp / "attn-out"), "--overwrite", "--epochs", "1",
                 "--batch-size", "32", "--max-len", "64", "--lr", "5e-5", "--json"],
                env=env, capture_output=True, text=True)
            t_attn = time.perf_counter() - t0
            if p.returncode != 0:
                sys.exit(f"attn failed:\n{p.stderr}")
            summary = json.loads(p.stdout)
            attn_acc = (summary["best_val_accuracy"], round(summary["train_seconds"], 3))
            t0 = time.perf_counter()
            q = subprocess.run([sys.executable, str(tmp / "loop.py"), a.model, str(tmp / "train.tsv"),
                                str(tmp / "valid.tsv"), str(tmp / "torch-out"), str(a.threads)],
                               env=env, capture_output=True, text=True)
            t_torch = time.perf_counter() - t0
            if q.returncode != 0:
                sys.exit(f"transformers loop failed:\n{q.stderr}")
            line = [l for l in q.stdout.splitlines() if l.startswith("TORCH")][0]
            results.append({"attn_s": t_attn, "transformers_s": t_torch, "ratio": t_torch / t_attn,
                            "attn_accuracy": attn_acc, "transformers": line})
            print(f"round {r + 1}: attn {t_attn:.1f} s (accuracy, train s: {attn_acc}), transformers {t_torch:.1f} s ({line}), "
                  f"ratio {t_torch / t_attn:.2f}x", flush=True)
    best = {"attn_s": min(x["attn_s"] for x in results), "transformers_s": min(x["transformers_s"] for x in results)}
    best["ratio"] = best["transformers_s"] / best["attn_s"]
    print(f"best: attn {best['attn_s']:.1f} s, transformers {best['transformers_s']:.1f} s, ratio {best['ratio']:.2f}x "
          f"({'avx2' if a.avx2 else 'native ISA'}, {a.steps} steps of 32 x 64 tokens)")
    if a.json:
        print(json.dumps({"rounds": results, "best": best}))


if __name__ == "__main__":
    main()
