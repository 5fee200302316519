#!/usr/bin/env bash
# Folders written by attn, loaded by Hugging Face transformers (run by .ci/run):
#   1. `attn export` of every HF fixture (gpt2, llama, qwen2, mistral, bert, marian, t5) in f32, f16 and
#      bf16: no missing or unexpected keys, logits within bounds set from measured error;
#      and `attn quantize --dtype f16` of the decoder fixtures (the engine's own writer);
#   2. a GPT-2, a Llama, a Qwen2 and a Mistral (sliding window) trained by `attn train`:
#      transformers' perplexity =
#      `attn eval perplexity`;
#   3. classifiers from `attn classify train` (BERT from scratch; RoBERTa and DistilBERT
#      fine-tuned): class probabilities = `attn classify predict`; RoBERTa fine-tuning's
#      first 20 losses = a transformers loop's (scripts/classify_curve.py);
#   4. a translation model from `attn translate train`, and a T5 from `attn pretrain` then
#      `attn summarize train --model`: transformers' beam search gives the same outputs as
#      `attn translate`.
# Python (torch, transformers: scripts/requirements.txt) is installed outside the
# repository by scripts/python_env.sh ($ATTN_VENV). Uses the debug attn binary that
# `cargo test` built. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ATTN=${ATTN_BIN:-$ROOT/target/debug/attn}
DATA=${ATTN_DATA_DIR:-$ROOT/../shared/data}
WORK=$(mktemp -d /tmp/attn-export-ci.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
step() { echo; echo "=== export: $* ($(date +%T))"; }

step "python environment"
PY=$(scripts/python_env.sh)
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

step "models"
head -c 200000 "$DATA/tinyshakespeare/input.txt" > "$WORK/train.txt"
tail -c 20000 "$DATA/tinyshakespeare/input.txt" > "$WORK/held.txt"
"$ATTN" train --data "$WORK/train.txt" --out "$WORK/gpt2" --n-layer 2 --n-head 2 --n-embd 32 \
  --block-size 64 --batch-size 8 --max-iters 60 --eval-interval 30 --eval-iters 2 2>/dev/null
"$ATTN" train --arch llama --data "$WORK/train.txt" --out "$WORK/llama" --n-layer 2 --n-head 4 \
  --n-kv-head 2 --n-embd 32 --block-size 64 --batch-size 8 --max-iters 60 --eval-interval 30 \
  --eval-iters 2 2>/dev/null
"$ATTN" train --arch qwen2 --data "$WORK/train.txt" --out "$WORK/qwen2" --n-layer 2 --n-head 6 \
  --n-kv-head 2 --n-embd 48 --block-size 64 --batch-size 8 --max-iters 30 --eval-interval 30 \
  --eval-iters 2 2>/dev/null
"$ATTN" train --arch mistral --sliding-window 8 --data "$WORK/train.txt" --out "$WORK/mistral" \
  --n-layer 2 --n-head 4 --n-kv-head 2 --n-embd 32 --block-size 64 --batch-size 8 --max-iters 30 \
  --eval-interval 30 --eval-iters 2 2>/dev/null
POS=$DATA/sentence-polarity/rt-polarity.pos
NEG=$DATA/sentence-polarity/rt-polarity.neg
{ head -n 300 "$POS" | sed 's/^/pos\t/'; head -n 300 "$NEG" | sed 's/^/neg\t/'; } > "$WORK/clf.tsv"
{ tail -n 20 "$POS"; tail -n 20 "$NEG"; } > "$WORK/texts.txt"
"$ATTN" classify train --data "$WORK/clf.tsv" --out "$WORK/clf" --preset bert-tiny --epochs 1 \
  --tokenizer bpe:600 --max-len 48 2>/dev/null
# A RoBERTa and a DistilBERT fine-tuned from transformers' fixtures, with a char
# tokenizer of the texts' letters (fewer ids than the fixtures' vocabularies).
for ENC in roberta-3heads distilbert-3heads; do
  mkdir -p "$WORK/$ENC"
  cp "crates/attn/tests/fixtures/hf/$ENC/config.json" "crates/attn/tests/fixtures/hf/$ENC/model.safetensors" "$WORK/$ENC/"
  echo "abcdefghijklmnopqrstuvwxyz .,'" > "$WORK/letters.txt"
  "$ATTN" tokenizer train --kind char --data "$WORK/letters.txt" --out "$WORK/$ENC" --overwrite 2>/dev/null
  { head -n 200 "$POS" | sed 's/^/pos\t/'; head -n 200 "$NEG" | sed 's/^/neg\t/'; } \
    | tr 'A-Z' 'a-z' | tr -cd "a-z .,'\t\n" > "$WORK/clf-lower.tsv"
  "$ATTN" classify train --data "$WORK/clf-lower.tsv" --model "$WORK/$ENC" --out "$WORK/$ENC-clf" --epochs 1 \
    --max-len 48 2>/dev/null
done
tr 'A-Z' 'a-z' < "$WORK/texts.txt" | tr -cd "a-z .,'\n" > "$WORK/texts-lower.txt"
paste <(head -n 3000 "$DATA/multi30k/train.de") <(head -n 3000 "$DATA/multi30k/train.en") > "$WORK/pairs.tsv"
"$ATTN" translate train --pairs "$WORK/pairs.tsv" --out "$WORK/marian" --holdout 50 --valid-size 50 \
  --d-model 32 --layers 1 --heads 2 --ffn 64 --vocab-size 800 --max-steps 150 --batch-size 32 \
  --eval-interval 150 --bleu-sample 10 2>/dev/null
# A T5: span-corruption pre-training on sentences, then fine-tuning on pairs.
head -n 2000 "$DATA/multi30k/train.en" > "$WORK/docs.txt"
"$ATTN" pretrain --data "$WORK/docs.txt" --out "$WORK/t5-pre" --holdout 0 --valid-size 50 --arch t5 \
  --d-model 36 --layers 2 --heads 3 --ffn 48 --vocab-size 600 --max-steps 40 --batch-size 16 \
  --eval-interval 40 2>/dev/null
"$ATTN" summarize train --pairs "$WORK/pairs.tsv" --model "$WORK/t5-pre" --out "$WORK/t5" --holdout 50 \
  --valid-size 50 --max-steps 40 --batch-size 16 --eval-interval 40 --bleu-sample 10 2>/dev/null

step "exports, a trained GPT-2 and Llama, a classifier"
"$PY" scripts/check_hf_export.py --attn "$ATTN" --trained "$WORK/gpt2" "$WORK/llama" "$WORK/qwen2" \
  "$WORK/mistral" --text "$WORK/held.txt" \
  --classifier "$WORK/clf" --texts "$WORK/texts.txt" 2>&1 | grep -v "Loading weights"
"$PY" scripts/check_hf_export.py --attn "$ATTN" --no-fixtures --classifier "$WORK/roberta-3heads-clf" \
  "$WORK/distilbert-3heads-clf" --texts "$WORK/texts-lower.txt" 2>&1 | grep -v "Loading weights"

step "RoBERTa fine-tuning: attn's loss curve against a transformers loop"
"$PY" scripts/classify_curve.py --attn "$ATTN" 2>&1 | grep -v -e "Loading weights" -e "Writing model" | tail -3

step "translation: beam search against transformers' generate"
"$PY" scripts/check_marian_export.py --model "$WORK/marian" --attn "$ATTN" --src "$WORK/marian/holdout.src" \
  --n 50 --beam 3 2>&1 | grep -v -e "Loading weights" -e "seem to have been set"
step "T5 (pre-trained, then fine-tuned): beam search against transformers' generate"
"$PY" scripts/check_marian_export.py --model "$WORK/t5" --attn "$ATTN" --src "$WORK/t5/holdout.src" \
  --n 50 --beam 3 2>&1 | grep -v -e "Loading weights" -e "seem to have been set" -e "tied weights mapping"
step "all export checks passed"
