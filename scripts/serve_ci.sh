#!/usr/bin/env bash
# attn-serve with real clients, run by .ci/run after `cargo test --workspace`:
#   1. the official `openai` Python package (completions, chat, streaming, errors, embeddings)
#   2. headless Chromium (playwright-core) on the playground: streamed text, attention view
#   3. fault cases (malformed JSON, 10 MB body, max_tokens over the limit, wrong key,
#      a client dropping mid-stream), each followed by a working request
#   4. a short load test: concurrent streaming clients, zero failures allowed
# It installs what it needs outside the repository: a venv with `openai`
# ($ATTN_SERVE_VENV), `playwright-core` ($ATTN_SERVE_NODE), and Debian's chromium
# (apt-get, when /usr/bin/chromium is missing). The model is the shakespeare-char-cpu
# shape with random weights; the embedding server uses ../shared/models/all-MiniLM-L6-v2.
# Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=${ATTN_SERVE_WORK:-/tmp/attn-serve-ci}
VENV=${ATTN_SERVE_VENV:-/tmp/attn-serve-venv}
NODE_DIR=${ATTN_SERVE_NODE:-/tmp/attn-serve-node}
DATA=${ATTN_DATA_DIR:-$ROOT/../shared/data}
MODELS=${ATTN_MODELS_DIR:-$ROOT/../shared/models}
KEY=ci-$RANDOM$RANDOM
LIMIT=512
mkdir -p "$WORK"

step() { echo; echo "=== serve: $* ($(date +%T))"; }

step "build"
cargo build --locked -p attn-serve --bin attn-serve --example serve_random_model
BIN=$ROOT/target/debug/attn-serve

step "install clients"
if ! "$VENV/bin/python" -c "import openai" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet openai
fi
"$VENV/bin/python" -c "import openai; print('openai', openai.__version__)"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
"${CHROMIUM:-/usr/bin/chromium}" --version
if [ ! -d "$NODE_DIR/node_modules/playwright-core" ]; then
  mkdir -p "$NODE_DIR"
  (cd "$NODE_DIR" && npm install --silent --no-audit --no-fund playwright-core)
fi

step "model"
MODEL=$WORK/shakespeare-char-cpu
[ -f "$MODEL/config.json" ] || "$ROOT/target/debug/examples/serve_random_model" shakespeare-char-cpu "$DATA/tinyshakespeare/input.txt" "$MODEL"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_server() { # PORT ARGS... ; sets SERVER_PID
  local port=$1; shift
  "$BIN" --port "$port" --api-key "$KEY" "$@" >"$WORK/server-$port.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  for _ in $(seq 1 300); do
    if python3 - "$port" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=1).read()
EOF
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server-$port.log"; echo "server on $port died"; exit 1; }
    sleep 0.2
  done
  echo "server on $port did not come up"; cat "$WORK/server-$port.log"; exit 1
}

LM_PORT=$(free_port)
start_server "$LM_PORT" --model "$MODEL" --max-tokens-limit $LIMIT --max-concurrency 8 --max-queue 32
LM_PID=$SERVER_PID
EMBED_ARGS=()
if [ -d "$MODELS/all-MiniLM-L6-v2" ]; then
  EMBED_PORT=$(free_port)
  start_server "$EMBED_PORT" --model "$MODELS/all-MiniLM-L6-v2"
  EMBED_ARGS=(--embed-base-url "http://127.0.0.1:$EMBED_PORT/v1")
elif [ "${CI:-}" = true ]; then
  echo "missing $MODELS/all-MiniLM-L6-v2 under CI"; exit 1
fi

step "openai client"
"$VENV/bin/python" scripts/serve_openai_test.py --base-url "http://127.0.0.1:$LM_PORT/v1" --api-key "$KEY" "${EMBED_ARGS[@]}"

step "browser"
NODE_PATH=$NODE_DIR/node_modules node scripts/serve_browser_test.mjs \
  --url "http://127.0.0.1:$LM_PORT/" --api-key "$KEY" --screenshot "$WORK/serve-attention.png"

step "faults"
python3 scripts/serve_faults.py --url "http://127.0.0.1:$LM_PORT" --api-key "$KEY" --max-tokens-limit $LIMIT

step "load"
python3 scripts/serve_load.py --url "http://127.0.0.1:$LM_PORT" --api-key "$KEY" --pid "$LM_PID" \
  --clients 4 --seconds 5 --max-tokens 32 --label ci

kill -0 "$LM_PID" || { echo "the server died"; exit 1; }
step "all client tests passed"
