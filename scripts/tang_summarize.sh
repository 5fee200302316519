#!/usr/bin/env bash
# Summarization example and the pre-training experiment of attn's T5: Tang poems,
# body -> title (a headline task in Chinese), characters as tokens.
#
#   [MODEL="--d-model D --layers L --heads H --ffn F"] [SEEDS="7 8 9"] \
#   scripts/tang_summarize.sh [WORKDIR] [FINETUNE_STEPS] [PRETRAIN_STEPS] [SOURCE_LEN]
#
# SOURCE_LEN (default 64) caps a poem at that many characters (end-of-sentence included)
# in training, pre-training and decoding alike.
# (a) a T5 trained from scratch on the pairs for FINETUNE_STEPS steps;
# (b) the same T5 pre-trained with span corruption on the training bodies for
#     PRETRAIN_STEPS steps, then fine-tuned on the pairs with the same FINETUNE_STEPS.
# Both have one vocabulary, the characters of the training pairs (the pre-training
# reads (a)'s tokenizer.json): title characters that no body has stay learnable.
# Both decode the 2,000 held-out test poems (greedy and beam 4); ROUGE-1/2/L by characters
# (attn eval rouge --tokenize zh-char) and chrF (attn eval chrf) score them.
# SEEDS (default 7): (a) and (b)'s fine-tuning run once per seed (initialisation, batch
# order and dropout of (a); batch order of (b)), the pre-training once, with the first;
# the paired bootstrap then compares (b) with (a) seed by seed and pooled.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-/tmp/tang}
FT=${2:-16000}
PT=${3:-24000}
LEN=${4:-64}
ATTN=${ATTN:-$ROOT/target/release/attn}
read -r -a SEED_LIST <<< "${SEEDS:-7}"
[ -x "$ATTN" ] || (cd "$ROOT" && cargo build --release -p attn-cli)
python3 "$ROOT/scripts/tang_titles.py" "$W"
# MODEL (environment) overrides the model's shape (default: 3.3M parameters), e.g.
# MODEL="--d-model 256 --layers 4 --heads 4 --ffn 512" for 11.3M.
read -r -a SHAPE <<< "${MODEL:---d-model 128 --layers 2 --heads 4 --ffn 256}"
FINE=(--pairs "$W/train.tsv" --valid-src "$W/valid.src" --valid-tgt "$W/valid.tgt"
      --max-len "$LEN" --max-steps "$FT" --eval-interval 500 --bleu-sample 1000)
# The first seed's runs keep the plain names (scratch, finetuned); the others get theirs.
name() { if [ "$2" = "${SEED_LIST[0]}" ]; then echo "$1"; else echo "$1$2"; fi; }

run() { local t0=$SECONDS; "$@"; echo "  ($((SECONDS - t0)) s wall)" >&2; }

for s in "${SEED_LIST[@]}"; do
  echo "== (a) from scratch: $FT steps, seed $s" >&2
  R=(--batch-size 32 --lr 1e-3 --warmup 200 --seed "$s")
  run "$ATTN" summarize train "${FINE[@]}" "${SHAPE[@]}" "${R[@]}" --arch t5 --vocab char \
    --out "$W/$(name scratch "$s")" --overwrite --json > "$W/$(name scratch "$s").json"
  if [ "$s" = "${SEED_LIST[0]}" ]; then
    echo "== (b) span-corruption pre-training: $PT steps" >&2
    # No dropout in pre-training (as T5 v1.1 was pre-trained; dropout comes back for the
    # fine-tuning): the small model underfits the corrupted spans, it does not overfit
    # them.
    run "$ATTN" pretrain --data "$W/train_bodies.txt" "${SHAPE[@]}" "${R[@]}" --dropout 0 --arch t5 \
      --tokenizer "$W/scratch/tokenizer.json" --max-len "$LEN" --max-steps "$PT" \
      --eval-interval 2000 --holdout 0 --valid-size 1000 \
      --out "$W/pretrained" --overwrite --json > "$W/pretrained.json"
  fi
  echo "== (b) fine-tuning the pre-trained model: $FT steps, seed $s" >&2
  # FT_DROPOUT: the fine-tuning's dropout (the README's table ran with 0: the
  # fine-tuning then kept the pre-trained folder's own rate; 0.1 is (a)'s).
  run "$ATTN" summarize train "${FINE[@]}" "${R[@]}" --dropout "${FT_DROPOUT:-0}" \
    --model "$W/pretrained" --out "$W/$(name finetuned "$s")" --overwrite --json \
    > "$W/$(name finetuned "$s").json"
done

for s in "${SEED_LIST[@]}"; do
  for m in "$(name scratch "$s")" "$(name finetuned "$s")"; do
    for beam in 1 4; do
      t0=$SECONDS
      "$ATTN" summarize --model "$W/$m" --beam $beam --max-len 16 --batch-size 64 < "$W/test.src" > "$W/$m.beam$beam"
      echo "== $m beam $beam: test decoding $((SECONDS - t0)) s, $(sort -u "$W/$m.beam$beam" | wc -l) distinct titles" >&2
      echo "$m beam $beam ROUGE (zh-char): $("$ATTN" eval rouge --hyp "$W/$m.beam$beam" --ref "$W/test.tgt" --tokenize zh-char --json)"
      echo "$m beam $beam chrF: $("$ATTN" eval chrf --hyp "$W/$m.beam$beam" --ref "$W/test.tgt" --json)"
    done
  done
done
for beam in 1 4; do
  A=() B=()
  for s in "${SEED_LIST[@]}"; do
    A+=(--a "$W/$(name scratch "$s").beam$beam")
    B+=(--b "$W/$(name finetuned "$s").beam$beam")
  done
  echo "== paired bootstrap of ROUGE-L, (b) - (a), beam $beam"
  python3 "$ROOT/scripts/paired_bootstrap.py" --attn "$ATTN" --ref "$W/test.tgt" \
    --tokenize zh-char --samples 4000 "${A[@]}" "${B[@]}"
done
echo "== a dozen test poems: real title | (a) scratch | (b) pre-trained + fine-tuned (greedy)"
# The first lines of each file (paste | head would end the script with SIGPIPE under
# pipefail).
paste <(head -12 "$W/test.tgt") <(head -12 "$W/scratch.beam1") <(head -12 "$W/finetuned.beam1")
