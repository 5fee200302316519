#!/usr/bin/env bash
# Training-step speed of an encoder-decoder folder (Marian or T5) against transformers'
# eager model on the same batches, at 2 threads, on both instruction sets:
#
#   scripts/seq2seq_speed.sh MODEL_DIR SRC TGT [STEPS] [BATCH]
#
# attn: crates/attn/examples/translate_step.rs; transformers:
# scripts/translate_step_reference.py (forward with dropout, label-smoothed loss,
# backward, clipping, AdamW). Prints each side's target tokens/s and the ratio; the two
# run one after the other for each instruction set (AVX-512 where the CPU has it, and
# AVX2 with both sides restricted: ATTN_ISA, ATEN_CPU_CAPABILITY, MKL/oneDNN limits).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=$1 SRC=$2 TGT=$3 STEPS=${4:-10} BATCH=${5:-32}
PY=$("$ROOT/scripts/python_env.sh")
(cd "$ROOT" && cargo build --release --example translate_step 2>/dev/null)
EX=$ROOT/target/release/examples/translate_step
for isa in native avx2; do
  if [ $isa = avx2 ]; then
    export ATTN_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
  fi
  a=$("$EX" "$MODEL" "$SRC" "$TGT" "$STEPS" "$BATCH" 2>/dev/null)
  t=$(THREADS=2 "$PY" "$ROOT/scripts/translate_step_reference.py" "$MODEL" "$SRC" "$TGT" "$STEPS" "$BATCH" 2>/dev/null)
  "$PY" - "$a" "$t" "$isa" <<'PYEOF'
import json, sys
a, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({"isa": sys.argv[3], "model": a.get("model"), "batch": a["batch"], "steps": a["steps"],
                  "attn_tokens_per_s": a["tokens_per_s"], "transformers_tokens_per_s": t["tokens_per_s"],
                  "ratio": round(a["tokens_per_s"] / t["tokens_per_s"], 3)}))
PYEOF
done
