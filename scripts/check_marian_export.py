#!/usr/bin/env python3
"""Check that a folder written by `attn translate train` (a MarianMTModel) or by `attn
summarize train` / `attn pretrain` (a T5ForConditionalGeneration) is a working Hugging
Face model: load it with transformers, decode sentences with the same beam search
(`generate(num_beams=N, length_penalty=A, early_stopping=True)`), and compare the output
with `attn translate` on the same sentences.

    $(scripts/python_env.sh) scripts/check_marian_export.py --model runs/multi30k --attn target/release/attn \
        --src ../shared/data/multi30k/test_2016_flickr.de --n 200

Prints how many translations are identical; exits 1 if any differ.
"""
import argparse
import subprocess
import sys

import torch
from tokenizers import Tokenizer
import json
import os

from transformers import AutoModelForSeq2SeqLM


# The characters Rust's str::trim removes (Unicode White_Space).
RUST_WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
                   "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--attn", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--length-penalty", type=float, default=1.0)
    a = ap.parse_args()

    lines = [l.rstrip("\n") for l in open(a.src, encoding="utf-8")][: a.n]
    out = subprocess.run(
        [a.attn, "translate", "--model", a.model, "--beam", str(a.beam),
         "--length-penalty", str(a.length_penalty)],
        input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
    ).stdout.split("\n")[: len(lines)]

    torch.set_num_threads(2)
    model, info = AutoModelForSeq2SeqLM.from_pretrained(a.model, output_loading_info=True)
    model.eval()
    if info["missing_keys"] or info["unexpected_keys"]:
        print(f"missing {info['missing_keys']}, unexpected {info['unexpected_keys']}")
        sys.exit(1)
    print(f"{type(model).__name__}: no missing or unexpected keys")
    tok = Tokenizer.from_file(f"{a.model}/tokenizer.json")
    eos = model.config.eos_token_id
    # The longest source and output `attn translate` uses: the folder's max_len.
    with open(os.path.join(a.model, "attn_translate.json")) as f:
        max_len = json.load(f)["max_len"]
    same = 0
    for i, (src, mine) in enumerate(zip(lines, out)):
        ids = tok.encode(src, add_special_tokens=False).ids[: max_len - 1] + [eos]
        with torch.no_grad():
            gen = model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                num_beams=a.beam, length_penalty=a.length_penalty, early_stopping=True,
                max_new_tokens=max_len, do_sample=False,
            )[0].tolist()
        theirs = tok.decode([t for t in gen[1:] if t != eos and t != model.config.pad_token_id],
                            skip_special_tokens=True)
        # attn writes one line per input: line breaks become spaces, then Rust's trim().
        theirs = theirs.replace("\n", " ").replace("\r", " ").strip(RUST_WHITESPACE)
        if theirs == mine:
            same += 1
        else:
            print(f"line {i}: attn {mine!r}\n        transformers {theirs!r}")
    print(f"{same} of {len(out)} translations identical (beam {a.beam}, "
          f"length penalty {a.length_penalty})")
    sys.exit(0 if same == len(out) else 1)


if __name__ == "__main__":
    main()
