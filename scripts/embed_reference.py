"""attn embed against sentence-transformers on the same sentences, in one run.

    PY=$(scripts/python_env.sh)
    $PY scripts/embed_reference.py --attn target/release/attn \
        --model ../shared/models/all-MiniLM-L6-v2 --sentences 2000 --threads 2

Both sides embed the first N lines of sentence-polarity (positive then negative
reviews, alternating) with mean pooling and unit length, batch 32, on `--threads`
threads. attn is timed as the whole `attn embed` command (loading, tokenizing, JSON
output); sentence-transformers as loading the model plus `encode` (Python's own start
and imports are not counted, which favours it). Alternating repeats; the best time of
each side and the ratio are printed, with the worst cosine between the two sides'
embeddings. `ATTN_ISA=avx2` restricts attn; torch follows ATEN_CPU_CAPABILITY=avx2.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sentences(data: Path, n: int) -> list[str]:
    pos = (data / "rt-polarity.pos").read_text(encoding="utf-8").splitlines()
    neg = (data / "rt-polarity.neg").read_text(encoding="utf-8").splitlines()
    out = []
    for p, q in zip(pos, neg):
        out += [p.strip(), q.strip()]
    out = [s for s in out if s]
    if len(out) < n:
        sys.exit(f"only {len(out)} sentences in {data}")
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/sentence-polarity"))
    ap.add_argument("--sentences", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    os.environ["RAYON_NUM_THREADS"] = str(a.threads)
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    texts = sentences(Path(a.data), a.sentences)
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.txt"
        inp.write_text("\n".join(texts) + "\n", encoding="utf-8")
        cmd = [a.attn, "embed", "--model", a.model, "--input", str(inp),
               "--normalize", "--batch-size", str(a.batch_size)]
        attn_times, st_times = [], []
        ours = theirs = None
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            attn_times.append(time.perf_counter() - t0)
            ours = np.array(json.loads(out)["embeddings"], dtype=np.float64)
            t0 = time.perf_counter()
            model = SentenceTransformer(a.model, device="cpu")
            emb = model.encode(texts, batch_size=a.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True)
            st_times.append(time.perf_counter() - t0)
            theirs = emb.astype(np.float64)
            del model
    cos = (ours * theirs).sum(axis=1)
    best_attn, best_st = min(attn_times), min(st_times)
    res = {
        "sentences": a.sentences,
        "threads": a.threads,
        "attn_isa": os.environ.get("ATTN_ISA", "native"),
        "attn_s": attn_times,
        "sentence_transformers_s": st_times,
        "attn_sentences_per_s": a.sentences / best_attn,
        "sentence_transformers_sentences_per_s": a.sentences / best_st,
        "ratio": best_st / best_attn,
        "worst_cosine": float(cos.min()),
        "max_abs_difference": float(np.abs(ours - theirs).max()),
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"attn embed: {res['attn_sentences_per_s']:.0f} sentences/s (best of {a.repeats}, whole command)")
        print(f"sentence-transformers: {res['sentence_transformers_sentences_per_s']:.0f} sentences/s (load + encode)")
        print(f"ratio attn / sentence-transformers: {res['ratio']:.2f}x")
        print(f"worst cosine {res['worst_cosine']:.7f}, max abs difference {res['max_abs_difference']:.2e}")


if __name__ == "__main__":
    main()
