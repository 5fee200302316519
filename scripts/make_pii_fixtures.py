#!/usr/bin/env python3
"""A labelled synthetic set for `attn data scrub`: lines of English and Chinese text with
personal data at known character spans, and look-alikes that are not personal data.

    python3 scripts/make_pii_fixtures.py      # standard library only

Writes crates/attn/tests/fixtures/pii/cases.jsonl, one JSON object per line:
{"text": ..., "spans": [[start, end, type], ...]} with character offsets (Unicode
scalar values). Types: email, phone, credit-card, iban, ip, url, cn-id, cn-mobile.
Valid values carry correct checksums (Luhn for cards, ISO 7064 mod 97-10 for IBANs,
GB 11643 for Chinese resident ID numbers); the negatives include card-like numbers
failing Luhn, IBAN-like strings failing mod 97, ID-like numbers with a wrong check
character or an impossible birth date, octets above 255, order numbers, dates, prices,
version strings and "name at domain" written in words.
"""

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "crates" / "attn" / "tests" / "fixtures" / "pii" / "cases.jsonl"
rnd = random.Random(2024)


def luhn_digit(body):
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def card(valid=True):
    prefix, length = rnd.choice([("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15),
                                 ("37", 15), ("6011", 16), ("65", 16), ("3530", 16), ("62", 19)])
    body = prefix + "".join(rnd.choice("0123456789") for _ in range(length - len(prefix) - 1))
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + rnd.randint(1, 9)) % 10)
    digits = body + check
    style = rnd.randrange(3)
    if style == 0 or len(digits) not in (15, 16):
        return digits
    sep = " " if style == 1 else "-"
    groups = [4, 6, 5] if len(digits) == 15 else [4, 4, 4, 4]
    out, at = [], 0
    for g in groups:
        out.append(digits[at:at + g])
        at += g
    return sep.join(out)


IBAN_LEN = {"DE": 22, "GB": 22, "FR": 27, "ES": 24, "IT": 27, "NL": 18, "BE": 16, "CH": 21}


def iban(valid=True):
    cc = rnd.choice(sorted(IBAN_LEN))
    n = IBAN_LEN[cc]
    alnum = "0123456789" if cc in ("DE", "ES", "BE", "CH") else "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    bban = "".join(rnd.choice(alnum if i >= 4 else "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if cc in ("GB", "NL") else alnum)
                   for i in range(n - 4))
    num = "".join(str(int(c, 36)) for c in bban + cc + "00")
    check = 98 - int(num) % 97
    if not valid:
        check = (check + rnd.randint(1, 50)) % 97 + 2
        if check == 98 - int(num) % 97:
            check = (check + 1) % 99
    s = f"{cc}{check:02d}{bban}"
    if rnd.random() < 0.5:
        s = " ".join(s[i:i + 4] for i in range(0, len(s), 4))
    return s


def cn_id(valid=True, bad_date=False):
    region = rnd.choice(["110101", "310104", "440305", "510107", "330106", "420111"])
    y, m, d = rnd.randint(1950, 2010), rnd.randint(1, 12), rnd.randint(1, 28)
    if bad_date:
        m, d = rnd.choice([(13, 10), (2, 30), (0, 12), (4, 31)])
    body = f"{region}{y:04d}{m:02d}{d:02d}{rnd.randint(0, 999):03d}"
    w = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(c) * k for c, k in zip(body, w)) % 11]
    if not valid:
        check = rnd.choice([c for c in "0123456789X" if c != check])
    return body + check


def cn_mobile():
    n = rnd.choice("3456789") + "".join(rnd.choice("0123456789") for _ in range(9))
    s = "1" + n
    style = rnd.randrange(3)
    if style == 1:
        s = "+86 " + s
    elif style == 2:
        s = f"{s[:3]}-{s[3:7]}-{s[7:]}"
    return s


def phone():
    style = rnd.randrange(5)
    if style == 0:
        return f"({rnd.randint(201, 989)}) {rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}"
    if style == 1:
        return f"{rnd.randint(201, 989)}-{rnd.randint(200, 999)}-{rnd.randint(0, 9999):04d}"
    if style == 2:
        return f"+1 {rnd.randint(201, 989)} {rnd.randint(200, 999)} {rnd.randint(0, 9999):04d}"
    if style == 3:
        return f"+44 20 {rnd.randint(1000, 9999)} {rnd.randint(1000, 9999)}"
    return f"+49 30 {rnd.randint(100, 999)} {rnd.randint(1000, 99999)}"


def email():
    local = rnd.choice(["john.smith", "a", "first+tag", "o'brien", "x_y-z", "user.name+news", "mail123", "Zoë"[:2] + "e"])
    domain = rnd.choice(["example.com", "mail.example.co.uk", "sub-domain.example.org", "例子.example.cn",
                         "xn--fsq.example", "uni.edu"])
    if "例" in domain:
        domain = "example.cn"
    return f"{local}@{domain}"


def ip():
    if rnd.random() < 0.7:
        return ".".join(str(rnd.randint(0, 255)) for _ in range(4))
    groups = [f"{rnd.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rnd.random() < 0.5:
        return ":".join(groups)
    return f"{groups[0]}:{groups[1]}::{groups[6]}:{groups[7]}"


def url():
    return rnd.choice([
        f"https://www.example.com/path/{rnd.randint(1, 999)}?q=a&b=2",
        f"http://example.org/{rnd.randint(1, 99)}/index.html",
        f"https://sub.example.co.uk/a-b_c/{rnd.randint(1, 9)}#frag",
        f"www.example.net/page{rnd.randint(1, 99)}",
        "ftp://files.example.com/pub/data.tar.gz",
    ])


MAKERS = {"email": email, "phone": phone, "credit-card": card, "iban": iban, "ip": ip, "url": url,
          "cn-id": cn_id, "cn-mobile": cn_mobile}

EN = ["Please contact {} for details.", "My card is {} and it expires soon.", "Sent from {}.",
      "Reach me at {} tomorrow", "The value {} appeared in the log", "ref: {}", "({})",
      "Transfer to {}, thanks!", "see {} — or not"]
ZH = ["请联系{}获取详情。", "我的号码是{}，谢谢。", "身份证号：{}", "访问{}了解更多", "账号{}已收到"]

NEGATIVES = [
    lambda: f"Order #{rnd.randint(10**9, 10**10 - 1)} shipped on 2024-03-{rnd.randint(10, 28)}.",
    lambda: f"Total ${rnd.randint(1, 999)}.{rnd.randint(10, 99)} including 7.5% tax",
    lambda: f"version {rnd.randint(1, 9)}.{rnd.randint(0, 20)}.{rnd.randint(0, 99)} released",
    lambda: f"card-like {card(valid=False)} fails its checksum",
    lambda: f"IBAN-like {iban(valid=False)} fails mod 97",
    lambda: f"ID-like {cn_id(valid=False)} has a wrong check character",
    lambda: f"ID-like {cn_id(valid=True, bad_date=True)} has no such birth date",
    lambda: f"not an address {rnd.randint(256, 999)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}.{rnd.randint(0, 255)}",
    lambda: "write to john at example dot com",
    lambda: f"时间 {rnd.randint(2000, 2024)}年{rnd.randint(1, 12)}月 金额 {rnd.randint(100, 99999)} 元",
    lambda: f"ISBN 978-{rnd.randint(0, 9)}-{rnd.randint(100, 999)}-{rnd.randint(10000, 99999)}-{rnd.randint(0, 9)}",
    lambda: f"coordinates {rnd.uniform(-90, 90):.4f}, {rnd.uniform(-180, 180):.4f}",
    lambda: f"short number {rnd.randint(1000, 99999)} and code {rnd.randint(100000, 999999)}",
    lambda: f"product id 1{rnd.randint(10**11, 10**12 - 1)} in stock",
]


def line_with(types):
    text, spans = "", []
    for ty in types:
        value = MAKERS[ty]()
        zh = ty in ("cn-id", "cn-mobile") or rnd.random() < 0.25
        template = rnd.choice(ZH if zh else EN)
        pre, post = template.split("{}")
        if text:
            text += " "
        start = len(text) + len(pre)
        text += pre + value + post
        spans.append([start, start + len(value), ty])
    return {"text": text, "spans": spans}


def main():
    rows = []
    for ty in MAKERS:
        for _ in range(200):
            rows.append(line_with([ty]))
    for _ in range(300):
        rows.append(line_with(rnd.sample(sorted(MAKERS), rnd.randint(2, 3))))
    for _ in range(600):
        rows.append({"text": rnd.choice(NEGATIVES)(), "spans": []})
    rnd.shuffle(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}: {len(rows)} lines, {sum(len(r['spans']) for r in rows)} spans")


if __name__ == "__main__":
    main()
