"""`attn data dedup --near` against datatrove's MinHash pipeline on a corpus of a gigabyte or more.

    PY=$(scripts/python_env.sh)
    $PY -m pip install datatrove orjson spacy "xxhash==3.5.0"   # only here (xxhash 4 refuses str)
    $PY scripts/dedup_speed.py --attn target/release/attn --work /tmp/dedup-speed [--gb 1.0]

The corpus (generated here into --work, fixed seed, reused when present): documents of one
line each, built from the paragraphs of ../shared/data/gutenberg and the lines of
multi30k: 10% exact copies of a base paragraph, 10% copies with 2% of the words edited,
10% with 10%, and 70% with half the words replaced (new documents sharing little with
any other); split over 8 files, written as plain text (attn) and as JSON lines
(datatrove's JsonlReader), the same documents in the same order.

Both tools run the whole job: read the files, compute MinHash signatures of word
5-grams, bucket them by LSH bands (14 bands of 8 rows: datatrove's defaults), cluster,
and write the kept documents. datatrove runs its four documented stages (signatures,
buckets, clustering, filtering) with 2 workers; attn runs one command on both cores.
Printed: wall time of each, their ratio, the documents each removed, and peak RSS (GNU time's
maximum resident set: for datatrove, its largest single process).
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dedup_reference import edit  # noqa: E402  (the same edit model as the recall test)

BANDS, ROWS, NGRAM = 14, 8, 5
FILES = 8


def bases(data: Path):
    out = []
    for f in sorted((data / "gutenberg").glob("*.txt")):
        for block in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            words = block.split()
            if len(words) >= 20:
                out.append(words)
    for f in ["train.en", "train.de", "train.fr"]:
        lines = (data / "multi30k" / f).read_text(encoding="utf-8").splitlines()
        # Five captions to a document, so that documents are paragraph-sized.
        for i in range(0, len(lines) - 5, 5):
            out.append(" ".join(lines[i:i + 5]).split())
    return out


def make_corpus(work: Path, data: Path, gb: float, seed: int):
    txt, jsonl = work / "txt", work / "jsonl"
    stamp = work / "corpus.json"
    want = {"gb": gb, "seed": seed, "files": FILES}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return sorted(txt.glob("*.txt")), jsonl
    shutil.rmtree(work, ignore_errors=True)
    txt.mkdir(parents=True)
    jsonl.mkdir(parents=True)
    rnd = random.Random(seed)
    base = bases(data)
    vocab = sorted({w for b in base for w in b})
    target = int(gb * 1e9)
    per_file = target // FILES + 1
    n = 0
    for k in range(FILES):
        written = 0
        with open(txt / f"part-{k:02d}.txt", "w", encoding="utf-8") as ft, \
                open(jsonl / f"part-{k:02d}.jsonl", "w", encoding="utf-8") as fj:
            while written < per_file:
                words = rnd.choice(base)
                u = rnd.random()
                rate = 0.0 if u < 0.1 else 0.02 if u < 0.2 else 0.1 if u < 0.3 else 0.5
                doc = " ".join(edit(words, rate, rnd, vocab) or words)
                ft.write(doc + "\n")
                fj.write(json.dumps({"text": doc, "id": str(n)}) + "\n")
                written += len(doc.encode("utf-8")) + 1
                n += 1
        print(f"  wrote part {k + 1}/{FILES}", file=sys.stderr)
    stamp.write_text(json.dumps(want))
    return sorted(txt.glob("*.txt")), jsonl


def run_attn(attn, files, out, verify=False):
    """Wall seconds, documents, documents removed and peak RSS (MB) of one attn dedup."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-f", "maxrss_kb %M", attn, "data", "dedup", "--input", *map(str, files), "--out", str(out), "--near",
           "--num-perm", str(BANDS * ROWS), "--bands", str(BANDS), "--rows", str(ROWS),
           "--ngram", str(NGRAM), "--seed", "1", "--json"] + (["--verify"] if verify else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    r = json.loads(p.stdout)
    rss = int(re.findall(r"maxrss_kb (\d+)", p.stderr)[-1]) / 1024
    return dt, r["units"], r["near_duplicates"] + r["exact_duplicates"], rss


DATATROVE = r"""
import sys, time
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.pipeline.dedup import (MinhashDedupSignature, MinhashDedupBuckets,
                                      MinhashDedupCluster, MinhashDedupFilter)
from datatrove.pipeline.dedup.minhash import MinhashConfig

def main():
    src, work, bands, rows, ngram, files = sys.argv[1:7]
    bands, rows, ngram, files = int(bands), int(rows), int(ngram), int(files)
    cfg = MinhashConfig(n_grams=ngram, num_buckets=bands, hashes_per_bucket=rows, seed=1)
    w = work
    LocalPipelineExecutor(pipeline=[JsonlReader(src), MinhashDedupSignature(output_folder=f"{w}/sigs", config=cfg)],
                          tasks=files, workers=2, logging_dir=f"{w}/logs/1").run()
    LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=f"{w}/sigs", output_folder=f"{w}/buckets", config=cfg)],
                          tasks=bands, workers=2, logging_dir=f"{w}/logs/2").run()
    LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=f"{w}/buckets", output_folder=f"{w}/remove", config=cfg)],
                          tasks=1, workers=1, logging_dir=f"{w}/logs/3").run()
    LocalPipelineExecutor(pipeline=[JsonlReader(src), MinhashDedupFilter(input_folder=f"{w}/remove"),
                                    JsonlWriter(f"{w}/out")],
                          tasks=files, workers=2, logging_dir=f"{w}/logs/4").run()


if __name__ == "__main__":
    main()
"""


def run_datatrove(src, work):
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    script = work / "pipeline.py"
    script.write_text(DATATROVE)
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", sys.executable, str(script), str(src), str(work), str(BANDS), str(ROWS), str(NGRAM),
                        str(FILES)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(p.stderr[-4000:])
    rss = int(re.findall(r"maxrss_kb (\d+)", p.stderr)[-1]) / 1024
    kept = 0
    import gzip
    for f in (work / "out").glob("*"):
        opener = gzip.open if f.suffix == ".gz" else open
        with opener(f, "rt", encoding="utf-8") as fh:
            kept += sum(1 for _ in fh)
    return dt, kept, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--work", default="/tmp/dedup-speed")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data"))
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-datatrove", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    files, jsonl = make_corpus(work / "corpus", Path(a.data), a.gb, a.seed)
    size = sum(f.stat().st_size for f in files)
    print(f"corpus: {size / 1e9:.2f} GB of text in {len(files)} files; {BANDS} bands x {ROWS} rows, word {NGRAM}-grams")

    t_attn, units, removed, rss = run_attn(a.attn, files, work / "attn-out")
    print(f"attn:          {t_attn:8.1f} s, {units} documents, {removed} removed, peak RSS {rss:.0f} MB")
    t_ver, _, removed_v, rss_v = run_attn(a.attn, files, work / "attn-out", verify=True)
    print(f"attn --verify: {t_ver:8.1f} s, {removed_v} removed, peak RSS {rss_v:.0f} MB")
    if a.skip_datatrove:
        return
    t_dt, kept, rss_dt = run_datatrove(jsonl, work / "datatrove")
    print(f"datatrove:     {t_dt:8.1f} s, {units - kept} removed, peak RSS {rss_dt:.0f} MB (largest process)")
    print(f"attn is {t_dt / t_attn:.1f}x datatrove's speed ({t_dt / t_ver:.1f}x with --verify)")


if __name__ == "__main__":
    main()
