"""`attn data tokenize` against Python `tokenizers` batch encoding, same tokenizer, same text.

    PY=$(scripts/python_env.sh)
    $PY scripts/tokenize_speed.py --attn target/release/attn --input FILES... [--tokenizer tokenizer.json]

Without --tokenizer, a byte-level BPE of 8,192 tokens is trained with `attn tokenizer
train` on the shared corpora. Each side does the whole job: read the files, encode, and
write the ids as u16 (attn: its shards and index; Python: `Tokenizer.encode_batch` over
batches of 10,000 lines, add_special_tokens=False, on all cores, the ids written with
NumPy). attn runs twice: with its own encoder, and with ATTN_TOKENIZER_LIBRARY=1 (the
tokenizers library inside attn), which shows what the encoder itself brings. Printed:
seconds, MB/s, tokens, and the ratios.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


def python_side(files, tok_path, out):
    tok = Tokenizer.from_file(str(tok_path))
    n = 0
    with open(out, "wb") as f:
        for p in files:
            with open(p, encoding="utf-8") as fh:
                while True:
                    lines = fh.readlines(8 << 20)
                    if not lines:
                        break
                    for i in range(0, len(lines), 10_000):
                        encs = tok.encode_batch(lines[i:i + 10_000], add_special_tokens=False)
                        ids = np.fromiter((t for e in encs for t in e.ids), dtype=np.uint16)
                        ids.tofile(f)
                        n += len(ids)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--input", nargs="+", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data"))
    a = ap.parse_args()
    files = [Path(p) for p in a.input]
    size = sum(p.stat().st_size for p in files)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.tokenizer:
            tok = Path(a.tokenizer)
        else:
            data = Path(a.data)
            names = ["tinyshakespeare/input.txt", "gutenberg/austen-emma.txt", "gutenberg/melville-moby_dick.txt",
                     "gutenberg/whitman-leaves.txt", "multi30k/train.en", "multi30k/train.de"]
            sample = [str(data / n) for n in names if (data / n).is_file()]
            subprocess.run([a.attn, "tokenizer", "train", "--data", *sample, "--vocab-size", "8192",
                            "--out", str(tmp / "tok")], check=True, capture_output=True)
            tok = tmp / "tok" / "tokenizer.json"

        def run_attn(env_extra):
            out = tmp / "shards"
            t0 = time.perf_counter()
            p = subprocess.run([a.attn, "data", "tokenize", "--input", *map(str, files), "--tokenizer", str(tok),
                                "--out", str(out), "--overwrite", "--json"],
                               capture_output=True, text=True, env={**os.environ, **env_extra})
            dt = time.perf_counter() - t0
            if p.returncode != 0:
                raise SystemExit(p.stderr)
            return dt, json.loads(p.stdout)["tokens"]

        t_attn, n_attn = run_attn({})
        t_lib, _ = run_attn({"ATTN_TOKENIZER_LIBRARY": "1"})
        t0 = time.perf_counter()
        n_py = python_side(files, tok, tmp / "py.bin")
        t_py = time.perf_counter() - t0
    mb = size / 1e6
    print(f"{mb:.0f} MB of text in {len(files)} files; tokenizer {tok}")
    print(f"attn (own encoder):        {t_attn:7.2f} s  {mb / t_attn:6.1f} MB/s  {n_attn} tokens")
    print(f"attn (tokenizers library): {t_lib:7.2f} s  {mb / t_lib:6.1f} MB/s")
    print(f"Python tokenizers batch:   {t_py:7.2f} s  {mb / t_py:6.1f} MB/s  {n_py} tokens (lines encoded apart)")
    print(f"attn is {t_py / t_attn:.2f}x Python tokenizers ({t_py / t_lib:.2f}x with the library inside attn)")


if __name__ == "__main__":
    main()
