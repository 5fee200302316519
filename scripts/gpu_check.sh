#!/usr/bin/env bash
# The GPU checks, as one script for a machine with an NVIDIA GPU and CUDA 12 or 13
# (driver, NVRTC and cuBLAS; PyTorch for the reference timings). Build on any machine:
#
#     scripts/gpu_check.sh build      # release binaries into .dev/ (no CUDA needed)
#
# then, on the GPU machine, from the repository root (OUT: where logs go, default .dev/out):
#
#     scripts/gpu_check.sh run
#
# It prints the GPU, runs every CUDA operation against the CPU engine
# (tests/cuda_ops.rs), the trainer on the GPU against transformers' gradients
# (engine_parity.rs) and against the CPU trainer (cuda_train.rs: one step with dropout,
# a 200-step loss curve), all with ATTN_REQUIRE_GPU=1 so a GPU that fails to open fails
# them; trains with `attn train --device cuda` and `--device cpu`; then times attn's
# operations and PyTorch's at the same shapes (examples/cuda_speed.rs,
# scripts/cuda_ops_reference.py) and whole training steps beside PyTorch's
# (scripts/torch_gpu_reference.py); with RECIPE=1, nanoGPT's shakespeare-char recipe on
# both. SKIP_OPS_SPEED=1 skips the per-operation timings, SHAPES="gpt2-small" narrows the
# training timings.
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
build)
    mkdir -p .dev
    cargo build --release -p attn-cli -p attn --tests --example cuda_speed || exit 1
    cargo test --release -p attn --test cuda_ops --test cuda_train --test engine_parity --no-run \
        --message-format=json 2>/dev/null | python3 -c 'import json, shutil, sys
for l in sys.stdin:
    m = json.loads(l)
    name = m.get("target", {}).get("name")
    if m.get("executable") and name in ("cuda_ops", "cuda_train", "engine_parity"):
        shutil.copy(m["executable"], ".dev/" + name)'
    cp target/release/examples/cuda_speed target/release/attn .dev/
    # The recipe's corpus (RECIPE=1 below), from the data folder when it is there.
    corpus=${ATTN_DATA_DIR:-../shared/data}/tinyshakespeare/input.txt
    [ -f "$corpus" ] && cp "$corpus" .dev/input.txt
    ls -la .dev
    ;;
run)
    out=${OUT:-.dev/out}
    mkdir -p "$out"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
    # NVRTC and cuBLAS: the loader's path, else the folders that hold them.
    dirs=$(find /usr/local /usr/lib /opt -maxdepth 8 \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' \) \
        -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
    export ATTN_CUDA_LIBS="${ATTN_CUDA_LIBS:-}:$dirs"
    echo "library folders: $ATTN_CUDA_LIBS"
    status=0
    export ATTN_REQUIRE_GPU=1
    step() { echo "== $*"; "$@" || { echo "FAILED: $*"; return 1; }; }
    step .dev/cuda_ops --nocapture 2>&1 | tee "$out/ops.log" || status=1
    step .dev/engine_parity native_trainer_on_a_gpu --nocapture 2>&1 | tail -n 20 || status=1
    step .dev/cuda_train --nocapture --test-threads 1 2>&1 | tail -n 20 || status=1
    # The train command end to end on a character corpus (this repository's Rust source).
    cat crates/attn/src/*/*.rs > /tmp/corpus.txt
    for dev in cuda cpu; do
        step .dev/attn train --device $dev --data /tmp/corpus.txt --out /tmp/run-$dev --overwrite \
            --max-iters 300 --eval-interval 100 --eval-iters 20 --json 2>&1 | tail -n 4 || status=1
    done
    [ -n "${SKIP_OPS_SPEED:-}" ] || {
        step .dev/cuda_speed "${REPEATS:-20}" 2>&1 | tee "$out/attn_speed.log" || status=1
        PYTHONUNBUFFERED=1 step python3 scripts/cuda_ops_reference.py "${REPEATS:-20}" 2>&1 |
            tee "$out/torch_speed.log" || status=1
    }
    PYTHONUNBUFFERED=1 step python3 scripts/torch_gpu_reference.py --attn .dev/attn --steps "${STEPS:-20}" \
        ${SHAPES:+--shapes $SHAPES} 2>&1 | tee "$out/train_speed.log" || status=1
    # RECIPE=1: nanoGPT's shakespeare-char recipe, attn then PyTorch (bf16 + compile),
    # 5,000 steps each (about 4 minutes for attn on an H200).
    [ -z "${RECIPE:-}" ] || PYTHONUNBUFFERED=1 step python3 scripts/torch_gpu_reference.py --attn .dev/attn \
        --recipe .dev/input.txt 2>&1 | tee "$out/recipe.log" || status=1
    exit $status
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
