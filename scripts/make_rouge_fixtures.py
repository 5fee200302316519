#!/usr/bin/env python3
"""Generate ROUGE reference fixtures for `attn` with Google's rouge-score.

Run from the repository root:

    $(scripts/python_env.sh) scripts/make_rouge_fixtures.py

Writes ``crates/attn/tests/fixtures/rouge/cases.json``:

    {"rouge_score_version": str, "nltk_version": str,
     "fields": ["rouge1.precision", ..., "rougeLsum.fmeasure"],   # 12 names
     "cases": [{"name": str,
                "tokenize": "default" | "zh-char",
                "newline_token": null | str,
                "hyps": [str], "refs": [str],                     # parallel lines
                "scores": {"nostem": {"lines": [[12 floats], ...], "mean": [12 floats]},
                           "stem":   {...}}}, ...],
     "stems": [[word, PorterStemmer().stem(word)], ...],
     "lower_ascii": [[code point, str], ...]}

Every text is synthetic: made below from word lists, templates and random choices
(``random.Random`` with fixed seeds), so the file is the same on every run.

Per line, the 12 floats are precision, recall and F-measure of rouge1, rouge2, rougeL
and rougeLsum (the order of ``fields``) from

    RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=stem)
        .score(target=ref, prediction=hyp)

after replacing ``newline_token`` (when not null) by "\\n" in both texts, as
`attn eval rouge --newline-token` does.  ``mean`` is ``np.mean`` over the lines of
each of the 12 values (what users of rouge-score report; not its BootstrapAggregator).
Floats are written by ``json`` with Python's ``repr``: full double precision.

zh-char cases: rouge-score has no such tokenizer, so the reference is rouge-score on a
transformed text.  Every character of the ranges attn's `zh-char` tokenizer treats as a
token of its own (``is_zh_char`` below, the same ranges as
``crates/attn/src/metrics/rouge.rs``) is replaced by `` 0NNNNNNN `` (a space, the
digit 0 and the code point in 7 decimal digits, a space); everything else is left for
rouge-score's own tokenizer.  Such a code is one alphanumeric token that rouge-score
keeps as it is (its Porter stemmer never changes a string of digits) and that cannot
meet a word of the texts (the script checks that no text holds a number of that form),
so rouge-score then does all of the tokenizing of the rest, the stemming, the n-gram
and LCS maths on exactly the token sequence zh-char should give.

``stems``: words (stem × suffix combinations, NLTK's irregular forms, short words,
'y' patterns, digits, capitals, random letter strings, a few non-ASCII words) with
NLTK's ``PorterStemmer()`` (mode NLTK_EXTENSIONS, the one rouge-score uses).

``lower_ascii``: every code point other than A-Z, a-z and 0-9 whose ``str.lower()``
holds an ASCII letter or digit, with that lowercase string: the characters whose
lowercasing rouge-score's tokenizer can turn into word characters.
"""

import json
import os
import random
import re
import sys
from importlib import metadata

import nltk
import numpy as np
from nltk.stem import porter
from rouge_score import rouge_scorer

OUT_PATH = os.path.join("crates", "attn", "tests", "fixtures", "rouge", "cases.json")
TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
FIELDS = [f"{t}.{k}" for t in TYPES for k in ("precision", "recall", "fmeasure")]

SCORERS = {
    False: rouge_scorer.RougeScorer(TYPES, use_stemmer=False),
    True: rouge_scorer.RougeScorer(TYPES, use_stemmer=True),
}

# --------------------------------------------------------------------------
# zh-char reference transformation
# --------------------------------------------------------------------------

# Keep in sync with `is_zh_char` in crates/attn/src/metrics/rouge.rs.
ZH_RANGES = [
    (0x3040, 0x309F),    # Hiragana
    (0x30A0, 0x30FF),    # Katakana
    (0x31F0, 0x31FF),    # Katakana Phonetic Extensions
    (0x3400, 0x4DBF),    # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),    # CJK Unified Ideographs
    (0xAC00, 0xD7A3),    # Hangul Syllables
    (0xF900, 0xFAFF),    # CJK Compatibility Ideographs
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2B73F),  # Extension C
    (0x2B740, 0x2B81F),  # Extension D
    (0x2B820, 0x2CEAF),  # Extension E
    (0x2CEB0, 0x2EBEF),  # Extension F
    (0x2EBF0, 0x2EE5F),  # Extension I
    (0x2F800, 0x2FA1F),  # CJK Compatibility Ideographs Supplement
    (0x30000, 0x3134F),  # Extension G
    (0x31350, 0x323AF),  # Extension H
]


def is_zh_char(ch):
    c = ord(ch)
    return any(lo <= c <= hi for lo, hi in ZH_RANGES)


CODE_RE = re.compile(r"(?<![a-z0-9])0[0-9]{7}(?![a-z0-9])")


def zh_transform(text):
    return "".join(f" 0{ord(ch):07d} " if is_zh_char(ch) else ch for ch in text)


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------

def line_scores(hyp, ref, stem, tokenize, newline_token):
    if newline_token is not None:
        hyp = hyp.replace(newline_token, "\n")
        ref = ref.replace(newline_token, "\n")
    if tokenize == "zh-char":
        assert not CODE_RE.search(hyp.lower()) and not CODE_RE.search(ref.lower())
        hyp, ref = zh_transform(hyp), zh_transform(ref)
    s = SCORERS[stem].score(target=ref, prediction=hyp)
    out = []
    for t in TYPES:
        out += [float(s[t].precision), float(s[t].recall), float(s[t].fmeasure)]
    return out


CASES = []
NAMES = set()
PAIRS = [0]


def add(name, hyps, refs, tokenize="default", newline_token=None):
    assert name not in NAMES, name
    NAMES.add(name)
    assert len(hyps) == len(refs) and hyps, name
    scores = {}
    for key, stem in (("nostem", False), ("stem", True)):
        lines = [line_scores(h, r, stem, tokenize, newline_token)
                 for h, r in zip(hyps, refs)]
        mean = [float(np.mean([l[k] for l in lines])) for k in range(len(FIELDS))]
        scores[key] = {"lines": lines, "mean": mean}
    CASES.append({"name": name, "tokenize": tokenize, "newline_token": newline_token,
                  "hyps": list(hyps), "refs": list(refs), "scores": scores})
    PAIRS[0] += len(hyps)


# --------------------------------------------------------------------------
# Word lists (written for this script)
# --------------------------------------------------------------------------

COMMON = """the a an of to in on at by for with from and or but not no is are was were be
been being has have had do does did will would can could shall should may might must
i you he she it we they me him her us them my your his its our their this that these
those there here when where why how what which who whom whose all any some each every
both few more most other such only own same so than too very just now then again once
cat dog bird fish house car road city river tree book paper table chair window door
day night week year time man woman child people world country state school water
fire light sound music word story idea plan report market price game team player
red blue green small large old new good bad long short high low first last next
run walk talk read write see look find give take make go come say tell ask think
know want need feel seem leave call keep let begin show hear play move live believe""".split()

STEMS = """relat condit valen hesit digit conform radic differ vil analog vietnam predic
oper feud decis hope call form sensit sensib triplic electr good reviv allow infer
airlin gyroscop adjust defens irrit replac depend adopt homolog commun activ angular
effect bowdler prob rate ceas control roll agre plaster bled motor sing conflat troubl
siz hop tan fall hiss fizz fail fil happ sky enjoy nation ration tradit gener compon
sens organ real final person natur cultur norm capit special author civil formal
judg manag develop govern achiev arrang encourag measur employ retir settl amus
connect direct protect select construct instruct corrupt interrupt except concept
possib respons comprehens access poss convert admiss expans tens pass press mass
class kiss boss dress glass hero potato tomato echo veto studi carri hurri marri
worri copi appl cherr ladi babi citi countri parti berr industr agenc emerg depend
fluen sci provid confid resid presid refer prefer differ confer transfer occur
recur concur deter permit commit submit admit omit regret travel cancel model label
quarrel fuel signal total equal medal metal pedal rival vital fatal""".split()

SUFFIXES = """ational tional enci anci izer bli alli entli eli ousli ization ation ator
alism iveness fulness ousness aliti iviti biliti logi icate ative alize iciti ical ful
ness al ance ence er ic able ible ant ement ment ent ion ou ism ate iti ous ive ize
sses ies ss s eed ed ing y e ll ied ings ly ity ities ations ers ingly edly fulli ional
ances ences ants ents ions isms ates ives izes izers ators alizes alized alizing""".split()

WORDS_EXTRA = """relational conditional rational valenci hesitanci digitizer conformabli
radicalli differentli vileli analogousli vietnamization predication operator feudalism
decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate
formative formalize electriciti electrical hopeful goodness revival allowance inference
airliner gyroscopic adjustable defensible irritant replacement adjustment dependent
adoption homologou communism activate angulariti homologous effective bowdlerize
probate rate cease controll roll caresses ponies ties caress cats feed agreed plastered
bled motoring sing conflated troubled sized hopping tanned falling hissing fizzed
failing filing happy sky skies dying lying tying news innings inning outings outing
cannings canning howe proceed exceed succeed flies dies spied died spy fly try enjoy
enjoyment generalizations oscillators geology theology archaeology philology
analogies anthology apologies biology ecology mythology trilogy eulogies
generously generalli dramatically academically fully carefulli hopefulli
syzygy toy toys yyyy yyy yy y boy buy bye eye eyes yes yay yearly yellow
agreement settlement engagement statement element cement moment ment
agencies emergencies frequencies tendencies deficiencies abundancies
abilities possibilities responsibilities activities relativities
organization organizational organizations civilization realization
nationalization rationalization generalization computerization
happiness happily happier happiest business businesses busily
running runner runs ran swimming swimmer swims biking biker hiking
sses ies ss s eed ed ing y e ll ion al er ic ate ive ize ous ism ant ent
ational tional ization ation ator alism iveness fulness ousness aliti iviti biliti
abc abcd abcde aaa aaaa bbbb zzzz sss ssss iess ieed eeds eed feed need seed
abc1ing 12ies 3ds x4e2d 2ed 10ing 99ss covid19 mp3s h2o b2b ies1 1s 11 1111
aed ied oed ued yed sied bied tied lied pied vied died
""".split()

SHORT = """a i o u y s t ab be by do go he if in is it me my no of oh ok on or so to up us we
as at an am ax ex ox id ed es ys ly ss ll ie""".split()

UNICODE_WORDS = ["café", "naïve", "naïveté", "Straße", "résumé", "Ünïcödé", "crème",
                 "brûlée", "Ελληνικά", "ΟΔΟΣ", "русский", "Ёлка", "ǅemal", "ﬁnance",
                 "ＡＢＣ", "ａｂｃ", "１２３", "١٢٣", "x²", "½", "Ⅻ", "ⓐⓑ", "Å", "Ω",
                 "İstanbul", "DİYARBAKIR", "ıi", "\u212aelvin", "5\u212a", "\u212a",
                 "İ", "ﬀ", "ŉ", "ǰ", "ß"]

CJK_SAMPLE = "我们今天去公园散步天气很好大家都很高兴中文测试数据模型评估摘要生成系统" \
             "人工智能自然语言处理机器学习深度网络训练推理速度准确率召回率"
KANA = "ひらがなカタカナテストですーヴ・ㇰㇱ"
HANGUL = "한국어텍스트평가"
EXT_CHARS = ["\U00020000", "\U0002A6D6", "\U0002A700", "\U0002B740", "\U0002B820",
             "\U0002CEB0", "\U0002EBF0", "\U00030000", "\U00031350", "\U0002F800",
             "\uF900", "\uFA0E", "\u3400", "\u4DB5", "\u9FFF", "\u4E00"]
NOT_ZH = ["\u3002", "\uFF0C", "\uFF01", "\u300C", "\u300D", "\u3001", "\u2E80",
          "\u2F00", "\u3005", "\u3007", "\uFF66", "\u1100", "\u3131", "\uD7B0",
          "\u309F", "\u30A0"]  # the last two are at the edges of the ranges (in)

PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + ["...", "--", "—", "–", "“", "”", "«", "»", "¿", "¡", "…"]


def stem_words(rng):
    """All stem x suffix combinations and the extra words, plus random strings."""
    words = []
    for s in STEMS:
        for suf in SUFFIXES:
            words.append(s + suf)
    words += WORDS_EXTRA + SHORT + COMMON
    letters = "abcdefghijklmnopqrstuvwxyz"
    weights = [8 if c in "aeiouy" else 3 if c in "slnrtdgcbmz" else 1 for c in letters]
    for _ in range(700):
        n = rng.randint(1, 12)
        w = "".join(rng.choices(letters, weights, k=n))
        if rng.random() < 0.5:
            w += rng.choice(SUFFIXES)
        words.append(w)
    for _ in range(100):
        w = rng.choice(STEMS) + rng.choice(SUFFIXES)
        words.append(w.capitalize() if rng.random() < 0.5 else w.upper())
    for _ in range(60):
        words.append(rng.choice(STEMS) + str(rng.randint(0, 99)) + rng.choice(SUFFIXES))
    words += UNICODE_WORDS
    out, seen = [], set()
    for w in words:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


# --------------------------------------------------------------------------
# Text generators
# --------------------------------------------------------------------------

def vocab_word(rng, stemmy=0.3):
    r = rng.random()
    if r < stemmy:
        return rng.choice(STEMS) + rng.choice(SUFFIXES)
    if r < stemmy + 0.05:
        return rng.choice(WORDS_EXTRA)
    if r < stemmy + 0.08:
        return str(rng.randint(0, 2000))
    return rng.choice(COMMON)


def sentence(rng, n, stemmy=0.3, punct=0.1, caps=0.1):
    out = []
    for _ in range(n):
        w = vocab_word(rng, stemmy)
        if rng.random() < caps:
            w = w.capitalize() if rng.random() < 0.7 else w.upper()
        out.append(w)
        if rng.random() < punct:
            out.append(rng.choice(PUNCT))
    joiner = lambda a, b: a + ("" if rng.random() < 0.05 else " ") + b
    s = out[0] if out else ""
    for w in out[1:]:
        s = joiner(s, w)
    return s


def variant(rng, words, vocab=None):
    """Edit a word list: drops, swaps, substitutions, duplicates, inflections."""
    vocab = vocab or (lambda: vocab_word(rng))
    words = list(words)
    out = []
    for w in words:
        r = rng.random()
        if r < 0.12:
            continue
        if r < 0.22:
            out.append(vocab())
        elif r < 0.28:
            out += [w, w]
        elif r < 0.38 and w.isalpha():
            out.append(w + rng.choice(["s", "ed", "ing", "ly", "ness", "ation", "er"]))
        else:
            out.append(w)
        if rng.random() < 0.05:
            out.append(vocab())
    for _ in range(int(len(out) * 0.1)):
        if len(out) > 1:
            i = rng.randrange(len(out) - 1)
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def pair(rng, lo, hi, **kw):
    h = sentence(rng, rng.randint(lo, hi), **kw)
    r = " ".join(variant(rng, h.split()))
    if rng.random() < 0.5:
        h, r = r, h
    return h, r


def multi(rng, k_lo, k_hi, lo, hi, sep="\n"):
    hs, rs = [], []
    for _ in range(rng.randint(k_lo, k_hi)):
        h, r = pair(rng, lo, hi)
        hs.append(h)
        rs.append(r)
    rng.shuffle(rs) if rng.random() < 0.3 else None
    if rng.random() < 0.3:
        rs = rs[: max(1, len(rs) - 1)]
    return sep.join(hs), sep.join(rs)


def zh_text(rng, n, mix=0.2):
    out = []
    pool = CJK_SAMPLE + KANA + HANGUL
    for _ in range(n):
        r = rng.random()
        if r < mix:
            out.append(" " + rng.choice(COMMON + STEMS) + " ")
        elif r < mix + 0.05:
            out.append(rng.choice(EXT_CHARS))
        elif r < mix + 0.1:
            out.append(rng.choice(NOT_ZH))
        elif r < mix + 0.13:
            out.append(str(rng.randint(0, 99)))
        else:
            out.append(rng.choice(pool))
    return "".join(out)


def zh_variant(rng, text):
    chars = list(text)
    out = []
    for c in chars:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.2:
            out.append(rng.choice(CJK_SAMPLE))
        else:
            out.append(c)
    return "".join(out)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def build():
    rng = random.Random(20240611)

    # Hand-written edge cases.
    edge = [
        ("", ""), ("", "the cat sat"), ("the cat sat", ""), (" ", " "), ("\t", "  "),
        ("...", "!!!"), ("the cat", "..."), ("--- ???", "the cat"), ("a", "a"), ("a", "b"),
        ("The cat sat on the mat.", "The cat sat on the mat."),
        ("the the the the", "the"), ("the", "the the the the"),
        ("the cat the cat the cat", "cat the cat the"),
        ("a b c d e f g", "g f e d c b a"), ("a b a b a b", "b a b a"),
        ("1 2 3 4 5", "1 2 3 4 5 6"), ("3.14159 2,718 1e10", "3 14159 2 718 1e10"),
        ("covid19 h2o mp3s b2b", "COVID19 H2O MP3 B2B"), ("abc123def 456ghi", "abc123def 456 ghi"),
        ("don't won't can't", "do n't wo n't ca n't"), ("e-mail e.mail email", "e mail email"),
        ("U.S.A. u.s.a", "usa U S A"), ("x", ""), ("", "x"), ("\n", "\n"), ("\n\n", "the"),
        ("running runs ran runner", "run running runs"),
        ("generalizations generously", "generalization generous"),
        ("skies dying lying tying news innings", "sky die lie tie news inning"),
        ("outing canning howe proceed exceed succeed", "outings cannings howe proceeds exceeded succeeding"),
        ("flies dies spied died ties", "fly die spy die tie"),
        ("happy happiness happily", "happi happy"),
        ("relational conditional rational", "relate condition rational"),
        ("The quick brown fox jumps over the lazy dog",
         "The quick brown dog jumps on the log."),
        ("a\tb\u00a0c\u2003d\re", "a b c d e"), ("café naïve résumé", "cafe naive resume"),
        ("\u212aelvin 5\u212a", "kelvin 5k"), ("\u212a", "k"), ("İstanbul", "i stanbul"),
        ("DİYARBAKIR İzmir", "diyarbakir izmir"), ("İ", "i"), ("ıi Iı", "ii"),
        ("ΟΔΟΣ Ελληνικά", "οδος"), ("русский текст", "russkiy tekst"),
        ("中文测试", "中文测试"), ("中文 test 测试", "test"), ("ＡＢＣ ａｂｃ", "abc"),
        ("１２３ ١٢٣ 123", "123"), ("x² ½ Ⅻ ⓐⓑ", "x 2"), ("ﬁnance ﬀ", "finance ff"),
        ("ǅemal Straße", "dzemal strasse"), ("🙂 emoji 🙂 test", "emoji test"),
        ("word" * 30, "word" * 30), ("yyyy yyyyy syzygy", "yyyy syzygy"),
        ("sses ies ss s eed ed ing", "ss i ss s eed ed ing"),
    ]
    add("edge", [h for h, _ in edge], [r for _, r in edge])

    # Ordinary sentences with edits, short to long.
    for k in range(8):
        hs, rs = [], []
        for _ in range(100):
            h, r = pair(rng, 1 + k, 8 + 5 * k)
            hs.append(h)
            rs.append(r)
        add(f"sentences_{k}", hs, rs)

    # Empty / punctuation-only lines mixed in.
    hs, rs = [], []
    for _ in range(150):
        h, r = pair(rng, 1, 12)
        x = rng.random()
        if x < 0.15:
            h = ""
        elif x < 0.3:
            r = ""
        elif x < 0.4:
            h = r = ""
        elif x < 0.5:
            h = " ".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 5)))
        elif x < 0.6:
            r = "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 5)))
        elif x < 0.65:
            h = " \t "
        hs.append(h)
        rs.append(r)
    add("empty_and_punct", hs, rs)

    # Stemmer-heavy lines: morphological variants of the same stems.
    hs, rs = [], []
    for _ in range(300):
        n = rng.randint(2, 14)
        stems = [rng.choice(STEMS) for _ in range(n)]
        hs.append(" ".join(s + rng.choice(SUFFIXES) for s in stems))
        rs.append(" ".join(s + rng.choice(SUFFIXES) for s in stems if rng.random() < 0.85))
    add("stemmer", hs, rs)
    hs, rs = [], []
    for _ in range(100):
        hs.append(" ".join(rng.choice(WORDS_EXTRA) for _ in range(rng.randint(1, 10))))
        rs.append(" ".join(rng.choice(WORDS_EXTRA) for _ in range(rng.randint(1, 10))))
    add("stemmer_words", hs, rs)

    # Repeated words (clipped counts, LCS with many ties).
    hs, rs = [], []
    small = ["a", "b", "c", "the", "cat", "cats"]
    for _ in range(150):
        hs.append(" ".join(rng.choice(small) for _ in range(rng.randint(0, 20))))
        rs.append(" ".join(rng.choice(small) for _ in range(rng.randint(0, 20))))
    add("repeats", hs, rs)

    # Numbers and mixed alphanumerics.
    hs, rs = [], []
    for _ in range(100):
        def tok():
            r = rng.random()
            if r < 0.3:
                return str(rng.randint(0, 10 ** rng.randint(1, 6)))
            if r < 0.5:
                return f"{rng.randint(0, 99)}.{rng.randint(0, 99)}"
            if r < 0.7:
                return rng.choice(STEMS) + str(rng.randint(0, 9)) + rng.choice(["", "s", "ing", "ed"])
            if r < 0.8:
                return f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(1990, 2030)}"
            return vocab_word(rng)
        h = [tok() for _ in range(rng.randint(1, 12))]
        hs.append(" ".join(h))
        rs.append(" ".join(variant(rng, h, tok)))
    add("numbers", hs, rs)

    # Long lines.
    hs, rs = [], []
    for _ in range(30):
        h, r = pair(rng, 80, 300)
        hs.append(h)
        rs.append(r)
    add("long", hs, rs)

    # Multi-sentence lines ("\n" inside) for rougeLsum, with empty and blank sentences.
    hs, rs = [], []
    for _ in range(200):
        h, r = multi(rng, 1, 6, 1, 15)
        x = rng.random()
        if x < 0.1:
            h = "\n" + h + "\n"
        elif x < 0.2:
            r = r.replace("\n", "\n\n", 1)
        elif x < 0.3:
            h = h.replace("\n", "\n \n", 1)
        elif x < 0.35:
            r = "\n".join(r.split())  # one word per sentence
        elif x < 0.4:
            h = h + "\n..."
        hs.append(h)
        rs.append(r)
    add("multisentence", hs, rs)

    # A newline token (as in CNN/DailyMail-style data) instead of real newlines.
    for k, tok in enumerate(("<n>", " <n> ", "|||")):
        hs, rs = [], []
        for _ in range(60):
            sep = tok if rng.random() < 0.8 else tok.strip()
            h, r = multi(rng, 1, 5, 1, 12, sep=sep)
            if rng.random() < 0.1:
                h = tok + h
            hs.append(h)
            rs.append(r)
        add(f"newline_token_{k}", hs, rs, newline_token=tok)
    # The same texts scored without substitution: "<n>" is then the word "n".
    hs, rs = [], []
    for _ in range(40):
        h, r = multi(rng, 1, 4, 1, 10, sep=" <n> ")
        hs.append(h)
        rs.append(r)
    add("newline_token_unused", hs, rs)

    # Unicode: accented, other scripts, CJK, Kelvin sign, Turkish dotted I, etc.
    hs, rs = [], []
    for _ in range(150):
        h = sentence(rng, rng.randint(1, 12))
        words = h.split()
        for _ in range(rng.randint(1, 4)):
            words.insert(rng.randint(0, len(words)), rng.choice(UNICODE_WORDS + list(CJK_SAMPLE)))
        h = " ".join(words)
        r = " ".join(variant(rng, words, lambda: rng.choice(UNICODE_WORDS + COMMON)))
        if rng.random() < 0.3:
            r = r.upper()
        hs.append(h)
        rs.append(r)
    add("unicode", hs, rs)

    # One large corpus (means over many lines).
    hs, rs = [], []
    for _ in range(600):
        h, r = pair(rng, 0, 25)
        hs.append(h)
        rs.append(r)
    add("corpus_600", hs, rs)

    # zh-char: CJK, kana, Hangul, extension-plane ideographs, mixed ASCII.
    hs, rs = [], []
    for _ in range(200):
        h = zh_text(rng, rng.randint(0, 40))
        r = zh_variant(rng, h)
        if rng.random() < 0.5:
            h, r = r, h
        hs.append(h)
        rs.append(r)
    add("zh_char", hs, rs, tokenize="zh-char")
    hs, rs = [], []
    for _ in range(60):
        k = rng.randint(1, 4)
        h = "\n".join(zh_text(rng, rng.randint(1, 20)) for _ in range(k))
        r = "\n".join(zh_variant(rng, s) for s in h.split("\n"))
        hs.append(h)
        rs.append(r)
    add("zh_char_multisentence", hs, rs, tokenize="zh-char")
    hs, rs = [], []
    for _ in range(40):
        h = "<n>".join(zh_text(rng, rng.randint(1, 15)) for _ in range(rng.randint(1, 3)))
        r = "<n>".join(zh_variant(rng, s) for s in h.split("<n>"))
        hs.append(h)
        rs.append(r)
    add("zh_char_newline_token", hs, rs, tokenize="zh-char", newline_token="<n>")
    # zh-char on ASCII and other non-CJK text must equal the default tokenizer.
    hs, rs = [], []
    for _ in range(100):
        h, r = pair(rng, 0, 20)
        hs.append(h)
        rs.append(r)
    hs += [h for h, _ in edge]
    rs += [r for _, r in edge]
    add("zh_char_ascii", hs, rs, tokenize="zh-char")

    stemmer = porter.PorterStemmer()
    words = stem_words(random.Random(7))
    stems = [[w, stemmer.stem(w)] for w in words]

    lower_ascii = []
    alnum = re.compile("[a-z0-9]")
    for c in range(0x110000):
        if 0xD800 <= c <= 0xDFFF or chr(c).isascii() and chr(c).isalnum():
            continue
        low = chr(c).lower()
        if alnum.search(low):
            lower_ascii.append([c, low])

    return {
        "rouge_score_version": metadata.version("rouge-score"),
        "nltk_version": nltk.__version__,
        "fields": FIELDS,
        "cases": CASES,
        "stems": stems,
        "lower_ascii": lower_ascii,
    }


def main():
    data = build()
    os.makedirs(os.path.dirname(OUT_PATH), exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    size = os.path.getsize(OUT_PATH)
    print(f"{OUT_PATH}: {len(CASES)} cases, {PAIRS[0]} pairs, {len(data['stems'])} words, "
          f"{size / 1e6:.2f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
