#!/usr/bin/env bash
# Times the whole shakespeare-char-cpu recipe in attn and in PyTorch, one after the
# other, PAIRS times, alternating which side goes first (on a shared machine the speed
# drifts over minutes; alternating keeps the drift from favouring one side). Appends one
# JSON line per pair to OUT: both training times (evaluation excluded on both sides),
# both best validation losses, and attn ÷ PyTorch. Its attn_commit is the checkout's
# HEAD: where ATTN_BINARY is another build, say which in the file that keeps the pairs.
#
#   scripts/recipe_pairs.sh PAIRS OUT.jsonl [ATTN_BINARY]
#
# ATTN_BINARY defaults to target/release/attn (build it first); the Python side runs in
# the environment scripts/python_env.sh sets up. Each pair takes 3-5 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 PAIRS OUT.jsonl [ATTN_BINARY]" >&2
  exit 2
fi
pairs=$1
out=$2
attn=${3:-target/release/attn}
data=../shared/data/tinyshakespeare/input.txt
case $pairs in '' | *[!0-9]*) echo "PAIRS must be a number, not '$pairs'" >&2; exit 2 ;; esac
[ -x "$attn" ] || { echo "no attn binary at $attn (cargo build --release)" >&2; exit 2; }
[ -f "$data" ] || { echo "the recipe's text is not at $data" >&2; exit 2; }
py=$(scripts/python_env.sh)
commit=$(git rev-parse --short HEAD)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run_attn() {
  rm -rf "$work/model"
  "$attn" train --preset shakespeare-char-cpu --data "$data" --out "$work/model" --json \
    2>/dev/null | tail -1 > "$work/attn.json"
}
run_torch() {
  OMP_NUM_THREADS=2 "$py" scripts/torch_reference.py recipe --data "$data" \
    2>/dev/null | tail -1 > "$work/torch.json"
}

for i in $(seq "$pairs"); do
  if [ $((i % 2)) -eq 1 ]; then
    first=attn; run_attn; run_torch
  else
    first=torch; run_torch; run_attn
  fi
  "$py" - "$commit" "$first" "$work" >> "$out" <<'EOF'
import json, sys
commit, first, work = sys.argv[1:4]
a = json.load(open(f"{work}/attn.json"))
t = json.load(open(f"{work}/torch.json"))
print(json.dumps({
    "attn_commit": commit, "first": first,
    "attn_train_seconds": round(a["train_seconds"], 2),
    "attn_best_val_loss": round(a["best_val_loss"], 4),
    "torch_train_seconds": t["train_seconds"],
    "torch_best_val_loss": t["best_val_loss"],
    "ratio": round(a["train_seconds"] / t["train_seconds"], 3),
}))
EOF
  tail -1 "$out"
done
