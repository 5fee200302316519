#!/usr/bin/env python3
"""Make the models that scripts/llamacpp_reference.py compares attn and llama.cpp on.

    PY=$(scripts/python_env.sh)
    $PY scripts/llamacpp_models.py --out DIR --llama-cpp PATH/TO/llama.cpp \
        --attn target/release/attn [--shapes gpt2 llama] [--seed 0]

For each shape it writes, under DIR:

  SHAPE/            a Hugging Face folder with random weights (transformers' own init,
                    fixed seed) and a byte-level BPE tokenizer trained on the shared
                    Gutenberg books (the weights, not the vocabulary, set the speed);
  SHAPE-f16/, SHAPE-q8/, SHAPE-q4/
                    `attn quantize` of it;
  gguf/SHAPE-f32.gguf, gguf/SHAPE-f16.gguf
                    llama.cpp's convert_hf_to_gguf.py of the same folder;
  gguf/SHAPE-q8_0.gguf, gguf/SHAPE-q4_0.gguf
                    llama-quantize of the f32 file (llama.cpp's defaults: for q4_0 the
                    output matrix stays in Q6_K);
  gguf/SHAPE-q4_0-pure.gguf
                    llama-quantize --pure: every matrix in Q4_0, like attn's q4 folder.

The shapes (both about GPT-2 small's 124M parameters):

  gpt2    GPT2LMHeadModel, 12 layers x 768, 12 heads, vocabulary 50257, tied head.
  llama   LlamaForCausalLM, 12 layers x 768, 12 query / 4 key-value heads, SwiGLU
          intermediate 2048, vocabulary 32000, untied head (124.6M parameters).
  qwen2   Qwen2ForCausalLM of the same shape: biases on the query, key and value
          projections, tied head.
  mistral MistralForCausalLM of the same shape, a sliding window of 1024 (longer than
          the benchmark's 256 positions, as Mistral's 4096 is at its usual lengths).

llama.cpp's converter recognises a BPE tokenizer by hashing how it splits a test string;
a tokenizer trained here is unknown to it, so this script tells it the pre-tokenizer is
GPT-2's (which is what the trained tokenizer's byte-level pre-tokenizer is). Vocabulary
entries beyond the trained tokenizer's become llama.cpp's [PAD] tokens.

Needs torch, transformers, tokenizers and sentencepiece (scripts/python_env.sh; the
converter imports sentencepiece for Llama folders) and llama.cpp's gguf-py
(found beside convert_hf_to_gguf.py). Exits 1 when a step fails.
"""

import argparse
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, **kw):
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def train_tokenizer(vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    books = sorted(glob.glob(os.path.join(SHARED, "gutenberg", "*.txt")))
    if not books:
        raise SystemExit(f"no books under {SHARED}/gutenberg")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    def lines():
        for path in books:
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from f

    tok.train_from_iterator(lines(), trainer)
    return tok


def write_hf(shape, out, seed, tok):
    import torch
    import transformers

    torch.manual_seed(seed)
    if shape == "gpt2":
        cfg = transformers.GPT2Config(
            n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024, n_ctx=1024,
            bos_token_id=0, eos_token_id=0,
        )
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        # Llama, and the same shape as Qwen2 (q/k/v biases, tied head, Qwen's base) and
        # as Mistral (a sliding window longer than the benchmark's context).
        common = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                      num_key_value_heads=4, intermediate_size=2048, vocab_size=32000,
                      max_position_embeddings=2048, bos_token_id=0, eos_token_id=0)
        if shape == "qwen2":
            cfg = transformers.Qwen2Config(tie_word_embeddings=True, rope_theta=1000000.0, **common)
            model = transformers.Qwen2ForCausalLM(cfg)
            with torch.no_grad():  # transformers draws zero biases: give them values
                for name, p in model.named_parameters():
                    if name.endswith("bias"):
                        p.normal_(0.0, 0.02)
        elif shape == "mistral":
            cfg = transformers.MistralConfig(tie_word_embeddings=False, rope_theta=10000.0,
                                             sliding_window=1024, **common)
            model = transformers.MistralForCausalLM(cfg)
        else:
            cfg = transformers.LlamaConfig(tie_word_embeddings=False, rope_theta=10000.0, **common)
            model = transformers.LlamaForCausalLM(cfg)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1024,
                   "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}, f)
    n = sum(p.numel() for p in model.parameters())
    log(f"{shape}: {n / 1e6:.1f}M parameters -> {out}")


CONVERT = r"""
import sys
sys.path.insert(0, {gguf_py!r})
sys.path.insert(0, {llama_cpp!r})
sys.argv = ["convert_hf_to_gguf.py"] + {args!r}
import runpy
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
runpy.run_path({script!r}, run_name="__main__")
"""


def convert(llama_cpp, folder, outtype, outfile):
    script = os.path.join(llama_cpp, "convert_hf_to_gguf.py")
    code = CONVERT.format(gguf_py=os.path.join(llama_cpp, "gguf-py"), llama_cpp=llama_cpp,
                          args=[folder, "--outtype", outtype, "--outfile", outfile],
                          script=script)
    run([sys.executable, "-c", code])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--llama-cpp", required=True, help="llama.cpp's source folder (built)")
    p.add_argument("--quantize", default=None,
                   help="llama-quantize (default: LLAMA_CPP/build*/bin/llama-quantize)")
    p.add_argument("--attn", required=True)
    p.add_argument("--shapes", nargs="+", default=["gpt2", "llama"],
                   choices=["gpt2", "llama", "qwen2", "mistral"])
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    quantize = a.quantize or (sorted(glob.glob(os.path.join(a.llama_cpp, "build*", "bin",
                                                            "llama-quantize"))) or [None])[0]
    if not quantize:
        raise SystemExit("llama-quantize not found; pass --quantize")
    gguf = os.path.join(a.out, "gguf")
    os.makedirs(gguf, exist_ok=True)
    tok = train_tokenizer(32000)
    for shape in a.shapes:
        folder = os.path.join(a.out, shape)
        write_hf(shape, folder, a.seed, tok)
        for dtype in ("f16", "q8", "q4"):
            run([a.attn, "quantize", "--model", folder, "--out", f"{folder}-{dtype}",
                 "--dtype", dtype, "--overwrite"])
        for outtype in ("f32", "f16"):
            convert(a.llama_cpp, folder, outtype, os.path.join(gguf, f"{shape}-{outtype}.gguf"))
        f32 = os.path.join(gguf, f"{shape}-f32.gguf")
        run([quantize, f32, os.path.join(gguf, f"{shape}-q8_0.gguf"), "q8_0"])
        run([quantize, f32, os.path.join(gguf, f"{shape}-q4_0.gguf"), "q4_0"])
        run([quantize, "--pure", f32, os.path.join(gguf, f"{shape}-q4_0-pure.gguf"), "q4_0"])


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        log(f"failed: {e}")
        sys.exit(1)
