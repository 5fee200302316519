#!/usr/bin/env python3
"""Check that model folders written by attn load in Hugging Face transformers
unchanged and compute the same numbers.

1. For every fixture under crates/attn/tests/fixtures/hf (gpt2, llama, qwen2,
   mistral, bert, roberta, xlm-roberta, distilbert, marian, t5), run `attn export --model FIXTURE --out TMP/NAME`, load the result with
   transformers (`output_loading_info=True`), require no missing and no unexpected
   keys, and compare its outputs on the fixture's recorded inputs with the recorded
   reference (max abs difference printed).
3. With --classifier DIR [DIR ...] --texts FILE (folders written by `attn classify
   train`: BERT, RoBERTa, XLM-RoBERTa, DistilBERT), load each with
   AutoModelForSequenceClassification and compare its class probabilities
   with `attn classify predict --json` on the texts.
2. With --trained DIR [DIR ...] (folders written by `attn train`, any --arch),
   load each as its config's model_type's class with its tokenizer.json through `tokenizers`, score a text
   with disjoint windows of the model's context, and compare with
   `attn eval perplexity --json` on the same text.

    $(scripts/python_env.sh) scripts/check_hf_export.py --attn target/release/attn \
        [--trained runs/shakespeare --text held-out.txt]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import (AutoModelForSequenceClassification,
                          BertForSequenceClassification, DistilBertForSequenceClassification,
                          GPT2LMHeadModel, RobertaForSequenceClassification,
                          XLMRobertaForSequenceClassification,
                          LlamaForCausalLM, MarianMTModel, MistralForCausalLM,
                          Qwen2ForCausalLM, T5ForConditionalGeneration)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "attn", "tests", "fixtures", "hf")
CLASSES = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM,
           "mistral": MistralForCausalLM, "bert": BertForSequenceClassification,
           "roberta": RobertaForSequenceClassification,
           "xlm-roberta": XLMRobertaForSequenceClassification,
           "distilbert": DistilBertForSequenceClassification, "marian": MarianMTModel,
           "t5": T5ForConditionalGeneration}
ENCODERS = ("bert", "roberta", "xlm-roberta", "distilbert")
DECODERS = ("gpt2", "llama", "qwen2", "mistral")


# Largest logit difference allowed, as a fraction of the largest reference logit, over
# the eight fixtures: f32 is the same arithmetic (measured at most 5.2e-7); f16 measured
# at most 1.0e-3 and bf16 1.0e-2 (marian-tiny); the bounds are 2.5x those.
REL_TOL = {"f32": 1e-5, "f16": 2.5e-3, "bf16": 2.5e-2}


def outputs(kind, model, ref):
    with torch.no_grad():
        if kind in DECODERS:
            return model(ref["input_ids"]).logits
        if kind in ENCODERS:
            extra = {"token_type_ids": ref["token_type_ids"]} if "token_type_ids" in ref else {}
            return model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"], **extra).logits
        return model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"],
                     decoder_input_ids=ref["decoder_input_ids"]).logits


def check_folder(name, kind, out, ref, dtype, label):
    """Load `out` (written by attn) in transformers: no missing or unexpected keys, and its
    logits on the fixture's inputs within REL_TOL[dtype] of the reference. Returns 0 or 1
    (a failure), after printing a line."""
    model, info = CLASSES[kind].from_pretrained(out, output_loading_info=True,
                                                dtype=torch.float32)
    model.eval()
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    diff = (outputs(kind, model, ref) - ref["logits"]).abs().max().item()
    # Relative to the largest reference logit: rounding the weights to f16 / bf16
    # (11 / 8 bits) moves the logits by a fraction of their size.
    rel = diff / ref["logits"].abs().max().item()
    ok = not missing and not unexpected and rel <= REL_TOL[dtype]
    print(f"{name:20s} {label:5s} missing={list(missing)} unexpected={list(unexpected)} "
          f"max|logits diff|={diff:.3e} ({rel:.2e} of the largest) {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def fixtures(kinds):
    """(name, kind, path, reference tensors) of each fixture of the given kinds (its
    config's model_type)."""
    for name in sorted(os.listdir(FIXTURES)):
        config = os.path.join(FIXTURES, name, "config.json")
        if not os.path.exists(config):
            continue
        with open(config, encoding="utf-8") as f:
            kind = json.load(f)["model_type"]
        if kind in kinds:
            path = os.path.join(FIXTURES, name)
            yield name, kind, path, load_file(os.path.join(path, "reference.safetensors"))


def check_exports(attn, tmp, dtypes):
    failures = 0
    for name, kind, path, ref in fixtures(CLASSES):
        for dtype in dtypes:
            out = os.path.join(tmp, f"{name}-{dtype}")
            subprocess.run([attn, "export", "--model", path, "--out", out, "--dtype", dtype],
                           check=True, capture_output=True)
            failures += check_folder(name, kind, out, ref, dtype, dtype)
    return failures


def check_engine_saves(attn, tmp):
    """`attn quantize --dtype f16` writes decoders through the engine's own writer (the
    stacked q/k/v and gate/up matrices split back into Hugging Face's tensors)."""
    failures = 0
    for name, kind, path, ref in fixtures(DECODERS):
        out = os.path.join(tmp, f"{name}-engine-f16")
        subprocess.run([attn, "quantize", "--model", path, "--out", out, "--dtype", "f16"],
                       check=True, capture_output=True)
        failures += check_folder(name, kind, out, ref, "f16", "engine f16")
    return failures


def check_trained(attn, model_dir, text_path):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        kind = json.load(f)["model_type"]
    model = CLASSES[kind].from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    with open(text_path, encoding="utf-8") as f:
        text = f.read()
    ids = torch.tensor([tok.encode(text, add_special_tokens=False).ids])
    ctx = model.config.n_positions if kind == "gpt2" else model.config.max_position_embeddings
    total, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, ids.shape[1], ctx):
            window = ids[:, begin:begin + ctx]
            if window.shape[1] < 2:
                continue
            loss = model(window, labels=window).loss.item()
            total += loss * (window.shape[1] - 1)
            count += window.shape[1] - 1
    ref = json.loads(subprocess.run([attn, "eval", "perplexity", "--model", model_dir, "--data",
                                     text_path, "--json"], check=True, capture_output=True,
                                    text=True).stdout)
    nll = total / count
    ok = count == ref["tokens"] and abs(nll - ref["nll"]) < 1e-4
    print(f"trained {kind} {model_dir}: transformers nll {nll:.6f} over {count} tokens, "
          f"attn nll {ref['nll']:.6f} over {ref['tokens']} {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def check_classifier(attn, model_dir, texts_path):
    model, info = AutoModelForSequenceClassification.from_pretrained(model_dir, output_loading_info=True)
    model.eval()
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    # attn reads at most the training max_len tokens (special tokens included).
    max_len = model.config.max_position_embeddings
    meta = os.path.join(model_dir, "attn_classifier.json")
    if os.path.exists(meta):
        with open(meta, encoding="utf-8") as f:
            max_len = min(max_len, json.load(f).get("max_len", max_len))
    tok.enable_truncation(max_length=max_len)
    with open(texts_path, encoding="utf-8") as f:
        texts = f.read().splitlines()
    with open(texts_path, "rb") as f:
        out = subprocess.run([attn, "classify", "predict", "--model", model_dir, "--json"], stdin=f,
                             check=True, capture_output=True, text=True).stdout.splitlines()
    worst = 0.0
    for text, line in zip(texts, out):
        ids = torch.tensor([tok.encode(text).ids])
        with torch.no_grad():
            probs = model(ids).logits.softmax(-1)[0]
        got = json.loads(line)["probabilities"]
        for i, p in enumerate(probs.tolist()):
            worst = max(worst, abs(p - got[model.config.id2label[i]]))
    missing, unexpected = info["missing_keys"], info["unexpected_keys"]
    ok = not missing and not unexpected and worst < 1e-5 and len(out) == len(texts)
    print(f"classifier {model_dir}: missing={list(missing)} unexpected={list(unexpected)} "
          f"labels={model.config.id2label} max|prob diff|={worst:.2e} over {len(texts)} texts "
          f"{'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--attn", required=True, help="path to the attn binary")
    p.add_argument("--dtypes", nargs="+", default=["f32", "f16", "bf16"])
    p.add_argument("--no-fixtures", action="store_true", help="skip the exports of the fixtures")
    p.add_argument("--trained", nargs="+", default=[], help="folders written by attn train")
    p.add_argument("--text", help="text to score with --trained")
    p.add_argument("--classifier", nargs="+", default=[], help="folders written by attn classify train")
    p.add_argument("--texts", help="texts (one per line) to classify with --classifier")
    a = p.parse_args()
    torch.set_num_threads(2)
    failures = 0
    if not a.no_fixtures:
        with tempfile.TemporaryDirectory() as tmp:
            failures += check_exports(os.path.abspath(a.attn), tmp, a.dtypes)
            failures += check_engine_saves(os.path.abspath(a.attn), tmp)
    for trained in a.trained:
        failures += check_trained(os.path.abspath(a.attn), trained, a.text)
    for clf in a.classifier:
        failures += check_classifier(os.path.abspath(a.attn), clf, a.texts)
    print("all checks passed" if failures == 0 else f"{failures} checks failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
