"""attn translate against CTranslate2 on one test set, same run, alternating.

Usage: ctranslate2_compare.py MODEL_DIR SRC REF [--attn BIN] [--beam 4] [--threads 2]
                              [--batch 32] [--rounds 2]

MODEL_DIR is a translation folder written by `attn translate train`. It is converted
with CTranslate2's own converter (`TransformersConverter`, as `ct2-transformers-converter
--model MODEL_DIR` does) to an f32 and an int8 model next to it (MODEL_DIR.ct2-f32,
MODEL_DIR.ct2-int8). Each round runs, one after the other:

- attn: the whole command `attn translate --model MODEL_DIR --beam B --batch-size N < SRC`;
- CTranslate2 f32 and int8: load the model, tokenize with the folder's tokenizer.json as
  attn does (NFC, truncated to max_len - 1 tokens, then </s>), `translate_batch` with
  beam B, max_batch_size N, max_decoding_length max_len, `intra_threads` T, then decode.

Prints per round the seconds and sentences/s of each, the ratios attn / CTranslate2
(speed, so > 1 means attn is faster), sacreBLEU of each against REF, and how many output
lines are identical to attn's. Set CT2_FORCE_CPU_ISA=AVX2 and ATTN_ISA=avx2 to compare
on AVX2.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import unicodedata

import ctranslate2
import sacrebleu
from tokenizers import Tokenizer


def convert(folder, quantization):
    out = f"{folder.rstrip('/')}.ct2-{quantization}"
    if not os.path.isdir(out):
        conv = ctranslate2.converters.TransformersConverter(folder)
        conv.convert(out, quantization=None if quantization == "f32" else quantization, force=True)
    return out


def run_ct2(path, folder, lines, args):
    t0 = time.perf_counter()
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    max_len = json.load(open(os.path.join(folder, "attn_translate.json")))["max_len"]
    eos = json.load(open(os.path.join(folder, "config.json")))["eos_token_id"]
    translator = ctranslate2.Translator(path, device="cpu", intra_threads=args.threads, inter_threads=1)
    batch = []
    for line in lines:
        ids = tok.encode(unicodedata.normalize("NFC", line.strip())).ids[: max_len - 1] + [eos]
        batch.append([tok.id_to_token(i) for i in ids])
    results = translator.translate_batch(
        batch,
        beam_size=args.beam,
        max_batch_size=args.batch,
        max_decoding_length=max_len,
        length_penalty=1.0,
    )
    out = []
    for r in results:
        ids = [tok.token_to_id(t) for t in r.hypotheses[0]]
        out.append(tok.decode([i for i in ids if i is not None], skip_special_tokens=True).strip())
    return out, time.perf_counter() - t0


def run_attn(args, src_text):
    t0 = time.perf_counter()
    p = subprocess.run(
        [args.attn, "translate", "--model", args.model, "--beam", str(args.beam), "--batch-size", str(args.batch)],
        input=src_text, capture_output=True, text=True, check=True,
    )
    return p.stdout.splitlines(), time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("src")
    ap.add_argument("ref")
    ap.add_argument("--attn", default="target/release/attn")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    src_text = open(args.src, encoding="utf-8").read()
    lines = src_text.splitlines()
    refs = open(args.ref, encoding="utf-8").read().splitlines()
    models = {q: convert(args.model, q) for q in ["f32", "int8"]}
    for rnd in range(args.rounds):
        res = {"round": rnd + 1, "sentences": len(lines), "beam": args.beam, "threads": args.threads,
               "ct2_version": ctranslate2.__version__}
        hyp_attn, t_attn = run_attn(args, src_text)
        res["attn_s"] = round(t_attn, 3)
        res["attn_bleu"] = round(sacrebleu.corpus_bleu(hyp_attn, [refs]).score, 2)
        for q, path in models.items():
            hyp, t = run_ct2(path, args.model, lines, args)
            res[f"ct2_{q}_s"] = round(t, 3)
            res[f"ct2_{q}_bleu"] = round(sacrebleu.corpus_bleu(hyp, [refs]).score, 2)
            res[f"ratio_vs_ct2_{q}"] = round(t / t_attn, 3)
            res[f"identical_to_attn_{q}"] = sum(a == b for a, b in zip(hyp_attn, hyp))
        res["attn_sentences_per_s"] = round(len(lines) / t_attn, 1)
        print(json.dumps(res))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
