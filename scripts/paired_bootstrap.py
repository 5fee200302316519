#!/usr/bin/env python3
"""Paired bootstrap of a ROUGE difference between two systems on the same references.

    python3 scripts/paired_bootstrap.py --ref REF --a HYP_A --b HYP_B [--attn BIN]
        [--tokenize zh-char] [--metric rougeL] [--samples 10000]

Scores every line of both systems with `attn eval rouge --sentence --json`, then
resamples the lines with replacement (the same lines for both systems) and reports the
mean F1 difference b − a (×100), its 95% interval, and how often b is not ahead.

Several runs of each system (seeds): repeat --a and --b, in matching order. Each pair
is reported on its own, then all of them together: the difference of a line is then the
mean over the pairs of its differences, so the resampling draws test lines and every
pair scores the same ones.
"""
import argparse
import json
import random
import subprocess


def per_line(attn, hyp, ref, tokenize, metric):
    out = subprocess.run(
        [attn, "eval", "rouge", "--hyp", hyp, "--ref", ref, "--tokenize", tokenize,
         "--sentence", "--json"],
        check=True, capture_output=True, text=True).stdout
    return [json.loads(line)[metric]["fmeasure"] for line in out.splitlines()]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True)
    p.add_argument("--a", required=True, action="append",
                   help="the baseline's hypotheses (repeat for several runs)")
    p.add_argument("--b", required=True, action="append",
                   help="the other system's hypotheses (as many as --a, in that order)")
    p.add_argument("--attn", default="target/release/attn")
    p.add_argument("--tokenize", default="default")
    p.add_argument("--metric", default="rougeL")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit(f"{len(args.a)} --a files against {len(args.b)} --b files")
    pairs = []
    for fa, fb in zip(args.a, args.b):
        a = per_line(args.attn, fa, args.ref, args.tokenize, args.metric)
        b = per_line(args.attn, fb, args.ref, args.tokenize, args.metric)
        if len(a) != len(b) or not a:
            raise SystemExit(f"{fa}, {fb}: line counts differ or are zero: {len(a)} and {len(b)}")
        pairs.append((fa, fb, a, b))
    n = len(pairs[0][2])
    if any(len(a) != n for _, _, a, _ in pairs):
        raise SystemExit("the runs score different numbers of lines")
    for fa, fb, a, b in pairs:
        print(json.dumps({"a_file": fa, "b_file": fb, **interval(args, a, b)}))
    if len(pairs) > 1:
        k = len(pairs)
        a = [sum(p[2][i] for p in pairs) / k for i in range(n)]
        b = [sum(p[3][i] for p in pairs) / k for i in range(n)]
        print(json.dumps({"pooled_pairs": k, **interval(args, a, b)}))


def interval(args, a, b):
    """The mean difference b − a over the lines, its bootstrap interval and how often
    a resample does not put b ahead."""
    n = len(a)
    diff = [y - x for x, y in zip(a, b)]
    rng = random.Random(args.seed)
    means = []
    for _ in range(args.samples):
        means.append(sum(diff[rng.randrange(n)] for _ in range(n)) / n)
    means.sort()
    lo, hi = means[int(0.025 * args.samples)], means[int(0.975 * args.samples) - 1]
    not_ahead = sum(m <= 0 for m in means) / args.samples
    return {
        "metric": args.metric, "lines": n,
        "a": 100 * sum(a) / n, "b": 100 * sum(b) / n,
        "b_minus_a": 100 * sum(diff) / n, "ci95": [100 * lo, 100 * hi],
        "share_b_not_ahead": not_ahead,
    }

if __name__ == "__main__":
    main()
