"""transformers' side of the translation training-step benchmark.

Usage: translate_step_reference.py MODEL_DIR SRC TGT STEPS [BATCH]

MODEL_DIR is a folder written by `attn translate train` (a MarianMTModel folder with
tokenizer.json) or by `attn summarize train` / `attn pretrain` (a T5ForConditionalGeneration). Batch k is pairs k*BATCH .. (k+1)*BATCH of the files,
encoded with the folder's tokenizer as attn encodes them (NFC, truncated to max_len - 1
tokens, then </s>), padded to the batch's longest side. One step is what
`attn translate train` does: forward with dropout, label-smoothed (0.1) cross-entropy over
the real target tokens, backward, global-norm clipping at 1.0, AdamW (0.9, 0.98, 1e-9).
Prints target tokens per second over the steps after the first, at 2 threads (override
with THREADS). The Rust side: `cargo run --release --example translate_step`.
"""
import json
import os
import sys
import time
import unicodedata

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSeq2SeqLM


def main():
    folder, src_path, tgt_path = sys.argv[1], sys.argv[2], sys.argv[3]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    b = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    max_len = json.load(open(os.path.join(folder, "attn_translate.json")))["max_len"]
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, attn_implementation="eager")
    cfg = model.config
    model.train()

    def enc(s):
        ids = tok.encode(unicodedata.normalize("NFC", s.strip())).ids[: max_len - 1]
        return ids + [cfg.eos_token_id]

    src = open(src_path, encoding="utf-8").read().splitlines()
    tgt = open(tgt_path, encoding="utf-8").read().splitlines()
    pairs = [(enc(s), enc(t)) for s, t in list(zip(src, tgt))[: (steps + 1) * b]]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1, ignore_index=-100)
    pad = cfg.pad_token_id
    tokens, seconds = 0, 0.0
    for i in range(0, len(pairs), b):
        chunk = pairs[i : i + b]
        s_len = max(len(s) for s, _ in chunk)
        t_len = max(len(t) for _, t in chunk)
        ids = torch.tensor([s + [pad] * (s_len - len(s)) for s, _ in chunk])
        mask = torch.tensor([[1] * len(s) + [0] * (s_len - len(s)) for s, _ in chunk])
        labels = torch.tensor([t + [-100] * (t_len - len(t)) for _, t in chunk])
        dec = torch.tensor([[cfg.decoder_start_token_id] + t[:-1] + [pad] * (t_len - len(t)) for _, t in chunk])
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        n = sum(len(t) for _, t in chunk)
        if i > 0:
            tokens += n
            seconds += dt
        print(f"step {i // b}: loss {loss.item():.4f}, {n} target tokens, {dt:.3f} s", file=sys.stderr)
    print(json.dumps({"impl": "transformers", "torch": torch.__version__, "batch": b, "steps": steps,
                      "target_tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}))


if __name__ == "__main__":
    main()
