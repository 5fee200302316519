#!/usr/bin/env python3
"""A T5-style SentencePiece/Unigram tokenizer.json and its encodings, for attn's tests.

Builds the pipeline transformers' T5TokenizerFast uses (NFKC normalizer, whitespace runs
collapsed, Metaspace pre-tokenizer and decoder with the "always" prepend scheme, a
Unigram model, "$A </s>" post-processing, <pad>=0 </s>=1 <unk>=2 and the sentinels
<extra_id_99> .. <extra_id_0> as the last ids), trains the Unigram model on synthetic
text (a fixed seed; no corpus copied), and records the `tokenizers` library's
encodings of test strings with and without the special tokens, and its decodings.

    $(scripts/python_env.sh) scripts/make_t5_tokenizer_fixture.py

Writes crates/attn/tests/fixtures/t5-tokenizer/{tokenizer.json,cases.json}.
"""
import json
import random
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

OUT = Path(__file__).resolve().parent.parent / "crates" / "attn" / "tests" / "fixtures" / "t5-tokenizer"
rng = random.Random(5)
stems = ["summar", "translat", "poem", "moon", "river", "autumn", "wind", "friend", "night", "rain",
         "cloud", "mountain", "quick", "brown", "fox", "jump", "lazy", "dog", "attent", "transform"]
ends = ["", "s", "ed", "ing", "ion", "ly", "er", "ize", "ation"]
lines = []
for _ in range(4000):
    n = rng.randint(3, 14)
    words = [rng.choice(stems) + rng.choice(ends) for _ in range(n)]
    if rng.random() < 0.3:
        words.insert(rng.randint(0, n), str(rng.randint(0, 999)))
    if rng.random() < 0.2:
        words.append(rng.choice(["café", "naïve", "日本", "über", "Ωmega"]))
    lines.append(" ".join(words) + rng.choice([".", "!", "?", ",", ""]))

tok = Tokenizer(models.Unigram())
tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
specials = ["<pad>", "</s>", "<unk>"]
trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
tok.train_from_iterator(lines, trainer)
tok.add_special_tokens([f"<extra_id_{i}>" for i in range(99, -1, -1)])
eos = tok.token_to_id("</s>")
tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                   special_tokens=[("</s>", eos)])
assert [tok.token_to_id(t) for t in specials] == [0, 1, 2]

tests = ["The quick brown fox jumps over the lazy dog.", "summarization of poems", "",
         "  spaced   out  text ", "Café naïve über Ωmega 日本 ①②", "unknown ✈ symbols ☃",
         "translation <extra_id_0> and <extra_id_1> sentinels", "12345 numbers 0.5",
         "moonlighting riverside autumnal friendships", "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ"] + lines[:40]
cases = []
for t in tests:
    plain = tok.encode(t, add_special_tokens=False).ids
    cases.append({"text": t, "ids": plain, "ids_with_specials": tok.encode(t).ids,
                  "decoded": tok.decode(plain, skip_special_tokens=False), "decoded_skip_special": tok.decode(plain, skip_special_tokens=True)})
OUT.mkdir(parents=True, exist_ok=True)
tok.save(str(OUT / "tokenizer.json"))
with open(OUT / "cases.json", "w", encoding="utf-8") as f:
    json.dump({"tokenizers": tokenizers.__version__, "vocab_size": tok.get_vocab_size(), "cases": cases}, f,
              ensure_ascii=False, indent=0)
print(f"{len(cases)} cases, vocabulary {tok.get_vocab_size()} -> {OUT}")
