#!/usr/bin/env python3
"""Generate BLEU / chrF reference fixtures for `attn` using sacreBLEU 2.x.

Run from the repository root:

    $(scripts/python_env.sh) scripts/make_bleu_fixtures.py

Writes ``crates/attn/tests/fixtures/bleu/cases.json``: a JSON list of cases

    {"name": str,
     "metric": "bleu" | "chrf" | "sentence_bleu" | "sentence_chrf",
     "options": {...},              # every constructor option, spelled out
     "hyps": [str],
     "refs": [[str], ...],          # reference *streams*, each parallel to hyps
     "expected": {...}}

``expected`` by metric:

* ``bleu``: ``{"score", "signature", "precisions" (4 floats), "bp",
  "sys_len", "ref_len", "counts", "totals"}`` from
  ``BLEU(**options).corpus_score(hyps, refs)``.  Note that for
  ``smooth_method="add-k"`` sacreBLEU adds k to ``counts``/``totals`` of
  orders 2..4 in place, so the reported counts/totals include the +k
  (unless no n-gram matched at all, in which case it exits early).
* ``chrf``: ``{"score", "signature"}`` from
  ``CHRF(**options).corpus_score(hyps, refs)``.
* ``sentence_bleu``: ``{"signature", "sentences": [{"score", "precisions",
  "bp", "sys_len", "ref_len", "counts", "totals"}, ...]}``, one entry per
  hypothesis i, from ``BLEU(**options).sentence_score(hyps[i],
  [stream[i] for stream in refs])`` (options have ``effective_order=True``).
* ``sentence_chrf``: ``{"signature", "scores": [float, ...]}`` from
  ``CHRF(**options).sentence_score(hyps[i], [stream[i] for stream in refs])``.

The signature is ``str(metric.get_signature())`` taken after scoring (the
number of references is only known then).  Floats are written with Python's
``repr`` (shortest round-trip form), i.e. at full double precision.
"""

import json
import math
import os

import sacrebleu
from sacrebleu.metrics import BLEU, CHRF

OUT_PATH = os.path.join("crates", "attn", "tests", "fixtures", "bleu", "cases.json")


# --------------------------------------------------------------------------
# Option helpers: every option is written out explicitly in the fixture.
# --------------------------------------------------------------------------

def bleu_opts(tokenize="13a", lowercase=False, smooth_method="exp",
              smooth_value=None, effective_order=False, max_ngram_order=4):
    return {
        "tokenize": tokenize,
        "lowercase": lowercase,
        "smooth_method": smooth_method,
        "smooth_value": smooth_value,
        "effective_order": effective_order,
        "max_ngram_order": max_ngram_order,
    }


def chrf_opts(char_order=6, word_order=0, beta=2, lowercase=False,
              whitespace=False, eps_smoothing=False):
    return {
        "char_order": char_order,
        "word_order": word_order,
        "beta": beta,
        "lowercase": lowercase,
        "whitespace": whitespace,
        "eps_smoothing": eps_smoothing,
    }


def num(x):
    """Plain Python number (int stays int, everything else float)."""
    if isinstance(x, bool):
        raise TypeError("unexpected bool")
    if isinstance(x, int):
        return x
    x = float(x)
    assert math.isfinite(x), x
    return x


def bleu_result(score, with_counts=True):
    d = {
        "score": num(score.score),
        "precisions": [num(p) for p in score.precisions],
        "bp": num(score.bp),
        "sys_len": int(score.sys_len),
        "ref_len": int(score.ref_len),
    }
    if with_counts:
        d["counts"] = [num(c) for c in score.counts]
        d["totals"] = [num(t) for t in score.totals]
    return d


# --------------------------------------------------------------------------
# Case builders
# --------------------------------------------------------------------------

CASES = []
NAMES = set()


def _check(name, hyps, refs):
    assert name not in NAMES, f"duplicate case name {name}"
    NAMES.add(name)
    assert isinstance(hyps, list) and hyps
    assert isinstance(refs, list) and refs
    for stream in refs:
        assert len(stream) == len(hyps), (name, len(stream), len(hyps))


def add_bleu(name, hyps, refs, **kw):
    _check(name, hyps, refs)
    opts = bleu_opts(**kw)
    metric = BLEU(**{k: v for k, v in opts.items()})
    score = metric.corpus_score(list(hyps), [list(s) for s in refs])
    expected = {"score": num(score.score),
                "signature": str(metric.get_signature())}
    expected.update({k: v for k, v in bleu_result(score).items() if k != "score"})
    CASES.append({"name": name, "metric": "bleu", "options": opts,
                  "hyps": hyps, "refs": refs, "expected": expected})


def add_chrf(name, hyps, refs, **kw):
    _check(name, hyps, refs)
    opts = chrf_opts(**kw)
    metric = CHRF(**opts)
    score = metric.corpus_score(list(hyps), [list(s) for s in refs])
    expected = {"score": num(score.score),
                "signature": str(metric.get_signature())}
    CASES.append({"name": name, "metric": "chrf", "options": opts,
                  "hyps": hyps, "refs": refs, "expected": expected})


def add_sentence_bleu(name, hyps, refs, **kw):
    _check(name, hyps, refs)
    kw.setdefault("effective_order", True)
    opts = bleu_opts(**kw)
    metric = BLEU(**opts)
    sentences = []
    for i, hyp in enumerate(hyps):
        score = metric.sentence_score(hyp, [stream[i] for stream in refs])
        sentences.append(bleu_result(score))
    expected = {"signature": str(metric.get_signature()), "sentences": sentences}
    CASES.append({"name": name, "metric": "sentence_bleu", "options": opts,
                  "hyps": hyps, "refs": refs, "expected": expected})


def add_sentence_chrf(name, hyps, refs, **kw):
    _check(name, hyps, refs)
    opts = chrf_opts(**kw)
    metric = CHRF(**opts)
    scores = []
    for i, hyp in enumerate(hyps):
        score = metric.sentence_score(hyp, [stream[i] for stream in refs])
        scores.append(num(score.score))
    expected = {"signature": str(metric.get_signature()), "scores": scores}
    CASES.append({"name": name, "metric": "sentence_chrf", "options": opts,
                  "hyps": hyps, "refs": refs, "expected": expected})


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------

# English news-like corpus: punctuation, decimals, thousands separators,
# digit-dash ranges, entities, hyphenated words, URLs, contractions.
EN_REF_A = [
    "The committee approved the budget of $1,000 on Tuesday.",
    "Prices rose by 3.5 percent between 1990-2000, analysts said.",
    "She said: &quot;We'll be there at 10:30 a.m.&quot;",
    "Tom &amp; Jerry is a well-known cartoon.",
    "The state-of-the-art model scored 92.7 on the benchmark.",
    "Is it raining? No, it's sunny (finally)!",
    "He paid 2,500.75 euros for a second-hand car.",
    "Visit https://example.com/path?id=42 for more details.",
    "The results, however, were not conclusive.",
    "Our team won 3-1 in the final match of 2019.",
    "Temperatures ranged from -5 to 12 degrees [Celsius].",
]
EN_REF_B = [
    "On Tuesday the committee passed a $1,000 budget.",
    "Analysts said prices went up 3.5 percent from 1990-2000.",
    "&quot;We will be there at 10:30 a.m.,&quot; she said.",
    "Tom &amp; Jerry is a famous cartoon.",
    "The cutting-edge model got a score of 92.7 on the benchmark.",
    "Is it raining? No, it is finally sunny!",
    "He spent 2,500.75 euros on a used car.",
    "For more details, visit https://example.com/path?id=42.",
    "However, the results were inconclusive.",
    "In 2019 our team won the final 3-1.",
    "Temperatures were between -5 and 12 degrees Celsius.",
]
EN_REF_C = [
    "The panel approved a budget of 1,000 dollars on Tuesday.",
    "Between 1990-2000 prices rose 3.5 percent, according to analysts.",
    "She said, &quot;We'll arrive at 10:30 a.m.&quot;",
    "The cartoon Tom &amp; Jerry is well-known.",
    "The state-of-the-art system scored 92.7 on the benchmark.",
    "Is it raining? No -- it's sunny at last!",
    "He paid 2,500.75 euros for a second-hand vehicle.",
    "More details are at https://example.com/path?id=42 .",
    "The results were, however, not conclusive.",
    "Our team won the 2019 final match 3-1.",
    "Temperatures ranged from -5 to 12 degrees (Celsius).",
]
EN_HYP = [
    "The committee approved a budget of $1,000 on Tuesday.",
    "Prices increased 3.5 percent in 1990-2000, analysts said.",
    "She said: &quot;We will be there at 10:30 a.m.&quot;",
    "Tom &amp; Jerry is a famous well-known cartoon.",
    "The state-of-the-art model scored 92.7 in the benchmark.",
    "Is it raining? No, it is sunny (at last)!",
    "He paid 2,500.75 euro for a used car.",
    "Visit https://example.com/path?id=42 for more information.",
    "However, the results were inconclusive.",
    "Our team won 3-1 in the final.",
    "Temperatures ranged from -5 to 12 degrees.",
]

# Same corpus with an empty hypothesis in the middle (and one at the end).
EN_HYP_WITH_EMPTY = list(EN_HYP)
EN_HYP_WITH_EMPTY[3] = ""
EN_HYP_WITH_EMPTY[-1] = ""

# Short hypotheses (brevity penalty < 1).
SHORT_REF = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "We need to finish the report before the meeting on Friday afternoon.",
    "Nobody expected the small startup to win the national award this year.",
    "The museum will reopen in March after a long renovation.",
    "Please send the signed contract back to our office by email.",
    "The train to Berlin was delayed by about forty-five minutes.",
]
SHORT_HYP = [
    "The quick brown fox jumps over the dog.",
    "We must finish the report before Friday.",
    "Nobody expected the startup to win.",
    "The museum will reopen in March.",
    "Send the contract to our office.",
    "The train was delayed.",
]

# Long hypotheses (brevity penalty == 1, sys_len > ref_len).
LONG_HYP = [
    "The quick brown fox quickly jumps right over the very lazy old dog near the muddy river bank today.",
    "We really need to finish the whole annual report well before the big meeting on Friday afternoon, as agreed.",
    "Nobody at all expected the small young startup to actually win the national award this year, not even them.",
    "The city museum will finally reopen sometime in March after a long and very expensive renovation.",
    "Please kindly send the signed contract back to our main office by email or by regular post.",
    "The evening train to Berlin was unfortunately delayed by about forty-five minutes due to the storm.",
]

# Hypotheses that share words but (almost) no higher-order n-grams.
NOMATCH4_REF = [
    "the cat sat on the mat",
    "a bird was singing in the old tree",
    "my sister bought three red apples yesterday",
    "they will travel to Spain next summer",
]
NOMATCH4_HYP = [
    "mat the on sat cat the",
    "in the tree a bird old was singing",
    "apples red three yesterday my sister bought",
    "next summer Spain to travel they will",
]
# Only unigram matches (no bigram, trigram or 4-gram matches at all).
UNIGRAM_ONLY_HYP = [
    "mat on cat the sat",
    "tree was the bird in singing old",
    "apples yesterday red sister three",
    "summer Spain next travel will",
]
# Nothing matches at all (early exit).
NOTHING_HYP = [
    "completely unrelated words here",
    "zebras graze quietly",
    "nothing overlaps at all",
    "xyz",
]
# Very short hypotheses (fewer than 4 tokens: 4-gram totals are zero).
TINY_REF = ["Hello world !", "Thank you .", "Yes", "Good morning , everyone"]
TINY_HYP = ["Hello world", "Thank you .", "Yes", "Good morning"]

# Unicode punctuation.
UNI_REF = [
    "She whispered “good night” and closed the door.",
    "The answer — surprisingly — was no…",
    "«Bonjour», dit-il en souriant.",
    "¡Qué sorpresa! ¿Vienes mañana?",
    "It costs €5 — or £4.50 — at the kiosk.",
    "The ‘final’ version is due in 2024…",
    "He said: „Das ist gut“ — and left.",
    "Price: 1,000 € (approx.) — see §3.",
]
UNI_HYP = [
    "She whispered “good night” and shut the door.",
    "The answer—surprisingly—was no …",
    "« Bonjour », dit-il avec un sourire.",
    "¡Qué sorpresa! ¿Vienes mañana o no?",
    "It costs €5 or £4.50 at the kiosk.",
    "The ‘final’ version is expected in 2024.",
    "He said: „Das ist gut“ – and went away.",
    "Price: 1,000 € (approx.) – see § 3.",
]

# German.
DE_REF = [
    "Die Straße vor unserem Haus wird nächste Woche gesperrt.",
    "Über 1.000 Menschen nahmen an der Demonstration teil.",
    "Der Preis stieg um 3,5 Prozent auf 12,99 Euro.",
    "Größere Städte haben oft höhere Mieten.",
    "Wir müssen uns beeilen, sonst verpassen wir den Zug!",
    "Die Bürgermeisterin eröffnete das Fußballstadion.",
    "Äpfel, Öl und Süßigkeiten stehen auf der Einkaufsliste.",
]
DE_HYP = [
    "Die Strasse vor unserem Haus wird nächste Woche gesperrt.",
    "Mehr als 1.000 Menschen nahmen an der Demonstration teil.",
    "Der Preis stieg um 3,5 Prozent auf 12,99 Euro.",
    "Grössere Städte haben häufig höhere Mieten.",
    "Wir müssen uns beeilen, sonst verpassen wir den Zug.",
    "Die Bürgermeisterin hat das Fußballstadion eröffnet.",
    "ÄPFEL, ÖL UND SÜSSIGKEITEN stehen auf der Einkaufsliste.",
]

# Chinese.
ZH_REF = [
    "我们在2023年完成了这个项目。",
    "今天的天气非常好，我们去公园散步吧！",
    "他说：“明天会下雨。”",
    "这本书的价格是35.5元。",
    "中国有超过14亿人口。",
    "请在下午三点之前提交报告。",
    "北京是中华人民共和国的首都。",
    "我喜欢吃苹果和香蕉。",
]
ZH_HYP = [
    "我们于2023年完成了该项目。",
    "今天天气很好，我们去公园散步吧！",
    "他说：“明天将会下雨。”",
    "这本书的价格为35.5元。",
    "中国的人口超过14亿。",
    "请于下午三点前提交报告。",
    "北京是中国的首都。",
    "我爱吃香蕉和苹果。",
]
ZH_REF_B = [
    "这个项目在2023年被我们完成了。",
    "今天天气真好，一起去公园散步吧！",
    "他说明天会下雨。",
    "这本书售价35.5元。",
    "中国人口超过14亿。",
    "请在三点前交报告。",
    "中华人民共和国的首都是北京。",
    "我喜欢吃香蕉和苹果。",
]

# Mixed Chinese / English with digits, fullwidth forms and an Extension-B
# character (U+20BB7) which sacreBLEU's zh tokenizer does NOT treat as CJK.
MIX_REF = [
    "苹果公司在2024年发布了iPhone 16，售价999美元。",
    "我用Python 3.12写了一个web爬虫。",
    "会议定于10:30开始，请准时参加。",
    "GDP增长了5.2%，超过了预期。",
    "他在NBA打了15年篮球。",
    "请访问www.example.com了解更多信息（免费）。",
    "吉野家的“𠮷”字很特别。",
    "价格从1,000元降到了850元—降幅15%。",
]
MIX_HYP = [
    "苹果公司于2024年发布了iPhone 16，价格999美元。",
    "我用 Python 3.12 写了一个 Web 爬虫。",
    "会议将于10:30开始,请准时参加.",
    "GDP 增长 5.2%，高于预期。",
    "他在NBA打了15年的篮球。",
    "请访问 www.example.com 了解更多信息(免费)。",
    "吉野家的“𠮷”字非常特别。",
    "价格从1,000元降至850元——降幅为15%。",
]

# Case differences.
CASE_REF = [
    "The United Nations met in New York on Monday.",
    "NASA launched a new satellite called Aurora.",
    "the iPhone and the MacBook were both updated.",
    "Paris is the capital of France.",
    "ΟΔΟΣ ΚΑΛΟΣ is Greek for a good road.",
    "Die GROSSE Straße ist lang.",
]
CASE_HYP = [
    "the united nations met in new york on monday.",
    "Nasa Launched A New Satellite Called AURORA.",
    "The IPhone and the Macbook were both updated.",
    "PARIS IS THE CAPITAL OF FRANCE.",
    "οδος καλος is greek for a good road.",
    "Die große Strasse ist lang.",
]

# Whitespace: leading / trailing / multiple internal spaces and tabs.
WS_REF = [
    "The meeting starts at nine.",
    "  Leading spaces in the reference.",
    "Trailing spaces in the reference.   ",
    "Tabs\tbetween\twords here.",
    "Multiple   internal    spaces.",
    "Mixed \t whitespace\t \there .",
]
WS_HYP = [
    "   The meeting   starts at nine.   ",
    "Leading spaces in the reference.",
    "\tTrailing spaces in the reference.\t",
    "Tabs between words here.",
    "Multiple internal spaces .",
    " Mixed whitespace here. \t ",
]

# Pre-tokenized text for tokenize="none".
PRETOK_REF = [
    "the model 's accuracy is 91.2 % .",
    "we ca n't go there , sorry .",
    "results ( see table 3 ) are promising",
    "it cost $ 1,000 in 1990-2000 .",
    "the end",
]
PRETOK_HYP = [
    "the model's accuracy is 91.2 % .",
    "we can n't go there , sorry .",
    "results ( see table 3 ) look promising",
    "it cost $1,000 in 1990 - 2000 .",
    "the end .",
]

# Tokenizer-specific tricky strings (13a vs intl vs zh differ here).
TRICKY_REF = [
    "In 1990-2000, growth was 3.5%.",
    "The year was 2000.",
    "See item (1) and (2).",
    "Use a_b or a-b, not a/b!",
    "Cost: $5^2 = $25 ~ roughly.",
    "Wait... what?! Really?!",
    "It's 3,5 or 3.5 -- whichever.",
    "Section §4 & <b>bold</b> text &lt;tag&gt;.",
    "E-mail me at john.doe@example.org, ok?",
    "The score was 2-1; then 3-3.",
]
TRICKY_HYP = [
    "In 1990-2000 , growth was 3.5 %.",
    "The year was 2000 .",
    "See item (1) and item (2).",
    "Use a_b or a-b , not a/b !",
    "Cost: $5^2=$25~roughly.",
    "Wait ... what ?! Really ?!",
    "It is 3,5 or 3.5 - whichever.",
    "Section § 4 &amp; <b>bold</b> text <tag>.",
    "Email me at john.doe@example.org , ok ?",
    "The score was 2 - 1 ; then 3 - 3 .",
]

# Unicode-heavy sentences for intl.
INTL_REF = [
    "«C'est la vie», répondit-elle.",
    "Das kostet 12,50 € – nicht mehr!",
    "¿Dónde está la estación? ¡Allí!",
    "Он сказал: «Привет, мир!»",
    "Die Zahl ½ ist kleiner als ¾.",
    "The temperature is 25°C today…",
    "E = mc² is famous.",
]
INTL_HYP = [
    "« C'est la vie », répondit-elle .",
    "Das kostet 12,50€ - nicht mehr !",
    "¿Dónde está la estación?¡Allí!",
    "Он сказал: «Привет, мир»!",
    "Die Zahl ½ ist kleiner als ¾ .",
    "The temperature is 25 °C today...",
    "E=mc² is famous .",
]

# 13a markup handling: <skipped> removal and entity replacement order.
MARKUP_REF = [
    "Fish &amp; chips &amp;amp; more.",
    "The tag &lt;br&gt; breaks lines.",
    "He said &quot;yes&quot; <skipped> twice.",
    "Nothing special here.",
    "A &amp;lt; B is written with an entity.",
]
MARKUP_HYP = [
    "Fish & chips &amp; more.",
    "The tag <br> breaks lines.",
    "He said \"yes\" twice.<skipped>",
    "<skipped>Nothing special here.",
    "A < B is written with an entity.",
]


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

def build():
    # ---------------- BLEU, tokenizers ----------------
    add_bleu("bleu_13a_en_1ref", EN_HYP, [EN_REF_A])
    add_bleu("bleu_13a_en_2refs", EN_HYP, [EN_REF_A, EN_REF_B])
    add_bleu("bleu_13a_en_3refs", EN_HYP, [EN_REF_A, EN_REF_B, EN_REF_C])
    add_bleu("bleu_13a_en_3refs_reordered", EN_HYP, [EN_REF_C, EN_REF_A, EN_REF_B])
    add_bleu("bleu_intl_en_1ref", EN_HYP, [EN_REF_A], tokenize="intl")
    add_bleu("bleu_intl_en_2refs", EN_HYP, [EN_REF_A, EN_REF_B], tokenize="intl")
    add_bleu("bleu_char_en_1ref", EN_HYP, [EN_REF_A], tokenize="char")
    add_bleu("bleu_none_pretok", PRETOK_HYP, [PRETOK_REF], tokenize="none")
    add_bleu("bleu_13a_pretok", PRETOK_HYP, [PRETOK_REF])
    add_bleu("bleu_13a_tricky", TRICKY_HYP, [TRICKY_REF])
    add_bleu("bleu_intl_tricky", TRICKY_HYP, [TRICKY_REF], tokenize="intl")
    add_bleu("bleu_zh_tricky", TRICKY_HYP, [TRICKY_REF], tokenize="zh")
    add_bleu("bleu_none_tricky", TRICKY_HYP, [TRICKY_REF], tokenize="none")
    add_bleu("bleu_char_tricky", TRICKY_HYP, [TRICKY_REF], tokenize="char")
    add_bleu("bleu_13a_markup", MARKUP_HYP, [MARKUP_REF])
    add_bleu("bleu_intl_markup", MARKUP_HYP, [MARKUP_REF], tokenize="intl")

    # Unicode punctuation with each tokenizer.
    for tok in ("13a", "intl", "zh", "char", "none"):
        add_bleu(f"bleu_{tok}_unicode_punct", UNI_HYP, [UNI_REF], tokenize=tok)
    add_bleu("bleu_intl_unicode_mixed", INTL_HYP, [INTL_REF], tokenize="intl")
    add_bleu("bleu_13a_unicode_mixed", INTL_HYP, [INTL_REF])

    # German.
    add_bleu("bleu_13a_de", DE_HYP, [DE_REF])
    add_bleu("bleu_13a_de_lc", DE_HYP, [DE_REF], lowercase=True)
    add_bleu("bleu_intl_de", DE_HYP, [DE_REF], tokenize="intl")

    # Chinese.
    add_bleu("bleu_zh_zh_1ref", ZH_HYP, [ZH_REF], tokenize="zh")
    add_bleu("bleu_zh_zh_2refs", ZH_HYP, [ZH_REF, ZH_REF_B], tokenize="zh")
    add_bleu("bleu_13a_zh", ZH_HYP, [ZH_REF])
    add_bleu("bleu_char_zh", ZH_HYP, [ZH_REF], tokenize="char")
    add_bleu("bleu_intl_zh", ZH_HYP, [ZH_REF], tokenize="intl")
    add_bleu("bleu_zh_mixed", MIX_HYP, [MIX_REF], tokenize="zh")
    add_bleu("bleu_13a_mixed_zh_en", MIX_HYP, [MIX_REF])
    add_bleu("bleu_char_mixed_zh_en", MIX_HYP, [MIX_REF], tokenize="char")
    add_bleu("bleu_zh_mixed_lc", MIX_HYP, [MIX_REF], tokenize="zh", lowercase=True)

    # ---------------- BLEU, lowercase ----------------
    add_bleu("bleu_13a_case_mixed", CASE_HYP, [CASE_REF])
    add_bleu("bleu_13a_case_lc", CASE_HYP, [CASE_REF], lowercase=True)
    add_bleu("bleu_intl_case_lc", CASE_HYP, [CASE_REF], tokenize="intl", lowercase=True)
    add_bleu("bleu_char_case_lc", CASE_HYP, [CASE_REF], tokenize="char", lowercase=True)
    add_bleu("bleu_13a_en_lc", EN_HYP, [EN_REF_A], lowercase=True)

    # ---------------- BLEU, whitespace ----------------
    for tok in ("13a", "intl", "zh", "char", "none"):
        add_bleu(f"bleu_{tok}_whitespace", WS_HYP, [WS_REF], tokenize=tok)

    # ---------------- BLEU, empty hypotheses ----------------
    add_bleu("bleu_13a_some_empty", EN_HYP_WITH_EMPTY, [EN_REF_A])
    add_bleu("bleu_13a_some_empty_2refs", EN_HYP_WITH_EMPTY, [EN_REF_A, EN_REF_B])
    add_bleu("bleu_13a_all_empty", [""] * 5, [EN_REF_A[:5]])
    add_bleu("bleu_13a_all_empty_floor", [""] * 3, [EN_REF_A[:3]],
             smooth_method="floor")
    add_bleu("bleu_13a_all_whitespace", ["  ", "\t", " \t "], [EN_REF_A[:3]])

    # ---------------- BLEU, brevity penalty ----------------
    add_bleu("bleu_13a_short_hyps", SHORT_HYP, [SHORT_REF])
    add_bleu("bleu_13a_long_hyps", LONG_HYP, [SHORT_REF])
    # Closest reference length with several references (incl. ties).
    add_bleu("bleu_13a_short_hyps_2refs", SHORT_HYP, [SHORT_REF, LONG_HYP])
    add_bleu("bleu_13a_long_hyps_2refs", LONG_HYP, [SHORT_HYP, SHORT_REF])
    add_bleu("bleu_13a_reflen_tie",
             ["one two three four five six", "a b c d", "x y z"],
             [["one two three four five", "a b c d e f", "x y"],
              ["one two three four five six seven", "a b", "x y z w"]])

    # ---------------- BLEU, smoothing ----------------
    for sm in ("exp", "floor", "add-k", "none"):
        tag = sm.replace("-", "")
        add_bleu(f"bleu_13a_smooth_{tag}_en", EN_HYP, [EN_REF_A], smooth_method=sm)
        add_bleu(f"bleu_13a_smooth_{tag}_nomatch4", NOMATCH4_HYP, [NOMATCH4_REF],
                 smooth_method=sm)
        add_bleu(f"bleu_13a_smooth_{tag}_unigram_only", UNIGRAM_ONLY_HYP,
                 [NOMATCH4_REF], smooth_method=sm)
        add_bleu(f"bleu_13a_smooth_{tag}_nothing", NOTHING_HYP, [NOMATCH4_REF],
                 smooth_method=sm)
        add_bleu(f"bleu_13a_smooth_{tag}_tiny", TINY_HYP, [TINY_REF],
                 smooth_method=sm)
        add_bleu(f"bleu_13a_smooth_{tag}_short", SHORT_HYP, [SHORT_REF],
                 smooth_method=sm)
    add_bleu("bleu_13a_smooth_floor_0.25_nomatch4", NOMATCH4_HYP, [NOMATCH4_REF],
             smooth_method="floor", smooth_value=0.25)
    add_bleu("bleu_13a_smooth_addk_2_nomatch4", NOMATCH4_HYP, [NOMATCH4_REF],
             smooth_method="add-k", smooth_value=2)
    add_bleu("bleu_13a_smooth_none_2refs", NOMATCH4_HYP,
             [NOMATCH4_REF, NOMATCH4_HYP[:2] + NOMATCH4_REF[2:]], smooth_method="none")

    # Corpus-level effective order (non-default; signature shows eff:yes).
    add_bleu("bleu_13a_tiny_effective_order", TINY_HYP, [TINY_REF],
             effective_order=True)

    # ---------------- chrF ----------------
    add_chrf("chrf_default_en", EN_HYP, [EN_REF_A])
    add_chrf("chrf_default_en_2refs", EN_HYP, [EN_REF_A, EN_REF_B])
    add_chrf("chrf_default_en_3refs", EN_HYP, [EN_REF_A, EN_REF_B, EN_REF_C])
    add_chrf("chrfpp_en", EN_HYP, [EN_REF_A], word_order=2)
    add_chrf("chrfpp_en_3refs", EN_HYP, [EN_REF_A, EN_REF_B, EN_REF_C], word_order=2)
    add_chrf("chrf_lc_case", CASE_HYP, [CASE_REF], lowercase=True)
    add_chrf("chrf_mixed_case", CASE_HYP, [CASE_REF])
    add_chrf("chrfpp_lc_case", CASE_HYP, [CASE_REF], word_order=2, lowercase=True)
    add_chrf("chrf_whitespace_ws", WS_HYP, [WS_REF], whitespace=True)
    add_chrf("chrf_default_ws", WS_HYP, [WS_REF])
    add_chrf("chrfpp_ws", WS_HYP, [WS_REF], word_order=2)
    add_chrf("chrf_whitespace_en", EN_HYP, [EN_REF_A], whitespace=True)
    add_chrf("chrf_zh", ZH_HYP, [ZH_REF])
    add_chrf("chrf_zh_2refs", ZH_HYP, [ZH_REF, ZH_REF_B])
    add_chrf("chrfpp_zh", ZH_HYP, [ZH_REF], word_order=2)
    add_chrf("chrf_mixed_zh_en", MIX_HYP, [MIX_REF])
    add_chrf("chrf_de", DE_HYP, [DE_REF])
    add_chrf("chrf_de_lc", DE_HYP, [DE_REF], lowercase=True)
    add_chrf("chrf_unicode_punct", UNI_HYP, [UNI_REF])
    add_chrf("chrfpp_unicode_punct", UNI_HYP, [UNI_REF], word_order=2)
    add_chrf("chrfpp_tricky", TRICKY_HYP, [TRICKY_REF], word_order=2)
    add_chrf("chrf_some_empty", EN_HYP_WITH_EMPTY, [EN_REF_A])
    add_chrf("chrfpp_some_empty", EN_HYP_WITH_EMPTY, [EN_REF_A], word_order=2)
    add_chrf("chrf_all_empty", [""] * 4, [EN_REF_A[:4]])
    add_chrf("chrf_tiny", TINY_HYP, [TINY_REF])
    add_chrf("chrfpp_tiny", TINY_HYP, [TINY_REF], word_order=2)
    add_chrf("chrf_nothing", NOTHING_HYP, [NOMATCH4_REF])
    add_chrf("chrf_short_hyps", SHORT_HYP, [SHORT_REF])
    add_chrf("chrf_long_hyps", LONG_HYP, [SHORT_REF])
    add_chrf("chrf_eps_smoothing", TINY_HYP, [TINY_REF], eps_smoothing=True)
    add_chrf("chrfpp_eps_smoothing_en", EN_HYP, [EN_REF_A], word_order=2,
             eps_smoothing=True)
    add_chrf("chrf_beta1_nc4", EN_HYP, [EN_REF_A], beta=1, char_order=4)

    # ---------------- sentence-level BLEU ----------------
    add_sentence_bleu("sentence_bleu_en", EN_HYP_WITH_EMPTY, [EN_REF_A])
    add_sentence_bleu("sentence_bleu_en_2refs", EN_HYP, [EN_REF_A, EN_REF_B])
    add_sentence_bleu("sentence_bleu_en_3refs", EN_HYP, [EN_REF_A, EN_REF_B, EN_REF_C])
    add_sentence_bleu("sentence_bleu_tiny", TINY_HYP + ["", "x"],
                      [TINY_REF + ["Nice to meet you .", "x"]])
    add_sentence_bleu("sentence_bleu_nomatch", NOMATCH4_HYP + UNIGRAM_ONLY_HYP + NOTHING_HYP,
                      [NOMATCH4_REF * 3])
    add_sentence_bleu("sentence_bleu_short_long", SHORT_HYP + LONG_HYP,
                      [SHORT_REF + SHORT_REF])
    add_sentence_bleu("sentence_bleu_zh", ZH_HYP, [ZH_REF], tokenize="zh")
    add_sentence_bleu("sentence_bleu_unicode", UNI_HYP, [UNI_REF])
    add_sentence_bleu("sentence_bleu_floor", NOMATCH4_HYP + TINY_HYP,
                      [NOMATCH4_REF + TINY_REF], smooth_method="floor")
    add_sentence_bleu("sentence_bleu_addk", NOMATCH4_HYP + TINY_HYP,
                      [NOMATCH4_REF + TINY_REF], smooth_method="add-k")
    add_sentence_bleu("sentence_bleu_none", NOMATCH4_HYP + TINY_HYP,
                      [NOMATCH4_REF + TINY_REF], smooth_method="none")
    add_sentence_bleu("sentence_bleu_lc_ws", CASE_HYP + WS_HYP,
                      [CASE_REF + WS_REF], lowercase=True)

    # ---------------- sentence-level chrF ----------------
    add_sentence_chrf("sentence_chrf_en", EN_HYP_WITH_EMPTY, [EN_REF_A])
    add_sentence_chrf("sentence_chrf_en_3refs", EN_HYP, [EN_REF_A, EN_REF_B, EN_REF_C])
    add_sentence_chrf("sentence_chrf_zh", ZH_HYP + MIX_HYP, [ZH_REF + MIX_REF])
    add_sentence_chrf("sentence_chrf_tiny", TINY_HYP + NOTHING_HYP + ["", "a"],
                      [TINY_REF + NOMATCH4_REF + ["something", "a"]])
    add_sentence_chrf("sentence_chrfpp_en", EN_HYP, [EN_REF_A], word_order=2)
    add_sentence_chrf("sentence_chrf_ws", WS_HYP + UNI_HYP, [WS_REF + UNI_REF],
                      whitespace=True)
    add_sentence_chrf("sentence_chrf_lc", CASE_HYP + DE_HYP, [CASE_REF + DE_REF],
                      lowercase=True)
    # Sentences shorter than the n-gram orders (no hypothesis or reference n-grams of
    # the higher orders) and with nothing in common, in both smoothing modes: the
    # branches for empty orders and zero matches (found by mutation testing).
    SHORT_CHRF_HYP = ["ab", "abcdefgh", "xyz", "x", "a b"]
    SHORT_CHRF_REF = ["abcdefg", "ab", "qqq", "xyzzyx", "a b c d e f g"]
    add_sentence_chrf("sentence_chrf_short", SHORT_CHRF_HYP, [SHORT_CHRF_REF])
    add_sentence_chrf("sentence_chrf_short_eps", SHORT_CHRF_HYP, [SHORT_CHRF_REF],
                      eps_smoothing=True)
    add_sentence_chrf("sentence_chrfpp_short_eps", SHORT_CHRF_HYP, [SHORT_CHRF_REF],
                      word_order=2, eps_smoothing=True)


def main():
    build()
    out_dir = os.path.dirname(OUT_PATH)
    os.makedirs(out_dir, exist_ok=True)
    with open(OUT_PATH, "w", encoding="utf-8") as f:
        json.dump(CASES, f, ensure_ascii=False, indent=1, allow_nan=False)
        f.write("\n")
    counts = {}
    for c in CASES:
        counts[c["metric"]] = counts.get(c["metric"], 0) + 1
    print(f"sacrebleu {sacrebleu.__version__}: wrote {len(CASES)} cases to {OUT_PATH} "
          f"({', '.join(f'{k}={v}' for k, v in sorted(counts.items()))})")


if __name__ == "__main__":
    main()
