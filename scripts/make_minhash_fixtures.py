#!/usr/bin/env python3
"""MinHash reference signatures from the `datasketch` package, for attn's tests.

    PY=$(scripts/python_env.sh)
    $PY scripts/make_minhash_fixtures.py

Writes crates/attn/tests/fixtures/minhash/cases.json: for each case (scheme, num_perm,
seed, shingle kind and size) the texts, their shingles as this script makes them (the
rule attn implements: word shingles are k consecutive whitespace-separated words joined
by one space, char shingles k consecutive characters; a text shorter than k is one
shingle, an empty one none), datasketch's permutation parameters and signatures, and
datasketch's Jaccard estimate for some pairs. The texts are generated here (English,
Chinese, accents, emoji, whitespace-only and empty lines, near copies), none copied
from a corpus.
"""

import json
import random
from importlib.metadata import version
from pathlib import Path

import numpy as np
from datasketch import MinHash

OUT = Path(__file__).resolve().parents[1] / "crates" / "attn" / "tests" / "fixtures" / "minhash"


def shingles(text, k, kind):
    if kind == "word":
        words = text.split()
        if not words:
            return []
        if len(words) < k:
            return [" ".join(words)]
        return [" ".join(words[i:i + k]) for i in range(len(words) - k + 1)]
    chars = list(text)
    if not chars:
        return []
    if len(chars) < k:
        return [text]
    return ["".join(chars[i:i + k]) for i in range(len(chars) - k + 1)]


def texts():
    rnd = random.Random(7)
    vocab = ("the a of to and in is was for on with as by at from that this it be are were "
             "river stone light window garden winter letter morning silver harbour").split()
    out = [
        "",
        "   ",
        "one",
        "two words",
        "The quick brown fox jumps over the lazy dog.",
        "The quick brown fox jumped over the lazy dog!",
        "Crème brûlée at the café in São Paulo — naïve piñata 🎉",
        "今天天气很好，我们去公园散步吧。",
        "今天天气很好，我们去公园跑步吧。",
        "tabs\tand\nnewlines  and   runs of spaces",
    ]
    for _ in range(12):
        n = rnd.randint(5, 60)
        base = [rnd.choice(vocab) for _ in range(n)]
        out.append(" ".join(base))
        edited = list(base)
        for _ in range(max(1, n // 10)):
            edited[rnd.randrange(len(edited))] = rnd.choice(vocab)
        out.append(" ".join(edited))
    return out


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    ts = texts()
    cases = []
    for scheme, num_perm, seed, kind, k in [
        ("affine32", 128, 1, "word", 5),
        ("affine32", 64, 42, "char", 5),
        ("affine32", 256, 7, "word", 3),
        ("legacy", 128, 1, "word", 5),
        ("legacy", 32, 123456789, "char", 3),
    ]:
        sigs, sh = [], []
        for t in ts:
            s = shingles(t, k, kind)
            m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
            for x in s:
                m.update(x.encode("utf-8"))
            sigs.append([int(v) for v in m.hashvalues])
            sh.append(s)
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme=scheme).permutations
        pairs = []
        for i in range(0, len(ts) - 1, 2):
            m1 = MinHash(num_perm=num_perm, seed=seed, scheme=scheme, hashvalues=np.array(sigs[i]))
            m2 = MinHash(num_perm=num_perm, seed=seed, scheme=scheme, hashvalues=np.array(sigs[i + 1]))
            pairs.append([i, i + 1, m1.jaccard(m2)])
        cases.append({
            "scheme": scheme, "num_perm": num_perm, "seed": seed, "shingle": kind, "ngram": k,
            "a": [int(v) for v in a], "b": [int(v) for v in b],
            "shingles": sh, "signatures": sigs, "jaccard": pairs,
        })
    doc = {
        "generator": "scripts/make_minhash_fixtures.py",
        "versions": {"datasketch": version("datasketch"), "numpy": np.__version__},
        "texts": ts,
        "cases": cases,
    }
    (OUT / "cases.json").write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT / 'cases.json'}: {len(ts)} texts, {len(cases)} cases")


if __name__ == "__main__":
    main()
