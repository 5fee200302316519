#!/usr/bin/env python3
"""Generate classification-metric reference fixtures for `attn` using scikit-learn.

Run from the repository root:

    $(scripts/python_env.sh) scripts/make_classification_fixtures.py

Writes ``crates/attn/tests/fixtures/classification/cases.json``: a JSON list of
cases, each ``{"name", "gold", "pred", "expected"}`` where ``expected`` is

    {"accuracy": float,
     "macro":    {"precision", "recall", "f1"},
     "micro":    {"precision", "recall", "f1"},
     "weighted": {"precision", "recall", "f1"},
     "per_class": {label: {"precision", "recall", "f1", "support": int}},
     "confusion_matrix": {"labels": [sorted labels], "matrix": [[int]]}}

Conventions (all computed by scikit-learn with ``zero_division=0``):

* ``labels`` is the sorted union of gold and pred labels (the order of
  ``sklearn.utils.multiclass.unique_labels``; for strings this is plain
  code-point order, same as Python's ``sorted``).  It is passed explicitly as
  ``labels=`` everywhere, so a label occurring only in ``pred`` is a real
  class with support 0 (recall 0 and F1 0 by zero_division; precision 0
  because all of its predictions are wrong).  It *does* count towards the
  macro average (pulling it down) and contributes weight 0 to the weighted
  average.
* A class that is never predicted has precision 0/0 -> 0 (zero_division=0).
* ``confusion_matrix`` rows are gold (true) labels, columns are predictions.
* Micro-averaged precision, recall and F1 all equal accuracy when every label
  is included in ``labels`` (single-label multiclass: total TP == number of
  correct items, total FP == total FN == number of wrong items).  The script
  asserts this.
* Per-class, macro and weighted numbers are cross-checked against
  ``classification_report(..., output_dict=True, zero_division=0)``.

All randomness uses fixed seeds, so the output is deterministic.
"""

import json
import math
import os
import random
import warnings

import sklearn
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

OUT_PATH = os.path.join(
    "crates", "attn", "tests", "fixtures", "classification", "cases.json"
)


def prf(p, r, f):
    return {"precision": float(p), "recall": float(r), "f1": float(f)}


def compute_expected(gold, pred):
    labels = sorted(set(gold) | set(pred))
    exp = {"accuracy": float(accuracy_score(gold, pred))}
    for avg in ("macro", "micro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            gold, pred, labels=labels, average=avg, zero_division=0
        )
        exp[avg] = prf(p, r, f)
    p, r, f, s = precision_recall_fscore_support(
        gold, pred, labels=labels, average=None, zero_division=0
    )
    exp["per_class"] = {
        lab: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, lab in enumerate(labels)
    }
    with warnings.catch_warnings():
        # sklearn >= 1.6 warns when only one label occurs, even though we do
        # pass `labels=`; the resulting 1x1 matrix is what we want.
        warnings.filterwarnings("ignore", message="A single label was found")
        cm = confusion_matrix(gold, pred, labels=labels)
    exp["confusion_matrix"] = {
        "labels": labels,
        "matrix": [[int(x) for x in row] for row in cm],
    }

    # --- sanity checks -------------------------------------------------
    # micro P/R/F1 == accuracy when all labels are included.
    for k in ("precision", "recall", "f1"):
        assert math.isclose(exp["micro"][k], exp["accuracy"], rel_tol=1e-12, abs_tol=1e-15), (
            k,
            exp["micro"][k],
            exp["accuracy"],
        )
    # cross-check against classification_report.
    rep = classification_report(
        gold, pred, labels=labels, output_dict=True, zero_division=0
    )
    for lab in labels:
        mine, theirs = exp["per_class"][lab], rep[lab]
        assert mine["precision"] == theirs["precision"], lab
        assert mine["recall"] == theirs["recall"], lab
        assert mine["f1"] == theirs["f1-score"], lab
        assert mine["support"] == theirs["support"], lab
    for avg, key in (("macro", "macro avg"), ("weighted", "weighted avg")):
        assert exp[avg]["precision"] == rep[key]["precision"], avg
        assert exp[avg]["recall"] == rep[key]["recall"], avg
        assert exp[avg]["f1"] == rep[key]["f1-score"], avg
        assert rep[key]["support"] == len(gold), avg
    if "accuracy" in rep:
        assert exp["accuracy"] == rep["accuracy"]
    else:  # report shows "micro avg" instead of "accuracy"
        assert exp["micro"]["f1"] == rep["micro avg"]["f1-score"]
    # confusion matrix consistency.
    assert sum(map(sum, exp["confusion_matrix"]["matrix"])) == len(gold)
    for i, lab in enumerate(labels):
        assert sum(exp["confusion_matrix"]["matrix"][i]) == exp["per_class"][lab]["support"]
    return exp


def noisy(gold, labels, p_correct, rng, weights=None):
    """Copy gold, replacing each item (with prob 1-p_correct) by a different label."""
    out = []
    for g in gold:
        if rng.random() < p_correct:
            out.append(g)
        else:
            others = [l for l in labels if l != g]
            if weights is None:
                out.append(rng.choice(others))
            else:
                w = [weights[labels.index(l)] for l in others]
                out.append(rng.choices(others, weights=w)[0])
    return out


def build_cases():
    cases = []

    # 1. binary, balanced, a few errors.
    gold = ["pos", "neg"] * 10
    pred = list(gold)
    for i in (1, 4, 7, 12, 17):  # 3 neg->pos, 2 pos->neg
        pred[i] = "neg" if gold[i] == "pos" else "pos"
    cases.append(("binary_balanced", gold, pred))

    # 2. multiclass, 4 labels, ~60% correct.
    rng = random.Random(20240602)
    labs = ["cat", "dog", "bird", "fish"]
    gold = [rng.choice(labs) for _ in range(30)]
    pred = noisy(gold, labs, 0.6, rng)
    cases.append(("multiclass", gold, pred))

    # 3. gold class "c" never predicted -> precision(c) = 0 via zero_division.
    gold = ["a", "a", "a", "b", "b", "b", "c", "c", "c", "a", "b", "c"]
    pred = ["a", "b", "a", "b", "b", "a", "a", "b", "a", "a", "b", "b"]
    assert "c" not in pred
    cases.append(("class_never_predicted", gold, pred))

    # 4. single class everywhere.
    cases.append(("single_class", ["only"] * 6, ["only"] * 6))

    # 5. pred has label "zzz" never in gold (support 0).
    gold = ["x", "y", "x", "y", "x", "y", "x", "y"]
    pred = ["x", "y", "zzz", "y", "x", "zzz", "x", "x"]
    cases.append(("unseen_label_in_pred", gold, pred))

    # 6. all wrong, 3 classes.
    gold = ["r", "g", "b", "r", "g", "b", "r", "g", "b"]
    shift = {"r": "g", "g": "b", "b": "r"}
    pred = [shift[g] if i % 2 == 0 else {"r": "b", "g": "r", "b": "g"}[g]
            for i, g in enumerate(gold)]
    assert all(g != p for g, p in zip(gold, pred))
    cases.append(("all_wrong", gold, pred))

    # 7. unicode (Chinese) labels, 15 items.
    rng = random.Random(7)
    labs = ["正面", "负面", "中性"]
    gold = [rng.choice(labs) for _ in range(15)]
    pred = noisy(gold, labs, 0.65, rng)
    cases.append(("unicode_labels", gold, pred))

    # 8. perfect, 2 labels.
    gold = ["yes", "no", "no", "yes", "yes", "no", "yes", "no", "no", "yes"]
    cases.append(("perfect", gold, list(gold)))

    # 9. large random, skewed frequencies, ~70% correct.
    rng = random.Random(12345)
    labs = [f"c{i}" for i in range(7)]
    weights = [30, 20, 15, 12, 10, 8, 5]
    gold = rng.choices(labs, weights=weights, k=500)
    pred = noisy(gold, labs, 0.7, rng, weights=weights)
    cases.append(("large_random", gold, pred))

    return [
        {"name": n, "gold": g, "pred": p, "expected": compute_expected(g, p)}
        for n, g, p in cases
    ]


def main():
    cases = build_cases()
    names = [c["name"] for c in cases]
    assert len(set(names)) == len(names)

    # case-specific expectations
    by = {c["name"]: c["expected"] for c in cases}
    assert by["class_never_predicted"]["per_class"]["c"]["precision"] == 0.0
    assert by["unseen_label_in_pred"]["per_class"]["zzz"]["support"] == 0
    assert by["unseen_label_in_pred"]["per_class"]["zzz"]["recall"] == 0.0
    assert by["all_wrong"]["accuracy"] == 0.0
    assert by["perfect"]["macro"]["f1"] == 1.0
    assert by["single_class"]["accuracy"] == 1.0

    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8") as fh:
        json.dump(cases, fh, ensure_ascii=False, separators=(",", ":"))
        fh.write("\n")
    print(f"wrote {len(cases)} cases to {OUT_PATH} (scikit-learn {sklearn.__version__})")
    for c in cases:
        e = c["expected"]
        print(
            f"  {c['name']:<24} n={len(c['gold']):>3} acc={e['accuracy']:.4f} "
            f"macroF1={e['macro']['f1']:.4f} wF1={e['weighted']['f1']:.4f} "
            f"labels={e['confusion_matrix']['labels']}"
        )


if __name__ == "__main__":
    main()
