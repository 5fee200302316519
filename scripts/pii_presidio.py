"""`attn data pii` against Microsoft Presidio's pattern recognizers on the labelled set.

    PY=$(scripts/python_env.sh)
    $PY -m pip install presidio-analyzer      # only here
    $PY scripts/pii_presidio.py --attn target/release/attn

The set is crates/attn/tests/fixtures/pii/cases.jsonl (scripts/make_pii_fixtures.py:
2,500 lines, English and Chinese, labelled spans, look-alikes). For the kinds Presidio
covers — email, phone, credit card, IBAN, IP address, URL — its recognizers run one by
one on each line (EmailRecognizer, PhoneRecognizer with its default regions,
CreditCardRecognizer, IbanRecognizer, IpRecognizer, UrlRecognizer; no NLP engine, so no
context words; every result with a score above 0). Spans are compared exactly, in
characters. Printed per kind: the labelled spans, precision and recall of attn and of
Presidio against the labels, Presidio's recall counting any overlapping span as found
(boundaries aside), and the agreement of the two (spans both found / spans either found).
Chinese resident IDs and mobile numbers have no Presidio recognizer.
"""

import argparse
import json
import logging
import subprocess
import tempfile
from pathlib import Path

logging.disable(logging.CRITICAL)

from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer,  # noqa: E402
                                                      IbanRecognizer, IpRecognizer, PhoneRecognizer,
                                                      UrlRecognizer)

KINDS = {"email": (EmailRecognizer, "EMAIL_ADDRESS"), "phone": (PhoneRecognizer, "PHONE_NUMBER"),
         "credit-card": (CreditCardRecognizer, "CREDIT_CARD"), "iban": (IbanRecognizer, "IBAN_CODE"),
         "ip": (IpRecognizer, "IP_ADDRESS"), "url": (UrlRecognizer, "URL")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--attn", required=True)
    ap.add_argument("--cases", default=str(Path(__file__).resolve().parents[1]
                                          / "crates/attn/tests/fixtures/pii/cases.jsonl"))
    a = ap.parse_args()
    cases = [json.loads(l) for l in Path(a.cases).read_text(encoding="utf-8").splitlines()]
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "lines.txt"
        f.write_text("".join(c["text"] + "\n" for c in cases), encoding="utf-8")
        p = subprocess.run([a.attn, "data", "pii", "--input", str(f), "--json"], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(p.stderr)
        attn_spans = [json.loads(l)["spans"] for l in p.stdout.splitlines()]
    assert len(attn_spans) == len(cases)
    recognizers = {k: cls() for k, (cls, _) in KINDS.items()}
    print(f"{len(cases)} lines; spans compared exactly (character offsets)")
    print(f"{'kind':12} {'labelled':>8}  {'attn P':>7} {'attn R':>7}  {'Presidio P':>10} {'Presidio R':>10} {'(overlap)':>9}  agreement")
    for kind, (_, entity) in KINDS.items():
        gold, mine, theirs = set(), set(), set()
        for i, c in enumerate(cases):
            gold |= {(i, s, e) for s, e, t in c["spans"] if t == kind}
            mine |= {(i, s, e) for s, e, t in attn_spans[i] if t == kind}
            for r in recognizers[kind].analyze(c["text"], [entity], None):
                if r.score > 0:
                    theirs.add((i, r.start, r.end))

        def pr(found):
            tp = len(found & gold)
            return tp / max(1, len(found)), tp / max(1, len(gold))

        (mp, mr), (tp_, tr) = pr(mine), pr(theirs)
        agree = len(mine & theirs) / max(1, len(mine | theirs))
        touched = sum(1 for (i, s, e) in gold if any(j == i and a < e and s < b for (j, a, b) in theirs))
        ov = touched / max(1, len(gold))
        print(f"{kind:12} {len(gold):8d}  {mp:7.3f} {mr:7.3f}  {tp_:10.3f} {tr:10.3f} {ov:9.3f}  {agree:9.3f}")


if __name__ == "__main__":
    main()
