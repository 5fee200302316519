#!/usr/bin/env bash
# Make (or reuse) the Python environment for the fixture and reference scripts, outside
# the repository, and print its interpreter:
#
#     PY=$(scripts/python_env.sh)          # $ATTN_VENV, default ~/.cache/attn/venv
#     $PY scripts/make_hf_fixtures.py      # then any script under scripts/
#
# Installs scripts/requirements.txt (torch is large: a few minutes the first time).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${ATTN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/attn/venv}
REQ=$ROOT/scripts/requirements.txt
STAMP=$VENV/.attn-requirements
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" >&2
fi
if ! cmp -s "$REQ" "$STAMP" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQ" >&2
  cp "$REQ" "$STAMP"
fi
echo "$VENV/bin/python"
