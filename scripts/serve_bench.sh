#!/usr/bin/env bash
# Load figures for attn-serve: 1, 4 and 16 concurrent streaming clients on the
# shakespeare-char-cpu model and on a GPT-2-small-shaped model (12 layers, 768 wide,
# vocab 50257, random weights). Prints one JSON line per run (scripts/serve_load.py) and
# writes them to $OUT/serve_bench.jsonl.
#
#   scripts/serve_bench.sh [SHAKESPEARE_MODEL_DIR]
#
# Without a model folder, the shakespeare-char-cpu shape is written with random weights.
# Env: COMPARE_INTERLEAVED (1: also 16 clients with --no-batch), SECONDS_PER_RUN (20), SHAKESPEARE_MAX_TOKENS (128), GPT2_MAX_TOKENS (32),
# OUT (/tmp/attn-serve-bench), ATTN_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/attn-serve-bench}
DATA=${ATTN_DATA_DIR:-$ROOT/../shared/data}
SECS=${SECONDS_PER_RUN:-20}
mkdir -p "$OUT"
cargo build --release --locked -p attn-serve --bin attn-serve --example serve_random_model
BIN=$ROOT/target/release/attn-serve
MAKE=$ROOT/target/release/examples/serve_random_model

SHAKESPEARE=${1:-$OUT/shakespeare-char-cpu-random}
[ -f "$SHAKESPEARE/config.json" ] || "$MAKE" shakespeare-char-cpu "$DATA/tinyshakespeare/input.txt" "$SHAKESPEARE"
GPT2=$OUT/gpt2-small-random
[ -f "$GPT2/config.json" ] || "$MAKE" gpt2-small "$DATA/tinyshakespeare/input.txt" "$GPT2"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null || true' EXIT
: > "$OUT/serve_bench.jsonl"

run_model() { # LABEL DIR MAX_TOKENS CLIENTS... [-- SERVER_ARGS...]
  local label=$1 dir=$2 max=$3; shift 3
  local clients=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do clients+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  "$BIN" --model "$dir" --port "$PORT" --max-concurrency 16 --max-queue 64 "$@" >"$OUT/server-$label.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
    kill -0 "$PID" || { cat "$OUT/server-$label.log"; exit 1; }
    sleep 0.2
  done
  # One short request first, so that the figures do not include first-touch costs.
  python3 scripts/serve_load.py --url "http://127.0.0.1:$PORT" --clients 1 --seconds 0.1 --max-tokens 4 --json >/dev/null
  for n in "${clients[@]}"; do
    python3 scripts/serve_load.py --url "http://127.0.0.1:$PORT" --pid "$PID" --clients "$n" \
      --seconds "$SECS" --max-tokens "$max" --label "$label" --json | tee -a "$OUT/serve_bench.jsonl"
  done
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
}

run_model shakespeare-char-cpu "$SHAKESPEARE" "${SHAKESPEARE_MAX_TOKENS:-128}" 1 4 16
run_model gpt2-small-shape "$GPT2" "${GPT2_MAX_TOKENS:-32}" 1 4 16
# The same 16 clients with sequences decoded one after another, for comparison.
if [ "${COMPARE_INTERLEAVED:-1}" = 1 ]; then
  run_model shakespeare-char-cpu-interleaved "$SHAKESPEARE" "${SHAKESPEARE_MAX_TOKENS:-128}" 16 -- --no-batch
  run_model gpt2-small-shape-interleaved "$GPT2" "${GPT2_MAX_TOKENS:-32}" 16 -- --no-batch
fi
echo "results: $OUT/serve_bench.jsonl"
