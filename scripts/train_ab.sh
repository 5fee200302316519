#!/usr/bin/env bash
# Compares the training step of two or more attn builds on a shared, noisy machine: runs
# `attn bench train` with each binary in turn, ROUNDS times (so that the machine's drift
# over minutes falls on every build alike), and prints each run's median step and fastest
# tenth, then each build's means over the rounds. A one-off comparison of two runs means
# nothing on a shared VM (the same binary's steps move by 10-25% between minutes); copy
# each build to its own path first (cargo overwrites target/release/attn).
#
#   scripts/train_ab.sh ROUNDS BINARY BINARY... [-- BENCH ARGS...]
#
# Environment: ISA (default avx2; `native` leaves ATTN_ISA unset), STEPS (default 200).
# Example, GPT-2 6x384 as the torch bench runs it, AVX-512:
#   ISA=native scripts/train_ab.sh 4 /tmp/a/attn /tmp/b/attn -- --preset shakespeare-char \
#     --batch-size 8 --dropout 0
set -euo pipefail
usage() {
  echo "usage: $0 ROUNDS BINARY BINARY... [-- BENCH ARGS...]" >&2
  exit 2
}
[ $# -ge 3 ] || usage
rounds=$1
shift
case $rounds in '' | *[!0-9]*) echo "ROUNDS must be a number, not '$rounds'" >&2; exit 2 ;; esac
bins=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  [ -x "$1" ] || { echo "no executable at $1" >&2; exit 2; }
  bins+=("$1")
  shift
done
[ $# -gt 0 ] && shift
[ ${#bins[@]} -ge 2 ] || usage
isa=${ISA:-avx2}
steps=${STEPS:-200}

for i in $(seq "$rounds"); do
  for b in "${bins[@]}"; do
    if [ "$isa" = native ]; then
      line=$("$b" bench train --steps "$steps" "$@" 2>&1 | tail -1) || true
    else
      line=$(ATTN_ISA=$isa "$b" bench train --steps "$steps" "$@" 2>&1 | tail -1) || true
    fi
    median=$(grep -o 'median step [0-9.]*' <<<"$line" | awk '{print $3}') || true
    tenth=$(grep -o 'under [0-9.]*' <<<"$line" | awk '{print $2}') || true
    if [ -z "$median" ] || [ -z "$tenth" ]; then
      echo "$b: no step times in its output: $line" >&2
      exit 1
    fi
    echo "round $i $b median $median tenth $tenth"
  done
done | awk '
  { print; m[$3] += $5; t[$3] += $7; n[$3]++; if (!($3 in seen)) { seen[$3] = 1; order[++k] = $3 } }
  END {
    for (i = 1; i <= k; i++) {
      b = order[i]
      printf "%s: mean of medians %.2f ms, mean fastest tenth %.2f ms (%d runs)\n", b, m[b] / n[b], t[b] / n[b], n[b]
    }
  }'
