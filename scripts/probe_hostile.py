#!/usr/bin/env python3
"""Hostile-input probes for the `attn` command (run by .ci/run).

Each probe runs the binary under a memory cap (RLIMIT_AS, 2 GiB by default) and a time
limit, and must either fail cleanly -- a non-zero exit whose last stderr line starts with
`error:` (optionally naming a given word) -- or succeed where the input is valid. What
counts against it: a panic (exit 101 or "panicked at" on stderr), an abort or any other
death by signal (exit 134 is SIGABRT: a failed allocation), a hang (the time limit), an
error without the `error:` line, and lost data (a file or folder that the probe checks is
unchanged, or a symlink's target written through).

Models are made on the spot with the binary itself (tiny GPT-2, BERT and Marian runs),
plus a Llama folder from the HF test fixtures. Nothing is downloaded.

    python3 scripts/probe_hostile.py --attn target/debug/attn [--only NAME] [--keep]

Prints one line per probe and a summary; exits 1 when any probe failed.
"""

import argparse
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/attn/tests/fixtures/hf"
GIB = 1 << 30

TEXT = (
    "ROMEO: But soft, what light through yonder window breaks?\n"
    "It is the east, and Juliet is the sun.\n"
    "JULIET: O Romeo, Romeo! wherefore art thou Romeo?\n"
    "Deny thy father and refuse thy name.\n"
) * 40


def tree_hash(path: Path) -> str:
    """A digest of a file, or of every file under a folder (names and bytes)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for p in sorted(path.rglob("*")):
        if p.is_file() and not p.is_symlink():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


class Runner:
    def __init__(self, attn: Path, work: Path, mem: int, timeout: float, only):
        self.attn = attn
        self.work = work
        self.mem = mem
        self.timeout = timeout
        self.only = only
        self.results = []  # (name, verdict, detail)

    def exec(self, args, stdin=None, cwd=None, timeout=None, env=None, mem=None):
        """Run attn with `args`; returns (rc, stdout, stderr, seconds, timed_out)."""
        limit = mem or self.mem

        def cap():
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

        e = dict(os.environ)
        e.pop("ATTN_API_KEY", None)
        if env:
            e.update(env)
        t0 = time.time()
        p = subprocess.Popen(
            [str(self.attn)] + [str(a) for a in args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=cwd or self.work,
            env=e,
            preexec_fn=cap,
            start_new_session=True,
        )
        try:
            out, err = p.communicate(
                input=stdin.encode() if isinstance(stdin, str) else stdin,
                timeout=timeout or self.timeout,
            )
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            timed_out = True
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), time.time() - t0, timed_out

    def setup(self, args, **kw):
        rc, out, err, _, _ = self.exec(args, mem=8 * GIB, timeout=600, **kw)
        if rc != 0:
            sys.exit(f"setup failed: attn {' '.join(map(str, args))}\n{err[-3000:]}")
        return out

    def probe(self, name, args, expect="error", contains=None, stdin=None, unchanged=(),
              check=None, cwd=None, timeout=None, env=None):
        """expect: "error" (clean error), "ok" (exit 0), "either" (either is right), or
        "streams" (still running at the time limit, with output already written)."""
        if self.only and not any(o in name for o in self.only):
            return
        digests = {p: tree_hash(p) for p in unchanged if p.exists()}
        rc, out, err, secs, timed_out = self.exec(args, stdin=stdin, cwd=cwd, timeout=timeout, env=env)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        last = lines[-1] if lines else ""
        verdict, detail = "ok", ""
        if timed_out and expect == "streams" and len(out) > 100:
            verdict, detail = "ok", f"{len(out)} bytes streamed in {secs:.0f} s, stopped by the probe"
        elif timed_out:
            verdict, detail = "HANG", f"killed after {secs:.0f} s"
        elif "panicked at" in err or rc == 101:
            verdict, detail = "PANIC", next((l for l in lines if "panicked" in l), last)
        elif rc < 0 or rc > 128:
            sig = -rc if rc < 0 else rc - 128
            verdict, detail = ("ABORT" if sig == 6 else "KILLED"), f"signal {sig}; {last[:200]}"
        elif rc == 0:
            if expect == "error":
                verdict, detail = "ACCEPTED", "exit 0 where an error was expected"
            else:
                verdict, detail = "ok", "exit 0"
        else:
            if expect == "ok":
                verdict, detail = "REFUSED", last[:300]
            elif not last.startswith("error:"):
                verdict, detail = "UNCLEAR", f"exit {rc}, last line: {last[:200]}"
            elif contains and not any(c.lower() in last.lower() for c in ([contains] if isinstance(contains, str) else contains)):
                verdict, detail = "UNCLEAR", f"error does not name {contains!r}: {last[:300]}"
            else:
                verdict, detail = "error", last[:300]
        for p, d in digests.items():
            if not p.exists() or tree_hash(p) != d:
                verdict, detail = "DATA LOST", f"{p} changed; {detail}"
        if verdict in ("ok", "error") and check is not None:
            problem = check(rc, out, err)
            if problem:
                verdict, detail = "WRONG", problem
        self.results.append((name, verdict, detail))
        good = verdict in ("ok", "error")
        print(f"{'pass' if good else 'FAIL'} {name}: {verdict} {detail}", flush=True)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def edit_config(src: Path, dst: Path, **changes) -> Path:
    """A copy of model folder `src` at `dst` with config.json fields changed."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def make_models(r: Runner, w: Path):
    shutil.rmtree(w / "m", ignore_errors=True)
    corpus = write(w / "corpus.txt", TEXT)
    models = {}
    gpt2 = w / "m/gpt2"
    r.setup(["train", "--data", corpus, "--out", gpt2, "--n-layer", 2, "--n-head", 2, "--n-embd", 32,
             "--block-size", 32, "--batch-size", 4, "--max-iters", 4, "--eval-interval", 2,
             "--eval-iters", 1])
    models["gpt2"] = gpt2
    tsv = write(w / "clf.tsv", "".join(
        f"{'pos' if i % 2 else 'neg'}\t{'good fine great' if i % 2 else 'bad awful poor'} film number {i}\n"
        for i in range(60)))
    models["clf_data"] = tsv
    bert = w / "m/bert"
    r.setup(["classify", "train", "--data", tsv, "--out", bert, "--preset", "bert-tiny", "--epochs", 1,
             "--tokenizer", "char", "--max-len", 32])
    models["bert"] = bert
    pairs = write(w / "pairs.tsv", "".join(
        f"the cat number {i} sleeps\tdie katze nummer {i} schlaeft\n" for i in range(80)))
    models["pairs"] = pairs
    marian = w / "m/marian"
    r.setup(["translate", "train", "--pairs", pairs, "--out", marian, "--holdout", 5, "--valid-size", 5,
             "--d-model", 16, "--layers", 1, "--heads", 2, "--ffn", 32, "--vocab-size", 300,
             "--max-steps", 2, "--batch-size", 8, "--eval-interval", 2, "--bleu-sample", 2])
    models["marian"] = marian
    # T5 (summarization): characters as tokens, one layer each side.
    docs = write(w / "docs.txt", "".join(f"the cat number {i} sleeps on the mat\n" for i in range(10)))
    models["docs"] = docs
    t5 = w / "m/t5"
    r.setup(["summarize", "train", "--pairs", pairs, "--out", t5, "--arch", "t5", "--vocab", "char",
             "--holdout", 5, "--valid-size", 5, "--d-model", 16, "--layers", 1, "--heads", 2, "--ffn", 32,
             "--max-steps", 2, "--batch-size", 8, "--eval-interval", 2, "--bleu-sample", 2])
    models["t5"] = t5
    # Llama: the HF fixture's weights with a char tokenizer that fits its vocabulary.
    llama = w / "m/llama"
    shutil.copytree(FIXTURES / "llama-gqa", llama)
    for extra in ("meta.json", "reference.safetensors"):
        (llama / extra).unlink(missing_ok=True)
    tok = w / "m/chartok"
    r.setup(["tokenizer", "train", "--kind", "char", "--data", write(w / "abc.txt", "abcdefgh ij\n"),
             "--out", tok])
    shutil.copy(tok / "tokenizer.json", llama / "tokenizer.json")
    models["llama"] = llama
    return models


def probes(r: Runner, w: Path, m: dict):
    corpus = w / "corpus.txt"
    gpt2, bert, marian, llama, t5 = m["gpt2"], m["bert"], m["marian"], m["llama"], m["t5"]
    big = 1_000_000_000

    # 1. Configs that declare huge sizes: refused before anything of that size exists.
    huge = {
        "gpt2-n_layer": (gpt2, {"n_layer": 1_000_000}),
        "gpt2-n_embd": (gpt2, {"n_embd": 4_000_000_000, "n_head": 2}),
        "gpt2-vocab": (gpt2, {"vocab_size": 3_000_000_000}),
        "gpt2-n_positions": (gpt2, {"n_positions": 3_000_000_000}),
        "gpt2-n_inner": (gpt2, {"n_inner": 3_000_000_000}),
        "llama-max_pos": (llama, {"max_position_embeddings": 3_000_000_000}),
        "llama-hidden": (llama, {"hidden_size": 3_000_000_000}),
        "llama-vocab": (llama, {"vocab_size": 3_000_000_000}),
        "llama-layers": (llama, {"num_hidden_layers": 1_000_000}),
        "llama-inter": (llama, {"intermediate_size": 3_000_000_000}),
        "bert-hidden": (bert, {"hidden_size": 3_000_000_000}),
        "bert-layers": (bert, {"num_hidden_layers": 1_000_000}),
        "bert-max_pos": (bert, {"max_position_embeddings": 3_000_000_000}),
        "bert-vocab": (bert, {"vocab_size": 3_000_000_000}),
        "marian-d_model": (marian, {"d_model": 3_000_000_000}),
        "marian-max_pos": (marian, {"max_position_embeddings": 3_000_000_000}),
        "marian-layers": (marian, {"encoder_layers": 1_000_000, "decoder_layers": 1_000_000}),
        "marian-vocab": (marian, {"vocab_size": 3_000_000_000}),
        "t5-d_model": (t5, {"d_model": 3_000_000_000}),
        "t5-layers": (t5, {"num_layers": 1_000_000, "num_decoder_layers": 1_000_000}),
        "t5-vocab": (t5, {"vocab_size": 3_000_000_000}),
        "t5-d_ff": (t5, {"d_ff": 3_000_000_000}),
        "t5-d_kv": (t5, {"d_kv": 3_000_000_000}),
        "t5-buckets": (t5, {"relative_attention_num_buckets": 3_000_000_000}),
        "t5-start": (t5, {"decoder_start_token_id": 3_000_000_000}),
    }
    cmds = {
        "gpt2": lambda d: [["generate", "--model", d, "--max-new-tokens", 2],
                           ["eval", "perplexity", "--model", d, "--data", corpus],
                           ["export", "--model", d, "--out", w / "out/export-huge"],
                           ["serve", "--model", d, "--port", 0]],
        "llama": lambda d: [["generate", "--model", d, "--max-new-tokens", 2, "--prompt", "ab"],
                            ["eval", "perplexity", "--model", d, "--data", w / "abc.txt"],
                            ["export", "--model", d, "--out", w / "out/export-huge"],
                            ["serve", "--model", d, "--port", 0]],
        "bert": lambda d: [["embed", "--model", d, "--input", corpus],
                           ["classify", "predict", "--model", d],
                           ["classify", "train", "--data", m["clf_data"], "--model", d, "--out",
                            w / "out/bert-huge", "--epochs", 1],
                           ["export", "--model", d, "--out", w / "out/export-huge"],
                           ["serve", "--model", d, "--port", 0]],
        "marian": lambda d: [["translate", "--model", d],
                             ["translate", "train", "--pairs", m["pairs"], "--model", d, "--out",
                              w / "out/marian-huge", "--holdout", 5, "--valid-size", 5, "--max-steps", 1],
                             ["export", "--model", d, "--out", w / "out/export-huge"]],
        "t5": lambda d: [["summarize", "--model", d],
                         ["summarize", "train", "--pairs", m["pairs"], "--model", d, "--out", w / "out/t5-huge",
                          "--holdout", 5, "--valid-size", 5, "--max-steps", 1]],
    }
    for name, (src, change) in huge.items():
        d = edit_config(src, w / f"cfg/{name}", **change)
        for args in cmds[name.split("-")[0]](d):
            # A server that loaded would listen until the time limit: that is a failure.
            r.probe(f"config {name}: {' '.join(map(str, args[:2]))}", args, stdin="hello\n",
                    timeout=60 if args[0] == "serve" else None)
    # A config with fewer layers than the weights: the rest are unexpected tensors.
    d = edit_config(gpt2, w / "cfg/gpt2-fewer", n_layer=1)
    r.probe("config n_layer below the weights: generate", ["generate", "--model", d], contains="unexpected")
    r.probe("config n_layer below the weights: eval", ["eval", "perplexity", "--model", d, "--data", corpus],
            contains="unexpected")
    d = edit_config(gpt2, w / "cfg/gpt2-eps", layer_norm_epsilon=-1.0)
    r.probe("config negative layer_norm_epsilon", ["generate", "--model", d], contains="layer_norm_epsilon")
    # Resume from a checkpoint whose saved training config was made huge.
    run = w / "runs/resume-huge"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(gpt2, run)
    state_path = run / "checkpoint/trainer_state.json"
    state = json.loads(state_path.read_text())
    state["task"]["config"]["n_layer"] = 1_000_000
    state_path.write_text(json.dumps(state))
    r.probe("train --resume with a huge saved config", ["train", "--out", run, "--resume"], contains="--n-layer")

    # NaN and infinite weights are found at load and named.
    d = w / "cfg/gpt2-nan"
    shutil.copytree(gpt2, d)
    corrupt_first_float(d / "model.safetensors", float("nan"))
    r.probe("NaN weight: generate", ["generate", "--model", d], contains="nan")
    r.probe("NaN weight: eval", ["eval", "perplexity", "--model", d, "--data", corpus], contains="nan")

    # Absurd flags: refused up front, naming the flag.
    # Valid, and endless: it must stream tokens at once (nothing of that size reserved).
    r.probe("generate --max-new-tokens 1e12 streams", ["generate", "--model", gpt2, "--max-new-tokens",
                                                        1_000_000_000_000, "--prompt", "RO"],
            expect="streams", timeout=10)
    run = write(w / "one_word.txt", "acgt" * 500_000 + "\n")
    r.probe("tokenizer train on a two-million-letter word", ["tokenizer", "train", "--data", run,
            "--vocab-size", 600, "--out", w / "out/tok-word", "--overwrite"], expect="ok", timeout=60)
    r.probe("tokenizer train --vocab-size 1e9", ["tokenizer", "train", "--data", corpus, "--vocab-size", big,
                                                 "--out", w / "out/tok"], contains="vocab")
    for flag, val in [("--n-layer", 1_000_000), ("--n-embd", big), ("--block-size", big),
                      ("--batch-size", big), ("--tokenizer", f"bpe:{big}")]:
        extra = ["--n-head", 1] if flag == "--n-embd" else []
        r.probe(f"train {flag} {val}", ["train", "--data", corpus, "--out", w / f"out/train{flag}", flag, val,
                                        "--max-iters", 1] + extra,
                contains=[flag.lstrip("-").replace("-", "_"), flag, "bpe", "tokenizer"])
    r.probe("classify train --max-len 1e9", ["classify", "train", "--data", m["clf_data"], "--out",
                                             w / "out/clf-maxlen", "--preset", "bert-tiny", "--tokenizer", "char",
                                             "--max-len", big], contains="max-len")
    for flag in ["--layers", "--d-model", "--vocab-size", "--max-len"]:
        val = 1_000_000 if flag == "--layers" else big
        extra = ["--heads", 1] if flag == "--d-model" else []
        r.probe(f"translate train {flag} {val}", ["translate", "train", "--pairs", m["pairs"], "--out",
                                                  w / f"out/tr{flag}", "--holdout", 5, "--valid-size", 5,
                                                  "--max-steps", 1, flag, val] + extra, contains=flag)
    r.probe("translate train writes nothing before refusing", ["translate", "train", "--pairs", m["pairs"], "--out",
                                                              w / "out/tr-novocab", "--holdout", 5, "--valid-size", 5,
                                                              "--vocab-size", 1],
            check=lambda rc, o, e: "holdout files written" if (w / "out/tr-novocab/holdout.src").exists() else None)
    r.probe("translate --beam 1e6", ["translate", "--model", marian, "--beam", 1_000_000], stdin="the cat\n",
            contains="beam")
    r.probe("summarize --beam 1e6", ["summarize", "--model", t5, "--beam", 1_000_000], stdin="the cat\n",
            contains="beam")
    r.probe("summarize --max-len 1e12", ["summarize", "--model", t5, "--max-len", 1_000_000_000_000],
            stdin="the cat\n", contains="max-len")
    r.probe("summarize --min-len above --max-len", ["summarize", "--model", t5, "--min-len", 10, "--max-len", 2],
            stdin="the cat\n", contains="min-len")
    r.probe("summarize --length-penalty NaN", ["summarize", "--model", t5, "--length-penalty", "NaN"],
            stdin="the cat\n", contains="length-penalty")
    r.probe("summarize --batch-size 0", ["summarize", "--model", t5, "--batch-size", 0], stdin="the cat\n",
            contains="batch-size")
    r.probe("summarize: binary on stdin", ["summarize", "--model", t5], stdin=b"\xff\xfe the cat\n",
            contains=["utf-8", "stdin"])
    for flag in ["--max-len", "--d-model", "--layers"]:
        val = 1_000_000 if flag == "--layers" else big
        extra = ["--heads", 1] if flag == "--d-model" else []
        r.probe(f"pretrain {flag} {val}", ["pretrain", "--arch", "t5", "--data", m["docs"], "--out",
                                           w / f"out/pt{flag}", "--max-steps", 1, flag, val] + extra,
                contains=flag)
    r.probe("eval rouge --tokenize bogus", ["eval", "rouge", "--hyp", m["docs"], "--ref", m["docs"],
                                            "--tokenize", "bogus"], contains="tokenize")
    r.probe("eval rouge --newline-token ''", ["eval", "rouge", "--hyp", m["docs"], "--ref", m["docs"],
                                              "--newline-token", ""], contains="newline-token")
    long_line = write(w / "long_line.txt", "the cat " * 1_000_000 + "\n")
    r.probe("eval rouge: a line of two million tokens", ["eval", "rouge", "--hyp", long_line, "--ref", long_line],
            contains="line 1", timeout=60)
    r.probe("eval rouge: lines not parallel", ["eval", "rouge", "--hyp", m["docs"], "--ref", corpus],
            contains="parallel")
    docs = m["docs"]
    r.probe("data dedup --num-perm 4e9 (bands chosen)", ["data", "dedup", "--input", docs, "--out",
            w / "out/dedup-perm", "--near", "--num-perm", 4_000_000_000], contains="num-perm", timeout=60)
    r.probe("data dedup --num-perm 4e9 --bands 2 --rows 2", ["data", "dedup", "--input", docs, "--out",
            w / "out/dedup-perm2", "--near", "--num-perm", 4_000_000_000, "--bands", 2, "--rows", 2],
            contains="num-perm", timeout=60)
    r.probe("data dedup --threshold NaN", ["data", "dedup", "--input", docs, "--out", w / "out/dedup-nan",
                                           "--near", "--threshold", "NaN"], contains="threshold")
    r.probe("data minhash --num-perm 0", ["data", "minhash", "--input", docs, "--num-perm", 0],
            contains="num-perm")
    r.probe("data tokenize --val-fraction 1", ["data", "tokenize", "--input", docs, "--tokenizer",
                                               t5 / "tokenizer.json", "--out", w / "out/tok-val",
                                               "--val-fraction", 1], contains="val-fraction")
    r.probe("data tokenize --shard-tokens 0", ["data", "tokenize", "--input", docs, "--tokenizer",
                                               t5 / "tokenizer.json", "--out", w / "out/tok-shard",
                                               "--shard-tokens", 0], contains="shard-tokens")
    r.probe("data scrub --types bogus", ["data", "scrub", "--input", docs, "--out", w / "out/scrub-bogus",
                                         "--types", "bogus"], contains="types")
    r.probe("eval chrf --char-order 1e9", ["eval", "chrf", "--hyp", corpus, "--ref", corpus, "--char-order", big],
            contains="char-order")
    r.probe("bench generate --batch 1e6", ["bench", "generate", "--model", gpt2, "--batch", 1_000_000],
            contains="batch")

    # 2. Panics and hangs.
    r.probe("bench bandwidth --mib 2^44", ["bench", "bandwidth", "--mib", 17592186044416], contains="mib")
    for path, what in [("/dev/urandom", "device"), (w, "folder"), ("/dev/null", "device")]:
        r.probe(f"eval perplexity --data {what}", ["eval", "perplexity", "--model", gpt2, "--data", path],
                contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
        r.probe(f"embed --input {what}", ["embed", "--model", bert, "--input", path],
                contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
        r.probe(f"pretrain --data {what}", ["pretrain", "--arch", "t5", "--data", path, "--out", w / "out/pt-dev"],
                contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
        r.probe(f"eval rouge --hyp {what}", ["eval", "rouge", "--hyp", path, "--ref", m["docs"]],
                contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
        for sub in (["dedup", "--exact"], ["scrub"], ["tokenize", "--tokenizer", m["t5"] / "tokenizer.json"]):
            r.probe(f"data {sub[0]} --input {what}", ["data", *sub, "--input", path, "--out",
                                                      w / f"out/data-{sub[0]}-dev"],
                    contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
        r.probe(f"data stats --input {what}", ["data", "stats", "--input", path],
                contains=["not a regular file", "a folder", "directory", "device"], timeout=60)
    fifo = w / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    r.probe("train --data a FIFO", ["train", "--data", fifo, "--out", w / "out/fifo"],
            contains=["not a regular file", "fifo"], timeout=60)
    r.probe("eval bleu --hyp a folder", ["eval", "bleu", "--hyp", w, "--ref", corpus],
            contains=["not a regular file", "a folder", "directory"])
    r.probe("missing file is 'not found'", ["eval", "perplexity", "--model", gpt2, "--data", w / "nope.txt"],
            contains="not found")

    # 6. Garbage with exit 0.
    r.probe("generate --temperature 1e-39 is greedy", ["generate", "--model", gpt2, "--temperature", "1e-39",
                                                        "--max-new-tokens", 8, "--prompt", "RO", "--seed", 3],
            expect="ok", check=lambda rc, o, e: same_as_greedy(r, gpt2, o))
    r.probe("generate --stop ''", ["generate", "--model", gpt2, "--stop", ""], contains="stop")
    r.probe("classify train --dropout 2", ["classify", "train", "--data", m["clf_data"], "--out", w / "out/drop",
                                           "--preset", "bert-tiny", "--dropout", 2], contains="dropout")
    r.probe("train --dropout 2", ["train", "--data", corpus, "--out", w / "out/drop2", "--dropout", 2],
            contains="dropout")
    llama = ["train", "--arch", "llama", "--data", corpus, "--max-iters", 1]
    r.probe("train --arch llama --intermediate-size 1e9", llama + ["--out", w / "out/llinter",
            "--intermediate-size", big], contains="n-embd")
    r.probe("train --arch llama --n-kv-head 3 (of 4)", llama + ["--out", w / "out/llkv", "--n-head", 4,
            "--n-kv-head", 3], contains="n-kv-head")
    r.probe("train --n-kv-head 2 on gpt2", ["train", "--data", corpus, "--out", w / "out/gkv",
            "--n-kv-head", 2], contains="n-kv-head")
    r.probe("train --arch bogus", ["train", "--data", corpus, "--out", w / "out/bogus", "--arch", "bogus"],
            contains="arch")
    r.probe("eval bleu --smooth-value NaN", ["eval", "bleu", "--hyp", corpus, "--ref", corpus,
                                             "--smooth-method", "floor", "--smooth-value", "NaN"],
            contains="smooth-value")
    r.probe("eval chrf --beta inf", ["eval", "chrf", "--hyp", corpus, "--ref", corpus, "--beta", "inf"],
            contains="beta")
    r.probe("eval perplexity --batch-size 0", ["eval", "perplexity", "--model", gpt2, "--data", corpus,
                                               "--batch-size", 0], contains="batch-size")
    r.probe("classify predict --batch-size 0", ["classify", "predict", "--model", bert, "--batch-size", 0],
            stdin="good\n", contains="batch-size")
    r.probe("classify eval --batch-size 0", ["classify", "eval", "--model", bert, "--data", m["clf_data"],
                                             "--batch-size", 0], contains="batch-size")
    r.probe("translate --batch-size 0", ["translate", "--model", marian, "--batch-size", 0], stdin="the cat\n",
            contains="batch-size")
    r.probe("embed --batch-size 0", ["embed", "--model", bert, "--input", corpus, "--batch-size", 0],
            contains="batch-size")

    # 5. Data loss: no silent overwrite, never --out = the input model.
    victim = w / "victims"
    def fresh(name, src):
        d = victim / name
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
        return d
    b = fresh("bert-for-train", bert)
    r.probe("train --out <a BERT folder>", ["train", "--data", corpus, "--out", b, "--max-iters", 1],
            contains="--overwrite", unchanged=[b])
    g = fresh("gpt2-export", gpt2)
    r.probe("export --out = --model", ["export", "--model", g, "--out", g, "--dtype", "f16"], unchanged=[g])
    r.probe("export --out = --model via ..", ["export", "--model", g, "--out", g / ".." / g.name, "--dtype", "f16"],
            unchanged=[g])
    link = victim / "gpt2-link"
    if not link.exists():
        link.symlink_to(g)
    r.probe("export --out = a symlink to --model", ["export", "--model", g, "--out", link, "--dtype", "f16"],
            unchanged=[g])
    g2 = fresh("gpt2-export2", gpt2)
    r.probe("export --out <another model>", ["export", "--model", g, "--out", g2], contains="--overwrite",
            unchanged=[g2])
    r.probe("export --out <another model> --overwrite", ["export", "--model", g, "--out", g2, "--overwrite"],
            expect="ok")
    g3 = fresh("gpt2-tok", gpt2)
    r.probe("tokenizer train --out <a model folder>", ["tokenizer", "train", "--data", corpus, "--out", g3,
                                                       "--vocab-size", 300], contains="--overwrite", unchanged=[g3])
    b2 = fresh("bert-self", bert)
    r.probe("classify train --model X --out X", ["classify", "train", "--data", m["clf_data"], "--model", b2,
                                                 "--out", b2, "--epochs", 1], unchanged=[b2])
    g4 = fresh("gpt2-for-translate", gpt2)
    r.probe("translate train --out <a model>", ["translate", "train", "--pairs", m["pairs"], "--out", g4,
                                                "--holdout", 5, "--valid-size", 5, "--max-steps", 1],
            contains="--overwrite", unchanged=[g4])
    g5 = fresh("gpt2-for-quantize", gpt2)
    r.probe("quantize --out <another model>", ["quantize", "--model", gpt2, "--out", g5, "--dtype", "q8"],
            contains="--overwrite", unchanged=[g5])
    g6 = fresh("gpt2-for-classify", gpt2)
    r.probe("classify train --out <a model>", ["classify", "train", "--data", m["clf_data"], "--out", g6,
                                               "--preset", "bert-tiny", "--epochs", 1], contains="--overwrite",
            unchanged=[g6])
    t1 = fresh("t5-self", t5)
    r.probe("summarize train --model X --out X", ["summarize", "train", "--pairs", m["pairs"], "--model", t1,
                                                  "--out", t1, "--max-steps", 1], unchanged=[t1])
    g7 = fresh("gpt2-for-pretrain", gpt2)
    r.probe("pretrain --out <a model>", ["pretrain", "--arch", "t5", "--data", m["docs"], "--out", g7,
                                         "--max-steps", 1], contains="--overwrite", unchanged=[g7])
    d1 = fresh("docs-dir", w / "m/t5")
    r.probe("data dedup --out = the inputs' folder", ["data", "dedup", "--input", d1 / "holdout.src",
                                                      "--out", d1, "--exact"], unchanged=[d1])
    r.probe("data scrub --out <a model>", ["data", "scrub", "--input", m["docs"], "--out", d1],
            contains="--overwrite", unchanged=[d1])
    # metrics.jsonl through a symlink is not followed.
    run = w / "runs/symlink"
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    target = write(w / "victims/metrics-victim.txt", "precious\n")
    (run / "metrics.jsonl").symlink_to(target)
    r.probe("metrics.jsonl symlink is not followed", ["train", "--data", corpus, "--out", run, "--max-iters", 2,
                                                       "--n-layer", 1, "--n-embd", 16, "--n-head", 1,
                                                       "--block-size", 16, "--eval-interval", 1, "--eval-iters", 1],
            expect="either", unchanged=[target])
    # Resume from another working directory, with relative data paths.
    rel = w / "rel"
    if rel.exists():
        shutil.rmtree(rel)
    write(rel / "data.txt", TEXT)
    common = ["--n-layer", 1, "--n-embd", 16, "--n-head", 1, "--block-size", 16, "--eval-iters", 1]
    rc, _, err, _, _ = r.exec(["train", "--data", "data.txt", "--out", "run", "--max-iters", 2,
                               "--eval-interval", 1] + common, cwd=rel)
    if rc == 0:
        r.probe("--resume from another directory", ["train", "--out", rel / "run", "--resume", "--max-iters", 4],
                expect="ok", cwd=w)
    else:
        r.results.append(("--resume from another directory", "FAIL", f"first run failed: {err[-300:]}"))
        print(f"FAIL --resume from another directory: first run failed: {err[-300:]}")

    crash_safety(r, w)

    # 7. The careless user's first hour.
    # `cargo install` puts the attn binary alone on the PATH: `attn serve` must work so.
    alone = w / "alone"
    alone.mkdir(exist_ok=True)
    try:
        os.link(r.attn, alone / "attn")
    except OSError:
        shutil.copy(r.attn, alone / "attn")
    solo = Runner(alone / "attn", w, r.mem, r.timeout, r.only)
    solo.results = r.results
    solo.probe("attn serve with no attn-serve binary anywhere", ["serve", "--model", m["gpt2"], "--api-key", ""],
               contains="--api-key", env={"PATH": "/usr/bin:/bin"})
    solo.probe("attn serve --help alone", ["serve", "--help"], expect="ok", env={"PATH": "/usr/bin:/bin"},
               check=lambda rc, o, e: None if "--max-connections" in o else "no usage text")
    for sub in [["translate", "train"], ["classify", "train"], ["train"], ["generate"], ["eval", "perplexity"],
                ["translate"], ["classify", "predict"], ["embed"], ["quantize"], ["export"],
                ["classify", "eval"], ["eval", "bleu"], ["eval", "chrf"], ["eval", "classify"],
                ["eval", "rouge"], ["summarize"], ["summarize", "train"], ["pretrain"],
                ["data", "dedup"], ["data", "minhash"], ["data", "scrub"], ["data", "pii"], ["data", "tokenize"],
                ["data", "stats"],
                ["tokenizer", "train"], ["bench", "train"], ["bench", "generate"], ["bench", "bandwidth"],
                ["serve"]]:
        r.probe(f"help lines: {' '.join(sub)}", sub + ["--help"], expect="ok", check=help_complete)


def crash_safety(r: Runner, w: Path):
    """Kills, concurrent writers and leftovers around `attn train`'s output folder."""
    base = w / "crash"
    shutil.rmtree(base, ignore_errors=True)
    data = write(base / "data.txt", TEXT)
    args = ["--data", data, "--n-layer", 2, "--n-head", 2, "--n-embd", 32, "--block-size", 32,
            "--batch-size", 4, "--eval-interval", 5, "--eval-iters", 2, "--log-interval", 1, "--seed", 5]
    full = base / "full"
    r.setup(["train", "--out", full, "--max-iters", 300] + args)

    def record(name, problem, detail):
        verdict = "WRONG" if problem else "ok"
        r.results.append((name, verdict, problem or detail))
        print(f"{'FAIL' if problem else 'pass'} {name}: {verdict} {problem or detail}", flush=True)

    def spawn(argv):
        def cap():
            resource.setrlimit(resource.RLIMIT_AS, (r.mem, r.mem))
        return subprocess.Popen([str(r.attn)] + [str(a) for a in argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=cap)

    # kill -9 at several moments (some inside checkpoint saves: one every 5 steps), then
    # resume until done: the weights and the log must equal the uninterrupted run's.
    killed = base / "killed"
    import random
    rnd = random.Random(11)
    kills = 0
    first = True
    for attempt in range(30):
        argv = (["train", "--out", killed, "--max-iters", 300] + args) if first else \
               ["train", "--out", killed, "--resume"]
        p = spawn(argv)
        try:
            p.wait(timeout=rnd.uniform(0.2, 1.2) if kills < 6 else 300)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            kills += 1
        err = p.stderr.read().decode("utf-8", "replace")
        if p.returncode == 0:
            break
        if p.returncode != -9:
            # A run killed before its first checkpoint cannot be resumed: start again.
            if first and "no checkpoint" in err or "already holds a training run" in err:
                pass
            elif not first and "no checkpoint" in err:
                first = True
                continue
            else:
                record("kill -9 and resume", f"exit {p.returncode}: {err.strip()[-300:]}", "")
                break
        if (killed / "checkpoint").is_dir() or (killed / "checkpoint.old").is_dir():
            first = False
    same_w = tree_hash(killed / "checkpoint/model.safetensors") == tree_hash(full / "checkpoint/model.safetensors") \
        if (killed / "checkpoint/model.safetensors").exists() else False
    log_a = (full / "metrics.jsonl").read_text().splitlines()
    log_b = (killed / "metrics.jsonl").read_text().splitlines() if (killed / "metrics.jsonl").exists() else []
    def strip(lines):
        out = []
        for l in lines:
            try:
                v = json.loads(l)
            except json.JSONDecodeError:
                out.append(f"unparsable: {l}")
                continue
            out.append(json.dumps({k: x for k, x in v.items() if k != "tokens_per_sec"}, sort_keys=True))
        return out
    same_log = strip(log_a) == strip(log_b)
    record(f"kill -9 x{kills} during training and saves, then --resume",
           None if same_w and same_log else f"weights identical: {same_w}; log identical: {same_log} "
                                            f"({len(log_b)} lines vs {len(log_a)})",
           "weights and metrics.jsonl identical to the uninterrupted run")

    # Two runs on one folder: the second is refused, naming the first's PID.
    busy = base / "busy"
    p = spawn(["train", "--out", busy, "--max-iters", 100000] + args)
    time.sleep(1.5)
    rc, _, err, _, _ = r.exec(["train", "--out", busy, "--resume"])
    rc2, _, err2, _, _ = r.exec(["train", "--out", busy, "--max-iters", 3, "--overwrite"] + args)
    p.kill()
    p.wait()
    want = f"PID {p.pid}"
    record("a second run on a folder in use (--resume, --overwrite)",
           None if rc != 0 and rc2 != 0 and want in err and want in err2 else
           f"exit {rc}/{rc2}: {err.strip()[-200:]} / {err2.strip()[-200:]}",
           f"both refused naming {want}")

    # Leftovers of dead runs are removed on the next start; our live files are not.
    stale = [busy / ".model.safetensors.999999999.tmp", busy / "checkpoint.tmp"]
    stale[0].write_bytes(b"x" * 1000)
    stale[1].mkdir(exist_ok=True)
    (stale[1] / "model.safetensors").write_bytes(b"partial")
    rc, _, err, _, _ = r.exec(["train", "--out", busy, "--resume", "--max-iters", 1])
    left = [str(x) for x in stale if x.exists()]
    record("stale temporaries removed on --resume", None if not left else f"left: {left}; {err[-200:]}",
           "removed")


def help_complete(rc, out, err):
    """Every flag in --help has a help text."""
    blank = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        s = line.strip()
        if not s.startswith("--") and not (s.startswith("-") and ", --" in s):
            continue
        flag = s.split()[0] if s.startswith("--") else s.split(", ")[1].split()[0]
        if flag in ("--help", "--version"):
            continue
        parts = line.split("  ")
        has_inline = len([p for p in parts if p.strip()]) >= 2
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        has_next = nxt.startswith(" " * 10) and nxt.strip() and not nxt.strip().startswith("-")
        if not (has_inline or has_next):
            blank.append(flag)
    return f"flags without help: {', '.join(blank)}" if blank else None


def same_as_greedy(r: Runner, model: Path, out: str):
    rc, greedy, _, _, _ = r.exec(["generate", "--model", model, "--temperature", "0", "--max-new-tokens", 8,
                                  "--prompt", "RO"])
    return None if rc == 0 and greedy == out else f"differs from greedy: {out!r} vs {greedy!r}"


def corrupt_first_float(path: Path, value: float):
    """Overwrite the first f32 of the first tensor in a safetensors file."""
    import struct
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    start = 8 + n + info["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attn", default=str(ROOT / "target/debug/attn"))
    ap.add_argument("--mem-gib", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--only", action="append")
    ap.add_argument("--work", help="working folder (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    a = ap.parse_args()
    if a.work:
        work = Path(a.work)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="attn-probe-"))
    r = Runner(Path(a.attn).resolve(), work, int(a.mem_gib * GIB), a.timeout, a.only)
    t0 = time.time()
    models = make_models(r, work)
    print(f"models ready in {time.time() - t0:.0f} s under {work}", flush=True)
    probes(r, work, models)
    counts = {}
    for _, v, _ in r.results:
        counts[v] = counts.get(v, 0) + 1
    bad = [x for x in r.results if x[1] not in ("ok", "error")]
    print()
    print(f"probes run: {len(r.results)}; clear errors: {counts.get('error', 0)}; succeeded: {counts.get('ok', 0)}; "
          f"panics: {counts.get('PANIC', 0)}; aborts: {counts.get('ABORT', 0)}; killed: {counts.get('KILLED', 0)}; "
          f"hangs: {counts.get('HANG', 0)}; data lost: {counts.get('DATA LOST', 0)}; other failures: "
          f"{len(bad) - sum(counts.get(k, 0) for k in ('PANIC', 'ABORT', 'KILLED', 'HANG', 'DATA LOST'))}")
    print(f"{len(r.results) - len(bad)} passed, {len(bad)} failed")
    if not a.keep and not a.work:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
