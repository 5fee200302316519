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
# (tests/cuda_ops.rs, with ATTN_REQUIRE_GPU=1 so a GPU that fails to open fails it), then
# times attn's operations and PyTorch's at the same shapes (examples/cuda_speed.rs,
# scripts/cuda_ops_reference.py).
set -uo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
build)
    mkdir -p .dev
    cargo build --release -p attn --test cuda_ops --example cuda_speed || exit 1
    bin=$(cargo test --release -p attn --test cuda_ops --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("executable") and m.get("target", {}).get("name") == "cuda_ops": print(m["executable"])')
    cp "$bin" .dev/cuda_ops && cp target/release/examples/cuda_speed .dev/cuda_speed
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
    ATTN_REQUIRE_GPU=1 .dev/cuda_ops --nocapture 2>&1 | tee "$out/ops.log" || status=1
    .dev/cuda_speed "${REPEATS:-20}" 2>&1 | tee "$out/attn_speed.log" || status=1
    PYTHONUNBUFFERED=1 python3 scripts/cuda_ops_reference.py "${REPEATS:-20}" 2>&1 | tee "$out/torch_speed.log" || status=1
    exit $status
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
