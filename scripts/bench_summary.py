#!/usr/bin/env python3
"""Summarises the CPU training comparisons kept in docs/ as the markdown tables of
README.md's "Training against PyTorch on the CPU":

- `recipe`: the whole-recipe pairs of docs/recipe_runs_*.json (scripts/recipe_pairs.sh,
  or for the older files the same two commands run by hand). For each file and
  instruction set: the pairs, attn's and PyTorch's training times, the range and
  median of attn ÷ PyTorch (from the times, not the files' rounded ratios) and how many
  pairs are at or under 0.5; then the same pooled over the files of one machine kind
  (the file name's -zen3 / -zen4 / -emr suffix; -emr: an Intel Xeon of the Emerald
  Rapids generation). Pairs marked "discarded" (with the reason)
  are left out and counted apart.
- `train`: the training benches of docs/torch_train_bench_*-zen*.json and *-emr*.json
  (scripts/torch_reference.py bench --json): for each file, instruction set and shape,
  every run's attn ÷ transformers ratio and their median; then pooled by machine kind.

    python3 scripts/bench_summary.py recipe|train [FILES...]
    python3 scripts/bench_summary.py --check README.md

`--check` prints nothing and exits 0 when every line of both tables (over the default
files) is a line of the given file, else names the missing lines and exits 1: .ci/run
uses it to keep README.md's tables in step with docs/.

Standard library only.
"""
import glob
import json
import os
import re
import statistics
import sys


def pairs_of(doc):
    """The list of pairs, whichever key a file's format keeps them under."""
    for key in ("pairs", "runs"):
        if isinstance(doc.get(key), list):
            return doc[key]
    raise ValueError("no 'pairs' or 'runs' list")


def machine_of(path):
    m = re.search(r"-zen(\d)[^/]*\.json$", path)
    if m:
        return f"Zen {m.group(1)}"
    return "Xeon EMR" if re.search(r"-emr[^/]*\.json$", path) else "?"


def commit_of(doc, pairs=()):
    """The attn commits of `pairs` where each names its own (first words, in order), else
    the one the file names, else a dash."""
    own = []
    for p in pairs:
        c = p.get("attn_binary") or p.get("attn_commit") or ""
        if c and c.split()[0] not in own:
            own.append(c.split()[0])
    if not own:
        c = doc.get("attn_commit") or doc.get("commit") or ""
        own = [c.split()[0]] if c else []
    return ", ".join(f"`{c}`" for c in own) or "—"


def isa_of(pair):
    """A pair's instruction set ("avx2 (the machine has no AVX-512)" reads as avx2)."""
    return pair.get("isa", "avx2").split()[0]


def row(label, machine, isa, pairs, commit=""):
    ratios = sorted(p["attn_train_seconds"] / p["torch_train_seconds"] for p in pairs)
    a = [p["attn_train_seconds"] for p in pairs]
    t = [p["torch_train_seconds"] for p in pairs]
    under = sum(r <= 0.5 for r in ratios)
    span = lambda lo, hi, f: f"{lo:{f}}" if f"{lo:{f}}" == f"{hi:{f}}" else f"{lo:{f}}–{hi:{f}}"
    return (f"| {label} | {commit} | {machine} | {isa} | {len(pairs)} | "
            f"{span(min(a), max(a), '.1f')} | {span(min(t), max(t), '.1f')} | "
            f"{span(ratios[0], ratios[-1], '.3f')} | "
            f"{statistics.median(ratios):.3f} | {under} of {len(pairs)} |")


def docs(pattern):
    return sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "docs", pattern)))


def load(path):
    """A file's JSON; a file that cannot be read or parsed raises ValueError naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None


def recipe(files):
    """The recipe table's lines."""
    out = ["| file | attn at | machine | ISA | pairs | attn s | PyTorch s | attn ÷ PyTorch "
           "| median | ≤ 0.5 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    pooled, dropped = {}, 0
    for path in files:
        doc = load(path)
        try:
            pairs = pairs_of(doc)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        kept = [p for p in pairs if not p.get("discarded")]
        dropped += len(pairs) - len(kept)
        machine = machine_of(path)
        for isa in sorted({isa_of(p) for p in kept}):
            mine = [p for p in kept if isa_of(p) == isa]
            out.append(row(f"`{os.path.basename(path)}`", machine, isa, mine, commit_of(doc, mine)))
            pooled.setdefault((machine, isa), []).extend(mine)
    for (machine, isa), pairs in sorted(pooled.items()):
        out.append(row("**all**", machine, isa, pairs, "—"))
    if dropped:
        out += ["", f"({dropped} {'pair' if dropped == 1 else 'pairs'} marked discarded in "
                "the files left out.)"]
    return out


def results(x, isa):
    """(isa, results) for every bench output inside a file: the value of a "results" key,
    its instruction set named by an enclosing "avx2" / "avx512" key, else `isa`."""
    if isinstance(x, dict):
        if isinstance(x.get("results"), list):
            yield isa, x["results"]
        for k, v in x.items():
            yield from results(v, k if k in ("avx2", "avx512") else isa)
    elif isinstance(x, list):
        for v in x:
            yield from results(v, isa)


def train(files):
    """The training benches' table's lines."""
    shapes = ("cpu", "6x384", "llama-6x384")
    names = {"cpu": "GPT-2 4×128", "6x384": "GPT-2 6×384", "llama-6x384": "Llama 6×384"}
    # The issue's bar for each shape: 1.5× PyTorch for the recipe's, 1.2× for the others.
    bars = {"cpu": 1.5, "6x384": 1.2, "llama-6x384": 1.2}
    out = ["| file | attn at | machine | ISA | runs | " + " | ".join(names[s] for s in shapes)
           + " |",
           "|---|---|---|---|---|" + "---|" * len(shapes)]
    pooled = {}

    def line(label, commit, machine, isa, runs, by_shape):
        cells = []
        for s in shapes:
            r = by_shape.get(s, [])
            if not r:
                cells.append("—")
            elif len(r) == 1:
                cells.append(f"{r[0]:.2f}")
            elif len(r) <= 6:
                cells.append(", ".join(f"{v:.2f}" for v in r) + f" (median {statistics.median(r):.2f})")
            else:
                cells.append(f"{min(r):.2f}–{max(r):.2f} (median {statistics.median(r):.2f}, "
                             f"{sum(v < bars[s] for v in r)} under {bars[s]})")
        out.append(f"| {label} | {commit} | {machine} | {isa} | {runs} | " + " | ".join(cells)
                   + " |")

    for path in files:
        doc = load(path)
        machine = machine_of(path)
        default = "avx2" if machine == "Zen 3" else "?"
        groups = {}
        for isa, res in results(doc, default):
            g = groups.setdefault(isa, [0, {}])
            g[0] += 1
            for r in res:
                if r.get("kind") == "train" and r.get("shape") in shapes and "ratio" in r:
                    g[1].setdefault(r["shape"], []).append(r["ratio"])
        for isa, (runs, by_shape) in sorted(groups.items()):
            line(f"`{os.path.basename(path)}`", commit_of(doc), machine, isa, runs, by_shape)
            p = pooled.setdefault((machine, isa), [0, {}])
            p[0] += runs
            for s, r in by_shape.items():
                p[1].setdefault(s, []).extend(r)
    for (machine, isa), (runs, by_shape) in sorted(pooled.items()):
        line("**all**", "—", machine, isa, runs, by_shape)
    return out


def check(path, lines):
    """0 when every one of `lines` is a line of the file at `path`, else 1 (naming them)."""
    with open(path) as f:
        have = set(f.read().split("\n"))
    missing = [l for l in lines if l and l not in have]
    for l in missing:
        print(f"{path} lacks: {l}", file=sys.stderr)
    if missing:
        print("regenerate its tables with scripts/bench_summary.py recipe / train",
              file=sys.stderr)
    return 1 if missing else 0


def main(argv):
    recipes, benches = docs("recipe_runs_*.json"), sorted(
        docs("torch_train_bench_*-zen*.json") + docs("torch_train_bench_*-emr*.json"))
    try:
        if len(argv) == 2 and argv[0] == "--check":
            return check(argv[1], recipe(recipes) + train(benches))
        if argv and argv[0] == "recipe":
            lines = recipe(argv[1:] or recipes)
        elif argv and argv[0] == "train":
            lines = train(argv[1:] or benches)
        else:
            print("usage: bench_summary.py recipe|train [FILES...] | --check README.md",
                  file=sys.stderr)
            return 2
    except (OSError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
