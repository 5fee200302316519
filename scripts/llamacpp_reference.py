#!/usr/bin/env python3
"""attn's CPU decoding and prefill speed next to llama.cpp's, on the same model, per weight type.

    python3 scripts/llamacpp_reference.py \
        --llama-bench PATH/TO/llama.cpp/build/bin/llama-bench \
        --attn target/release/attn \
        --pair f32 gguf/gpt2-f32.gguf  models/gpt2 \
        --pair f16 gguf/gpt2-f16.gguf  models/gpt2-f16 \
        --pair q8  gguf/gpt2-q8_0.gguf models/gpt2-q8 \
        --pair q4  gguf/gpt2-q4_0.gguf models/gpt2-q4 \
        [--threads 2] [--repeats 3] [--prompt-tokens 128] [--gen-tokens 128]
        [--bandwidth-gbs X] [--json]

What it measures, for each --pair DTYPE GGUF ATTN_DIR (the GGUF and the attn folder are
the same model: the attn folder from `attn quantize --model DIR --out DIR --dtype
f16|q8|q4`, or the f32 folder itself; the GGUF from llama.cpp's convert_hf_to_gguf.py and
llama-quantize):

  * llama.cpp: `llama-bench -t THREADS -r 1 -o json`, once with `-p P -n 0` (prefill of P
    tokens, "pp") and once with `-p 0 -n N -d DEPTH` (decoding N tokens after DEPTH tokens
    of context, "tg"). DEPTH defaults to P so that both programs decode at the same
    context lengths (attn decodes after its P-token prompt); `--llama-depth 0` gives
    llama-bench's plain tgN.
  * attn: `attn bench generate --model ATTN_DIR --prompt-tokens P --max-new-tokens N
    --json` with RAYON_NUM_THREADS=THREADS; its `decode_tokens_per_sec` and
    `prefill_tokens_per_sec` (time to the first token: the prompt's forward pass and the
    first token's logits; llama-bench's pp also computes the last token's logits only).

The two programs alternate, pair by pair, --repeats times; the best of each figure is
kept, and so is every round's pair of figures: the JSON's `rounds` and
`median_decode_ratio` / `median_prefill_ratio`, the median over rounds of the ratio of
the two programs' figures in the same round (taken a few seconds apart, so a machine
whose memory bandwidth drifts over minutes moves both). The table shows tokens/s, attn ÷ llama.cpp, and the fraction of the memory-bandwidth
bound each program reaches while decoding: weight bytes read per token × tokens/s ÷ read
bandwidth. Weight bytes per token: attn's `weight_bytes_per_token` (else the size of the
folder's *.safetensors files); for llama.cpp the GGUF's tensor data, parsed from the file,
counting one row of the position-embedding table (and of the token embedding when the
model has a separate output matrix; GPT-2 ties them, so the embedding is read whole as
the output layer), else the file size. The bandwidth: --bandwidth-gbs, else `attn bench
bandwidth --json` (read_gb_per_sec, all threads), else a single-threaded numpy sum over a
1 GiB float32 array (best of 5); the source is printed. Decoding reads the KV cache too,
which the bound leaves out. Note that llama.cpp keeps its KV cache in f16 by default.

Building llama.cpp for it (a benchmark reference only, outside this repository):

    pip download --no-binary llama-cpp-python --no-deps llama-cpp-python   # its sdist vendors llama.cpp
    tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
    # one build per instruction set: GGML_AVX512=OFF (AVX2 + FMA) and =ON
    cmake -S . -B build-avx2 -DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DCMAKE_BUILD_TYPE=Release \
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF
    cmake --build build-avx2 -j2 --target llama-bench llama-quantize
    # the models on both sides: scripts/llamacpp_models.py (random GPT-2 and Llama
    # folders, attn quantize, convert_hf_to_gguf.py, llama-quantize)

On CPUs that report AMX where the hypervisor does not really enable it, llama.cpp's
quantized prefill dies with SIGILL; add -DCMAKE_C_FLAGS=... and -DCMAKE_CXX_FLAGS=
"-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" to the configure line. A tokenizer that
convert_hf_to_gguf.py does not know stops it ("BPE pre-tokenizer was not recognized"); a
GPT-2 byte-level BPE tokenizer is its "gpt-2" pre-tokenizer.

Standard library only (numpy just for the fallback bandwidth). Exits 1 when a run fails,
2 on bad arguments.
"""

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time


class Failure(Exception):
    """A normal failure: printed as one line, without a traceback."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Paths and subprocesses


def executable(path, what):
    if os.sep not in path and not os.path.exists(path):
        found = shutil.which(path)
        if found:
            path = found
    if not os.path.exists(path):
        raise Failure(f"{what} not found: {path}")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise Failure(f"{what} is not an executable file: {path}")
    return os.path.abspath(path)


def run_json(cmd, env=None, timeout=1800, what="command"):
    """Run cmd, return its stdout parsed as JSON (the first JSON value in it)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{what} took over {timeout} s: {' '.join(cmd)}")
    except OSError as e:
        raise Failure(f"{what} could not start: {e}")
    if p.returncode != 0:
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-8:])
        sig = f" (signal {-p.returncode})" if p.returncode < 0 else ""
        raise Failure(f"{what} failed with exit code {p.returncode}{sig}: {' '.join(cmd)}\n{tail}")
    out = p.stdout
    starts = [i for i in (out.find("["), out.find("{")) if i >= 0]
    if not starts:
        raise Failure(f"{what} printed no JSON: {' '.join(cmd)}\n{out[-500:]}")
    try:
        value, _ = json.JSONDecoder().raw_decode(out[min(starts):])
    except json.JSONDecodeError as e:
        raise Failure(f"{what} printed JSON that does not parse ({e}): {' '.join(cmd)}")
    return value


# ---------------------------------------------------------------------------------------
# GGUF: tensor data bytes read per decoded token


class GgufError(Exception):
    pass


def gguf_tensors(path):
    """[(name, dims, nbytes)] from a GGUF file's header; sizes from the tensor offsets."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        # The tokenizer arrays make headers of a few MB; read more as needed.
        buf = bytearray(f.read(min(size, 16 << 20)))

        def need(end):
            nonlocal buf
            while end > len(buf):
                more = f.read(max(end - len(buf), 16 << 20))
                if not more:
                    raise GgufError("truncated header")
                buf += more

        pos = 0

        def take(fmt):
            nonlocal pos
            n = struct.calcsize(fmt)
            need(pos + n)
            v = struct.unpack_from(fmt, buf, pos)
            pos += n
            return v[0] if len(v) == 1 else v

        def string():
            nonlocal pos
            n = take("<Q")
            need(pos + n)
            s = bytes(buf[pos:pos + n])
            pos += n
            return s.decode("utf-8", "replace")

        scalar = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                  10: "<Q", 11: "<q", 12: "<d"}

        def value(t):
            nonlocal pos
            if t in scalar:
                return take(scalar[t])
            if t == 8:
                return string()
            if t == 9:
                et, n = take("<I"), take("<Q")
                if et in scalar:  # skip fixed-size arrays without decoding them
                    step = struct.calcsize(scalar[et]) * n
                    need(pos + step)
                    pos += step
                    return None
                for _ in range(n):
                    value(et)
                return None
            raise GgufError(f"unknown metadata type {t}")

        if take("<4s") != b"GGUF":
            raise GgufError("not a GGUF file")
        version = take("<I")
        if version < 2:
            raise GgufError(f"GGUF version {version} is not supported")
        n_tensors, n_kv = take("<Q"), take("<Q")
        alignment = 32
        for _ in range(n_kv):
            key = string()
            v = value(take("<I"))
            if key == "general.alignment" and isinstance(v, int) and v > 0:
                alignment = v
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = [take("<Q") for _ in range(take("<I"))]
            take("<I")  # ggml type: the size comes from the offsets instead
            infos.append((name, dims, take("<Q")))
    data_start = (pos + alignment - 1) // alignment * alignment
    ordered = sorted(infos, key=lambda t: t[2])
    out = []
    for i, (name, dims, off) in enumerate(ordered):
        end = ordered[i + 1][2] if i + 1 < len(ordered) else size - data_start
        if end < off:
            raise GgufError("tensor offsets out of order")
        out.append((name, dims, end - off))  # includes up to alignment-1 bytes of padding
    return out


def gguf_bytes_per_token(path):
    """(bytes, how): weights one decoded token reads, from the tensor table (else file size)."""
    try:
        tensors = gguf_tensors(path)
    except (GgufError, OSError, struct.error, OverflowError, MemoryError) as e:
        return os.path.getsize(path), f"file size (header unreadable: {e})"
    names = {t[0] for t in tensors}
    total = 0
    for name, dims, nbytes in tensors:
        rows = dims[1] if len(dims) >= 2 else 1
        lookup = name == "position_embd.weight" or (
            name == "token_embd.weight" and "output.weight" in names)
        total += nbytes // max(rows, 1) if lookup else nbytes
    return total, "GGUF tensor data (embedding lookups count one row)"


# ---------------------------------------------------------------------------------------
# Memory bandwidth


def bandwidth(args, attn):
    if args.bandwidth_gbs is not None:
        return args.bandwidth_gbs, "--bandwidth-gbs"
    if attn is not None:
        try:
            v = run_json([attn, "bench", "bandwidth", "--json"], env=attn_env(args),
                         timeout=600, what="attn bench bandwidth")
            gbs = float(v["read_gb_per_sec"])
            return gbs, f"attn bench bandwidth ({v.get('threads', '?')} threads)"
        except (Failure, KeyError, TypeError, ValueError) as e:
            log(f"note: attn bench bandwidth unavailable ({str(e).splitlines()[0]}); using numpy")
    try:
        import numpy as np
    except ImportError:
        return None, "none (give --bandwidth-gbs; numpy is not installed)"
    a = np.full((1 << 30) // 4, 1.0, dtype=np.float32)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    del a
    return (1 << 30) / best / 1e9, "numpy sum of 1 GiB float32, 1 thread, best of 5"


# ---------------------------------------------------------------------------------------
# The two benchmarks


def attn_env(args):
    env = dict(os.environ)
    env["RAYON_NUM_THREADS"] = str(args.threads)
    return env


def llama_once(args, gguf):
    """(prefill tok/s, decode tok/s) from one llama-bench sample of each."""
    base = [args.llama_bench, "-m", gguf, "-t", str(args.threads), "-r", "1", "-o", "json"]
    pp = run_json(base + ["-p", str(args.prompt_tokens), "-n", "0"],
                  timeout=args.timeout, what="llama-bench (prefill)")
    tg = run_json(base + ["-p", "0", "-n", str(args.gen_tokens), "-d", str(args.llama_depth)],
                  timeout=args.timeout, what="llama-bench (decode)")

    def rate(rows, key):
        for r in rows if isinstance(rows, list) else []:
            if isinstance(r, dict) and r.get(key, 0) > 0 and "avg_ts" in r:
                return float(r["avg_ts"])
        raise Failure(f"llama-bench output has no {key} test for {gguf}")

    return rate(pp, "n_prompt"), rate(tg, "n_gen")


def attn_once(args, model):
    v = run_json([args.attn, "bench", "generate", "--model", model,
                  "--max-new-tokens", str(args.gen_tokens),
                  "--prompt-tokens", str(args.prompt_tokens), "--json"],
                 env=attn_env(args), timeout=args.timeout, what="attn bench generate")
    try:
        return (float(v["prefill_tokens_per_sec"]), float(v["decode_tokens_per_sec"]),
                v.get("weight_bytes_per_token"), v)
    except (KeyError, TypeError, ValueError):
        raise Failure("attn bench generate --json lacks prefill_tokens_per_sec / "
                      f"decode_tokens_per_sec: {json.dumps(v)[:300]}")


def folder_weight_bytes(model):
    n = sum(os.path.getsize(os.path.join(model, f)) for f in os.listdir(model)
            if f.endswith(".safetensors"))
    return n or None


# ---------------------------------------------------------------------------------------
# Output


def fmt(x, spec=".1f"):
    return "n/a" if x is None else format(x, spec)


def pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


def ratio(a, b):
    return a / b if a is not None and b else None


def median_ratio(rounds, key):
    """The median over rounds of attn ÷ llama.cpp within each round (None if a side
    was skipped)."""
    rs = sorted(r["attn"][key] / r["llama_cpp"][key] for r in rounds
                if r.get("attn") and r.get("llama_cpp") and r["llama_cpp"][key])
    if not rs:
        return None
    m = len(rs) // 2
    return rs[m] if len(rs) % 2 else (rs[m - 1] + rs[m]) / 2


def table(rows, bw, bw_source, args):
    head = ["dtype", "attn dec", "llama dec", "ratio", "med", "attn pre", "llama pre", "ratio",
            "med", "attn bw", "llama bw", "attn MB/tok", "llama MB/tok"]
    lines = []
    for r in rows:
        a, l = r["attn"], r["llama_cpp"]
        lines.append([
            r["dtype"], fmt(a["decode_tokens_per_sec"]), fmt(l["decode_tokens_per_sec"]),
            fmt(r["decode_ratio"], ".2f"), fmt(r["median_decode_ratio"], ".2f"),
            fmt(a["prefill_tokens_per_sec"]), fmt(l["prefill_tokens_per_sec"]),
            fmt(r["prefill_ratio"], ".2f"), fmt(r["median_prefill_ratio"], ".2f"),
            pct(a["bound_fraction"]), pct(l["bound_fraction"]),
            fmt(None if a["weight_bytes_per_token"] is None else a["weight_bytes_per_token"] / 1e6),
            fmt(None if l["weight_bytes_per_token"] is None else l["weight_bytes_per_token"] / 1e6),
        ])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    out = [f"tokens/s, {args.threads} threads, best of {args.repeats}; prefill = {args.prompt_tokens} "
           f"tokens; decode = {args.gen_tokens} tokens after {args.prompt_tokens} (attn) / "
           f"{args.llama_depth} (llama.cpp) tokens of context; ratio = attn / llama.cpp "
           "(best against best); med = the median over rounds of the ratio within a round",
           "  ".join(h.rjust(w) for h, w in zip(head, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.rjust(w) for c, w in zip(x, widths)) for x in lines]
    out.append(f"bw = weight bytes per token × decode tokens/s ÷ {fmt(bw)} GB/s read bandwidth "
               f"({bw_source})")
    for r in rows:
        src = [f"{who} from {r[k]['weight_bytes_source']}"
               for who, k in (("llama.cpp", "llama_cpp"), ("attn", "attn")) if r[k]["weight_bytes_source"]]
        out.append(f"{r['dtype']} bytes/token: " + "; ".join(src))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Compare attn's CPU decode and prefill tokens/s with llama.cpp's llama-bench.",
        epilog="A path given as '-' skips that side (e.g. to measure llama.cpp alone).")
    p.add_argument("--llama-bench", required=True, help="llama.cpp's llama-bench binary, or '-'")
    p.add_argument("--attn", required=True, help="the attn binary, or '-'")
    p.add_argument("--pair", nargs=3, action="append", required=True,
                   metavar=("DTYPE", "GGUF", "ATTN_DIR"),
                   help="a weight type's label, its GGUF file and attn model folder (repeatable; "
                        "either path may be '-')")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; best kept (default 3)")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--llama-depth", type=int, default=None,
                   help="context before llama-bench's decode test (default: --prompt-tokens, as attn)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="read bandwidth in GB/s (default: attn bench bandwidth, else numpy)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds allowed per run")
    p.add_argument("--json", action="store_true",
                   help="print a JSON object on stdout (the table then goes to stderr)")
    args = p.parse_args(argv)
    for name in ("threads", "repeats", "prompt_tokens", "gen_tokens", "timeout"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.llama_depth is None:
        args.llama_depth = args.prompt_tokens
    if args.llama_depth < 0:
        p.error("--llama-depth must be at least 0")
    if args.bandwidth_gbs is not None and args.bandwidth_gbs <= 0:
        p.error("--bandwidth-gbs must be positive")
    return args


def check_paths(args):
    args.llama_bench = None if args.llama_bench == "-" else executable(args.llama_bench, "llama-bench")
    args.attn = None if args.attn == "-" else executable(args.attn, "attn binary")
    pairs = []
    for dtype, gguf, model in args.pair:
        if gguf != "-" and args.llama_bench:
            if not os.path.isfile(gguf):
                raise Failure(f"{dtype}: GGUF file not found: {gguf}")
            gguf = os.path.abspath(gguf)
        else:
            gguf = None
        if model != "-" and args.attn:
            if not os.path.isdir(model):
                raise Failure(f"{dtype}: attn model folder not found: {model}")
            if not os.path.isfile(os.path.join(model, "config.json")):
                raise Failure(f"{dtype}: {model} has no config.json (not a model folder)")
            model = os.path.abspath(model)
        else:
            model = None
        if gguf is None and model is None:
            raise Failure(f"{dtype}: nothing to measure (both sides skipped)")
        pairs.append((dtype, gguf, model))
    if len({d for d, _, _ in pairs}) != len(pairs):
        raise Failure("each --pair needs its own DTYPE label")
    return pairs


def main(argv=None):
    args = parse_args(argv)
    pairs = check_paths(args)
    best = {d: {"lp": None, "ld": None, "ap": None, "ad": None, "awb": None, "ajson": None,
                "rounds": []}
            for d, _, _ in pairs}
    for rep in range(args.repeats):
        for dtype, gguf, model in pairs:
            b = best[dtype]
            this = {"llama_cpp": None, "attn": None}
            if gguf:
                log(f"[{rep + 1}/{args.repeats}] {dtype}: llama-bench {os.path.basename(gguf)}")
                pp, tg = llama_once(args, gguf)
                b["lp"], b["ld"] = max(pp, b["lp"] or 0), max(tg, b["ld"] or 0)
                this["llama_cpp"] = {"prefill": pp, "decode": tg}
            if model:
                log(f"[{rep + 1}/{args.repeats}] {dtype}: attn bench generate {os.path.basename(model)}")
                pp, tg, wb, v = attn_once(args, model)
                b["ap"], b["ad"] = max(pp, b["ap"] or 0), max(tg, b["ad"] or 0)
                b["awb"], b["ajson"] = wb, v
                this["attn"] = {"prefill": pp, "decode": tg}
            b["rounds"].append(this)
    bw, bw_source = bandwidth(args, args.attn)

    rows = []
    for dtype, gguf, model in pairs:
        b = best[dtype]
        lwb = lsrc = awb = asrc = None
        if gguf:
            lwb, lsrc = gguf_bytes_per_token(gguf)
        if model:
            if b["awb"]:
                awb, asrc = int(b["awb"]), "attn's weight_bytes_per_token"
            else:
                awb, asrc = folder_weight_bytes(model), "the folder's *.safetensors size"

        def frac(wb, tps):
            return wb * tps / (bw * 1e9) if wb and tps and bw else None

        rows.append({
            "dtype": dtype,
            "attn": {"model": model, "decode_tokens_per_sec": b["ad"],
                     "prefill_tokens_per_sec": b["ap"], "weight_bytes_per_token": awb,
                     "weight_bytes_source": asrc, "bound_fraction": frac(awb, b["ad"]),
                     "weight_type": (b["ajson"] or {}).get("weight_type")},
            "llama_cpp": {"gguf": gguf, "decode_tokens_per_sec": b["ld"],
                          "prefill_tokens_per_sec": b["lp"], "weight_bytes_per_token": lwb,
                          "weight_bytes_source": lsrc, "bound_fraction": frac(lwb, b["ld"]),
                          "file_bytes": os.path.getsize(gguf) if gguf else None},
            "decode_ratio": ratio(b["ad"], b["ld"]),
            "prefill_ratio": ratio(b["ap"], b["lp"]),
            "rounds": b["rounds"],
            "median_decode_ratio": median_ratio(b["rounds"], "decode"),
            "median_prefill_ratio": median_ratio(b["rounds"], "prefill"),
        })
    text = table(rows, bw, bw_source, args)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps({
            "threads": args.threads, "repeats": args.repeats, "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens, "llama_depth": args.llama_depth,
            "read_gb_per_sec": bw, "bandwidth_source": bw_source, "rows": rows,
        }, indent=2))
    else:
        print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
