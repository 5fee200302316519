"""`attn data dedup --near` against datasketch's MinHashLSH on a corpus with injected near copies.

    PY=$(scripts/python_env.sh)
    $PY scripts/dedup_reference.py --attn target/release/attn [--bases 3000] [--seed 13]

The corpus (generated here, fixed seed): paragraphs of ../shared/data/gutenberg books, one
per line (whitespace collapsed, at least 25 words), and for 40% of them one copy with
words substituted, deleted or inserted at a known rate (0, 1, 2, 5, 10, 20 or 30% of the
words), all shuffled. Both tools run at the same parameters (threshold 0.8, 128
permutations, seed 1, word 5-shingles, datasketch's bands and rows for the threshold,
its default affine32 scheme); datasketch's clusters are the connected components of
MinHashLSH's candidate pairs. Printed: how many documents have the same cluster in both,
and for attn the recall of the injected pairs whose true Jaccard similarity (of the
shingle sets) is at or above the threshold and the precision of the pairs it put in one
cluster (true Jaccard at or above the threshold).

With --verify, attn checks each candidate pair's true Jaccard before joining it, and both
tools use the bands and rows datasketch picks with weights (0.1, 0.9) (recall favoured);
datasketch's clusters stay unverified, so the agreement line then compares attn's verified
clusters with plain LSH's.
"""

import argparse
import json
import random
import re
import subprocess
import tempfile
import time
from pathlib import Path

from datasketch import MinHash, MinHashLSH

BOOKS = ["melville-moby_dick.txt", "austen-emma.txt", "chesterton-brown.txt", "whitman-leaves.txt"]


def paragraphs(data: Path):
    for name in BOOKS:
        text = (data / name).read_text(encoding="utf-8", errors="replace")
        for block in re.split(r"\n\s*\n", text):
            words = block.split()
            if len(words) >= 25:
                yield " ".join(words)


def edit(words, rate, rnd, vocab):
    out = []
    for w in words:
        if rnd.random() < rate:
            op = rnd.randrange(3)
            if op == 0:
                out.append(rnd.choice(vocab))
            elif op == 1:
                continue
            else:
                out += [w, rnd.choice(vocab)]
        else:
            out.append(w)
    return out


def shingles(text, k=5):
    w = text.split()
    if not w:
        return set()
    if len(w) < k:
        return {" ".join(w)}
    return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}


def jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 1.0


def components(n, pairs):
    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [root(i) for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/gutenberg"))
    ap.add_argument("--bases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--verify", action="store_true")
    a = ap.parse_args()

    rnd = random.Random(a.seed)
    bases = list(dict.fromkeys(paragraphs(Path(a.data))))[: a.bases]
    vocab = sorted({w for p in bases for w in p.split()})
    docs, origin = [], []  # origin: (base index, edit rate or None)
    for i, p in enumerate(bases):
        docs.append(p)
        origin.append((i, None))
        if rnd.random() < 0.4:
            rate = rnd.choice([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3])
            docs.append(" ".join(edit(p.split(), rate, rnd, vocab)))
            origin.append((i, rate))
    order = list(range(len(docs)))
    rnd.shuffle(order)
    docs = [docs[k] for k in order]
    origin = [origin[k] for k in order]
    n = len(docs)
    sh = [shingles(d) for d in docs]

    # datasketch
    t0 = time.perf_counter()
    weights = (0.1, 0.9) if a.verify else (0.5, 0.5)
    lsh = MinHashLSH(threshold=a.threshold, num_perm=128, weights=weights)
    bands, rows = lsh.b, lsh.r
    mins = []
    for i, s in enumerate(sh):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([x.encode("utf-8") for x in s])
        mins.append(m)
        lsh.insert(i, m)
    pairs = [(i, j) for i in range(n) for j in lsh.query(mins[i]) if j != i]
    ds_roots = components(n, pairs)
    t_ds = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "corpus.txt").write_text("".join(d + "\n" for d in docs), encoding="utf-8")
        t0 = time.perf_counter()
        p = subprocess.run([a.attn, "data", "dedup", "--input", str(tmp / "corpus.txt"), "--out", str(tmp / "out"),
                            "--near", "--threshold", str(a.threshold), "--num-perm", "128", "--seed", "1",
                            "--ngram", "5", "--bands", str(bands), "--rows", str(rows), "--explain", "--json"]
                           + (["--verify"] if a.verify else []),
                           capture_output=True, text=True)
        t_attn = time.perf_counter() - t0
        if p.returncode != 0:
            raise SystemExit(p.stderr)
        report = json.loads(p.stdout)
        attn_roots = list(range(n))
        for line in (tmp / "out" / "clusters.jsonl").read_text().splitlines():
            members = [u["line"] - 1 for u in json.loads(line)["units"]]
            for m in members:
                attn_roots[m] = min(members)

    def groups(roots):
        g = {}
        for i, r in enumerate(roots):
            g.setdefault(r, set()).add(i)
        return [frozenset(g[r]) for r in roots]

    ga, gd = groups(attn_roots), groups(ds_roots)
    same = sum(1 for i in range(n) if ga[i] == gd[i])
    # Recall over the injected pairs at or above the threshold.
    where = {}
    for i, (b, rate) in enumerate(origin):
        where.setdefault(b, []).append(i)
    truth = [(v[0], v[1]) for v in where.values() if len(v) == 2]
    above = [(i, j) for i, j in truth if jaccard(sh[i], sh[j]) >= a.threshold]
    found = sum(1 for i, j in above if attn_roots[i] == attn_roots[j])
    # Precision over every pair attn put in one cluster.
    clustered = {}
    for i, r in enumerate(attn_roots):
        clustered.setdefault(r, []).append(i)
    cpairs = [(x, y) for c in clustered.values() for k, x in enumerate(c) for y in c[k + 1:]]
    good = sum(1 for x, y in cpairs if jaccard(sh[x], sh[y]) >= a.threshold)
    print(f"{n} documents, {len(truth)} injected copies, {len(above)} pairs at or above Jaccard {a.threshold}; "
          f"bands {bands} x rows {rows}")
    print(f"same clusters as datasketch MinHashLSH: {same}/{n} documents ({100 * same / n:.2f}%)")
    print(f"attn recall {found}/{len(above)} = {found / max(1, len(above)):.4f}; "
          f"precision {good}/{len(cpairs)} = {good / max(1, len(cpairs)):.4f}")
    by_rate = {}
    for i, j in truth:
        rate = origin[i][1] if origin[i][1] is not None else origin[j][1]
        hit, tot, js = by_rate.get(rate, (0, 0, []))
        by_rate[rate] = (hit + (attn_roots[i] == attn_roots[j]), tot + 1, js + [jaccard(sh[i], sh[j])])
    for rate in sorted(by_rate):
        hit, tot, js = by_rate[rate]
        js.sort()
        print(f"  copies edited at {rate:.0%}: {hit}/{tot} found, true Jaccard median {js[len(js) // 2]:.3f} "
              f"(range {js[0]:.3f}-{js[-1]:.3f})")
    print(f"attn removed {report['near_duplicates'] + report['exact_duplicates']} in {t_attn:.2f} s "
          f"(whole command); datasketch (in process, MinHash + LSH + queries) {t_ds:.2f} s")


if __name__ == "__main__":
    main()
