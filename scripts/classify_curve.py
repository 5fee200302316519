#!/usr/bin/env python3
"""The loss curve of `attn classify train --model <RoBERTa folder>` against a plain
transformers training loop on the same model and data.

A random RobertaForSequenceClassification (labels neg, pos; dropout 0) is saved with a
char tokenizer written by `attn tokenizer train`. attn fine-tunes it with every
training example in one batch (so both sides see the same data at every step, whatever
the shuffling), no warm-up (linear decay to 0 over the steps, which is also
transformers' get_linear_schedule_with_warmup), AdamW (betas 0.9/0.999, eps 1e-8,
weight decay on matrices and embedding tables), gradients clipped to norm 1. The
transformers loop does the same with torch.optim.AdamW and clip_grad_norm_, on the ids
attn's saved tokenizer gives (padded, with an attention mask). attn's loss of each step
is the `train_loss` of its epoch in metrics.jsonl (one step per epoch).

The padding id is one no text uses (the last id), so transformers' padding_idx (whose
embedding row gets no gradient) and its padding-offset positions see only real tokens.
The weights are drawn with std 0.2 (transformers' default is 0.02): at 0.02 the
gradients of some tensors are so small (the key biases' are zero in exact arithmetic)
that AdamW, which divides by their size, turns rounding differences into steps of the
full learning rate, and both curves then follow their own rounding.

    $(scripts/python_env.sh) scripts/classify_curve.py --attn target/release/attn [--steps 20]

Prints both curves and the largest difference; exits 1 above --tol (1e-4).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from tokenizers import Tokenizer
from transformers import RobertaConfig, RobertaForSequenceClassification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("ATTN_DATA_DIR", os.path.join(ROOT, "..", "shared", "data"))
LETTERS = "abcdefghijklmnopqrstuvwxyz .,'"


def texts(path, n):
    out = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            t = "".join(c for c in line.lower() if c in LETTERS)[:60].strip()
            if len(t) > 10:
                out.append(t)
            if len(out) == n:
                break
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attn", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--examples", type=int, default=64, help="training examples (one batch)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--tol", type=float, default=1e-4)
    a = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    pol = os.path.join(DATA, "sentence-polarity")
    half = a.examples // 2
    rows = [("pos", t) for t in texts(os.path.join(pol, "rt-polarity.pos"), half)]
    rows += [("neg", t) for t in texts(os.path.join(pol, "rt-polarity.neg"), half)]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, out = os.path.join(tmp, "roberta"), os.path.join(tmp, "out")
        os.makedirs(model_dir)
        with open(os.path.join(tmp, "letters.txt"), "w") as f:
            f.write(LETTERS + "\n")
        subprocess.run([a.attn, "tokenizer", "train", "--kind", "char", "--data",
                        os.path.join(tmp, "letters.txt"), "--out", model_dir], check=True,
                       capture_output=True)
        n_tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json")).get_vocab_size()
        vocab = n_tok + 8  # room for the special tokens attn adds, and an unused padding id
        cfg = RobertaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=vocab + 80, type_vocab_size=1,
                            pad_token_id=vocab - 1, bos_token_id=0, eos_token_id=0,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                            num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1},
                            initializer_range=0.2)
        model = RobertaForSequenceClassification(cfg).float()
        model.save_pretrained(model_dir)
        train = os.path.join(tmp, "train.tsv")
        with open(train, "w") as f:
            f.writelines(f"{l}\t{t}\n" for l, t in rows)
        valid = os.path.join(tmp, "valid.tsv")
        with open(valid, "w") as f:
            f.writelines(f"{l}\t{t}\n" for l, t in rows[:4])
        subprocess.run([a.attn, "classify", "train", "--model", model_dir, "--data", train, "--valid", valid,
                        "--out", out, "--epochs", str(a.steps), "--batch-size", str(len(rows)), "--lr",
                        str(a.lr), "--warmup-ratio", "0", "--weight-decay", "0.01", "--dropout", "0",
                        "--max-len", "64"], check=True, capture_output=True)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            attn_losses = [json.loads(l)["train_loss"] for l in f if '"eval"' in l]

        tok = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        with open(os.path.join(out, "attn_classifier.json")) as f:
            max_len = json.load(f)["max_len"]
        tok.enable_truncation(max_length=max_len)
        enc = [tok.encode(t).ids for _, t in rows]
        assert all(cfg.pad_token_id not in e for e in enc)
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), cfg.pad_token_id)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, :len(e)] = torch.tensor(e)
            mask[i, :len(e)] = 1
        labels = torch.tensor([cfg.label2id[l] for l, _ in rows])
        model = RobertaForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
        model.train()
        # attn decays matrices and embedding tables (not a one-row table, nor vectors).
        decays = lambda p: p.dim() >= 2 and p.shape[0] > 1
        decay = [p for p in model.parameters() if decays(p)]
        rest = [p for p in model.parameters() if not decays(p)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (a.steps - s) / a.steps)
        hf_losses = []
        for _ in range(a.steps):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            hf_losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    worst = 0.0
    print("step  attn        transformers  |diff|")
    for i, (x, y) in enumerate(zip(attn_losses, hf_losses)):
        worst = max(worst, abs(x - y))
        print(f"{i + 1:4d}  {x:.8f}  {y:.8f}    {abs(x - y):.2e}")
    ok = len(attn_losses) == a.steps and worst <= a.tol
    print(f"{len(rows)} examples, {a.steps} steps: largest difference {worst:.2e} "
          f"({'ok' if ok else 'FAIL'}, tolerance {a.tol})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
