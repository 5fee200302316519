#!/usr/bin/env python3
"""The Tang-poem headline task of attn's summarization example: body -> title.

Reads ../shared/data/chinese-poetry/tang_poems.txt (title<TAB>author<TAB>body; or
$ATTN_DATA_DIR/chinese-poetry/...), drops poems with an empty title or body, shuffles
them with a fixed seed and writes into OUTDIR (outside the repository: the texts are not
copied into it):

    test.src / test.tgt      2,000 held-out poems (bodies / titles), never trained on
    valid.src / valid.tgt    1,000 poems that choose the checkpoint
    train.tsv                the rest, body<TAB>title
    train_bodies.txt         the training bodies alone, one per line (pre-training)

    python3 scripts/tang_titles.py OUTDIR
"""
import os
import random
import sys
from pathlib import Path

out = Path(sys.argv[1])
data = Path(os.environ.get("ATTN_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
poems = []
with open(data / "chinese-poetry" / "tang_poems.txt", encoding="utf-8") as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3:
            continue
        title, body = parts[0].strip(), parts[2].strip()
        if title and body and "\t" not in body:
            poems.append((body, title))
random.Random(20261204).shuffle(poems)
test, valid, train = poems[:2000], poems[2000:3000], poems[3000:]
out.mkdir(parents=True, exist_ok=True)
for name, rows in (("test", test), ("valid", valid)):
    (out / f"{name}.src").write_text("".join(b + "\n" for b, _ in rows), encoding="utf-8")
    (out / f"{name}.tgt").write_text("".join(t + "\n" for _, t in rows), encoding="utf-8")
(out / "train.tsv").write_text("".join(f"{b}\t{t}\n" for b, t in train), encoding="utf-8")
(out / "train_bodies.txt").write_text("".join(b + "\n" for b, _ in train), encoding="utf-8")
print(f"{len(poems)} poems: {len(train)} train, {len(valid)} valid, {len(test)} test -> {out}")
