#!/usr/bin/env python3
"""Small Hugging Face reference fixtures for the `attn` Rust tests.

Run from the repository root (offline; nothing is downloaded):

    $(scripts/python_env.sh) scripts/make_hf_fixtures.py

Writes crates/attn/tests/fixtures/hf/<name>/ for each tiny random model:

    config.json, model.safetensors   save_pretrained() of the model
    generation_config.json           (generative models only)
    reference.safetensors            inputs and reference outputs (float32;
                                     ids / masks / labels int64)
    meta.json                        what the tensors are, versions, and the
                                     key names found in model.safetensors

and crates/attn/tests/fixtures/hf/minilm/ (reference.safetensors + meta.json
only) for the real all-MiniLM-L6-v2 encoder under $ATTN_MODELS_DIR (default
../shared/models beside the checkout).

Every random model is built from its config under torch.manual_seed(seed),
then N(0, 0.02) noise is added to every trainable parameter so that biases
and norm weights are not trivially 0 / 1.  Inputs come from a separate
torch.Generator seeded per config.  At the end every model folder is reloaded
with from_pretrained and its recorded logits are recomputed; the max abs
difference is printed (expected 0).

    --only NAME[,NAME...]   write only these fixtures (others are left as they are)
    --skip-minilm           do not write minilm/
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.metadata as md
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    BertConfig,
    DistilBertConfig,
    GPT2Config,
    LlamaConfig,
    MarianConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
    T5Config,
    XLMRobertaConfig,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "attn" / "tests" / "fixtures" / "hf"
MINILM_SRC = Path(os.environ.get("ATTN_MODELS_DIR", REPO.parent / "shared" / "models")) / "all-MiniLM-L6-v2"
NOISE_STD = 0.02
KEEP_FILES = {"config.json", "model.safetensors", "generation_config.json"}

torch.set_num_threads(2)
torch.set_default_dtype(torch.float32)


def versions():
    v = {"transformers": transformers.__version__, "torch": torch.__version__}
    for pkg in ("safetensors", "tokenizers", "sentence-transformers"):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    v["python"] = sys.version.split()[0]
    return v


# --------------------------------------------------------------------------
# helpers


def add_noise(model):
    """N(0, NOISE_STD) on every trainable parameter (tied ones once)."""
    skipped = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                skipped.append(name)
                continue
            p.add_(torch.randn_like(p) * NOISE_STD)
    return skipped


def save_model(model, d: Path):
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x always writes safetensors
    model.save_pretrained(d, **kwargs)
    removed = []
    for f in sorted(d.iterdir()):
        if f.name not in KEEP_FILES:
            removed.append(f.name)
            if f.is_dir():
                shutil.rmtree(f)
            else:
                f.unlink()
    with safe_open(str(d / "model.safetensors"), framework="pt") as sf:
        keys = sorted(sf.keys())
        shapes = {k: list(sf.get_slice(k).get_shape()) for k in keys}
    return {"removed_extra_files": removed, "checkpoint_keys": {k: shapes[k] for k in keys}}


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def i64(t):
    return t.detach().to(torch.int64).contiguous().clone()


def grads_of(model, tensors):
    names = []
    no_grad = []
    for name, p in model.named_parameters():
        if p.grad is None:
            no_grad.append(name)
            continue
        tensors[f"grad.{name}"] = f32(p.grad)
        names.append(name)
    return names, no_grad


def tied_groups(model):
    """Parameter names (remove_duplicate=False) that share storage."""
    by_id = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return [v for v in by_id.values() if len(v) > 1]


def write_reference(d: Path, tensors, meta):
    for k, t in tensors.items():
        assert t.dtype in (torch.float32, torch.int64), (k, t.dtype)
    save_file(tensors, str(d / "reference.safetensors"))
    meta["reference_tensors"] = {k: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape)}
                                 for k, t in sorted(tensors.items())}
    meta["versions"] = versions()
    with open(d / "meta.json", "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
        f.write("\n")


def config_summary(cfg, keys):
    return {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}


# --------------------------------------------------------------------------
# decoder-only LMs (GPT-2, Llama)


def sliding_window_ppl(model, ids, max_length, stride):
    seq_len = ids.size(1)
    nll_sum = 0.0
    n_tokens = 0
    prev_end = 0
    windows = []
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        inp = ids[:, begin:end]
        target = inp.clone()
        target[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(inp, labels=target).loss
        count = int((target[:, 1:] != -100).sum())
        nll_sum += float(loss.double()) * count
        n_tokens += count
        windows.append({"begin": begin, "end": end, "trg_len": trg_len, "scored": count, "loss": float(loss)})
        prev_end = end
        if end == seq_len:
            break
    return nll_sum / n_tokens, n_tokens, windows


def cached_logits(model, input_ids):
    """Logits of feeding input_ids one position at a time through the KV cache, as
    generate() does: [batch, len, vocab]. Equal to the full forward pass except where
    transformers' arithmetic depends on the call (dynamic NTK scaling recomputes the
    rotary frequencies for each call's length, and cached keys keep their rotation)."""
    out, past = [], None
    with torch.no_grad():
        for t in range(input_ids.size(1)):
            r = model(input_ids[:, t:t + 1], past_key_values=past, use_cache=True)
            past = r.past_key_values
            out.append(r.logits[:, -1])
    return torch.stack(out, dim=1)


def make_causal(name, cfg, seed, ppl=False, length=9):
    d = OUT / name
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    skipped = add_noise(model)
    info = save_model(model, d)

    V = cfg.vocab_size
    n_layer = cfg.num_hidden_layers
    g = torch.Generator().manual_seed(1000 + seed)
    input_ids = torch.randint(0, V, (2, length), generator=g)
    tensors = {"input_ids": i64(input_ids)}

    model.zero_grad(set_to_none=True)
    out = model(input_ids, labels=input_ids, output_hidden_states=True, output_attentions=True)
    out.loss.backward()
    tensors["logits"] = f32(out.logits)
    for i, a in enumerate(out.attentions):
        tensors[f"attentions.{i}"] = f32(a)
    tensors["loss"] = f32(out.loss.reshape(1))
    hs = out.hidden_states
    assert len(hs) == n_layer + 1, len(hs)
    for i, h in enumerate(hs):
        tensors[f"hidden_states.{i}"] = f32(h)
    dynamic = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type") == "dynamic"
    if dynamic:
        # Dynamic NTK scaling gives the logits of the first L-1 positions frequencies
        # that depend on whether the last token is there. attn trains on windows of
        # inputs and targets, so its loss and gradients are taken here the same way:
        # the logits of input_ids[:, :-1] against input_ids[:, 1:]. A short forward
        # first resets transformers' cached frequencies (they only grow otherwise).
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            model(input_ids[:, :2])
        lo = model(input_ids[:, :-1]).logits
        loss = F.cross_entropy(lo.reshape(-1, V), input_ids[:, 1:].reshape(-1))
        loss.backward()
        tensors["loss"] = f32(loss.reshape(1))
    grad_names, no_grad = grads_of(model, tensors)
    tensors["cached_logits"] = f32(cached_logits(model, input_ids))

    # is the last hidden state the post-final-norm one?
    with torch.no_grad():
        base = model.base_model(input_ids, output_hidden_states=True)
        last_is_normed = bool(torch.equal(base.hidden_states[-1], base.last_hidden_state))

    meta = {
        "name": name,
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "seed": seed,
        "input_seed": 1000 + seed,
        "noise_std": NOISE_STD,
        "noise_skipped_params": skipped,
        "config": config_summary(cfg, ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "num_key_value_heads", "intermediate_size", "max_position_embeddings",
                                       "n_positions", "rms_norm_eps", "layer_norm_epsilon", "rope_parameters",
                                       "tie_word_embeddings", "activation_function", "hidden_act",
                                       "head_dim", "attention_bias", "mlp_bias", "sliding_window",
                                       "use_sliding_window", "max_window_layers", "layer_types"]),
        "inputs": {"input_ids": f"int64 [2, {length}], uniform random ids in [0, vocab_size)"},
        "outputs": {
            "logits": f"model(input_ids).logits, [2, {length}, vocab]",
            "cached_logits": "the logits of feeding input_ids one position at a time with use_cache=True "
                             "(as generate does), [2, len, vocab]",
            "hidden_states.{i}": f"output_hidden_states, i = 0..{n_layer}; 0 = embeddings; the last one has the "
                                 "final norm applied (it equals last_hidden_state)",
            "loss": "model(input_ids, labels=input_ids).loss (shift inside HF, mean over 2*8 tokens), shape [1]",
            "grad.{param}": "d loss / d param for every model.named_parameters() entry (tied weights listed once)",
            "attentions.{i}": "output_attentions of layer i (eager): softmax probabilities [2, heads, len, len]",
        },
        "hidden_states_last_equals_last_hidden_state": last_is_normed,
        "loss_and_grads_from": ("cross_entropy(model(input_ids[:, :-1]).logits, input_ids[:, 1:]) after a "
                                "2-token forward that resets the dynamic rotary frequencies"
                                if dynamic else "model(input_ids, labels=input_ids).loss"),
        "grad_params": grad_names,
        "params_without_grad": no_grad,
        "tied_parameter_groups": tied_groups(model),
        **info,
    }

    if ppl:
        g2 = torch.Generator().manual_seed(5000 + seed)
        ppl_ids = torch.randint(0, V, (1, 200), generator=g2)
        nll, n_tok, windows = sliding_window_ppl(model, ppl_ids, 32, 16)
        tensors["ppl_ids"] = i64(ppl_ids)
        tensors["ppl_nll"] = torch.tensor([nll], dtype=torch.float32)
        tensors["ppl_tokens"] = torch.tensor([n_tok], dtype=torch.int64)
        meta["inputs"]["ppl_ids"] = "int64 [1, 200], uniform random ids (generator seed 5000+seed)"
        meta["outputs"]["ppl_nll"] = ("sliding-window mean NLL (transformers perplexity guide recipe), "
                                      "sum(loss_w * scored_w) / sum(scored_w), shape [1]; ppl = exp(ppl_nll)")
        meta["outputs"]["ppl_tokens"] = "total scored tokens, sum over windows of (target[:, 1:] != -100).sum()"
        meta["ppl"] = {"max_length": 32, "stride": 16, "nll_float64": nll, "tokens": n_tok, "windows": windows}

    write_reference(d, tensors, meta)

    def check():
        m = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
        with torch.no_grad():
            logits = m(input_ids).logits
        return state_diff(model, m), float((logits - tensors["logits"]).abs().max())

    return check


# --------------------------------------------------------------------------
# BERT


def make_bert(name, cfg, seed):
    """A sequence classifier of any BERT-style family (BERT, RoBERTa, XLM-RoBERTa,
    DistilBERT): the padded batch's hidden states, logits, loss and every gradient."""
    d = OUT / name
    kind = cfg.model_type
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    skipped = add_noise(model)
    info = save_model(model, d)  # before any forward: forward sets config.problem_type

    V, H = cfg.vocab_size, cfg.hidden_size
    pad = cfg.pad_token_id
    g = torch.Generator().manual_seed(1000 + seed)
    if kind == "bert":  # the draw the BERT fixtures were made with
        input_ids = torch.randint(1, V, (2, 8), generator=g)
    else:
        input_ids = torch.randint(0, V, (2, 8), generator=g)
        input_ids[input_ids == pad] = (pad + 1) % V  # real tokens are not the padding id
    input_ids[1, 5:] = pad
    attention_mask = torch.ones(2, 8, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    tensors = {
        "input_ids": i64(input_ids),
        "attention_mask": i64(attention_mask),
    }
    kw = dict(input_ids=input_ids, attention_mask=attention_mask)
    if kind == "bert":
        token_type_ids = torch.zeros(2, 8, dtype=torch.int64)
        token_type_ids[0, 4:] = 1
        tensors["token_type_ids"] = i64(token_type_ids)
        kw["token_type_ids"] = token_type_ids
    labels = torch.randint(0, cfg.num_labels, (2,), generator=g)
    tensors["labels"] = i64(labels)
    with torch.no_grad():
        base = model.base_model(**kw, output_hidden_states=True)
    tensors["last_hidden_state"] = f32(base.last_hidden_state)
    if getattr(base, "pooler_output", None) is not None:
        tensors["pooler_output"] = f32(base.pooler_output)
    for i, h in enumerate(base.hidden_states):
        tensors[f"hidden_states.{i}"] = f32(h)

    model.zero_grad(set_to_none=True)
    out = model(**kw, labels=labels)
    out.loss.backward()
    tensors["logits"] = f32(out.logits)
    tensors["loss"] = f32(out.loss.reshape(1))
    grad_names, no_grad = grads_of(model, tensors)

    meta = {
        "name": name,
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "seed": seed,
        "input_seed": 1000 + seed,
        "noise_std": NOISE_STD,
        "noise_skipped_params": skipped,
        "config": config_summary(cfg, ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                       "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                       "hidden_act", "layer_norm_eps", "pad_token_id", "num_labels",
                                       "problem_type", "model_type", "dim", "n_layers", "n_heads",
                                       "hidden_dim", "activation"]),
        "inputs": {
            "input_ids": "int64 [2, 8]; random ids other than pad_token_id; row 1 padded with pad_token_id "
                         "at positions 5..7",
            "attention_mask": "int64 [2, 8]; 0 on the padded positions",
            "token_type_ids": "(bert only) int64 [2, 8]; row 0: 0 for positions 0..3, 1 after; row 1 all 0",
            "labels": "int64 [2], class ids",
        },
        "outputs": {
            "last_hidden_state": "model.base_model(...).last_hidden_state [2, 8, H] (padded positions are "
                                 "computed too; they are not meaningful and may be masked in comparisons)",
            "pooler_output": "(bert only) base_model(...).pooler_output [2, H] = tanh(dense(h[:, 0]))",
            "hidden_states.{i}": "model.base_model(..., output_hidden_states=True).hidden_states, i = "
                                 "0..num_layers; 0 = embeddings after LayerNorm",
            "logits": "…ForSequenceClassification logits [2, num_labels]",
            "loss": "cross-entropy loss with labels (mean over batch), shape [1]",
            "grad.{param}": "d loss / d param for every parameter of the classification model. Note: "
                            "word_embeddings has padding_idx = pad_token_id, so its pad row gets zero gradient",
        },
        "grad_params": grad_names,
        "params_without_grad": no_grad,
        **info,
    }
    write_reference(d, tensors, meta)

    def check():
        m = AutoModelForSequenceClassification.from_pretrained(d, attn_implementation="eager",
                                                               dtype=torch.float32).eval()
        with torch.no_grad():
            logits = m(**kw).logits
            hidden = m.base_model(**kw).last_hidden_state
        diff = max(float((logits - tensors["logits"]).abs().max()),
                   float((hidden - tensors["last_hidden_state"]).abs().max()))
        return state_diff(model, m), diff

    return check


# --------------------------------------------------------------------------
# Marian


def greedy_margins(model, input_ids, attention_mask, gen_kwargs):
    """Smallest top-1 minus top-2 processed score over the greedy steps (finite ones)."""
    kw = dict(gen_kwargs, num_beams=1, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        r = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
    margins = []
    for s in r.scores:
        top = s.topk(2, dim=-1).values
        m = top[:, 0] - top[:, 1]
        margins.append([float(x) for x in m])
    finite = [x for row in margins for x in row if x != float("inf") and x == x]
    return (min(finite) if finite else None), margins


def make_marian(name, cfg, seed, eos_bias):
    from transformers.models.marian.modeling_marian import shift_tokens_right

    d = OUT / name
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    skipped = add_noise(model)
    with torch.no_grad():
        model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias) * 0.05)
        model.final_logits_bias[0, cfg.eos_token_id] += eos_bias
    info = save_model(model, d)

    V, pad, eos, start = cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id
    lo, hi = 1, min(pad, V)  # random "word" ids avoid eos (0) and pad
    g = torch.Generator().manual_seed(1000 + seed)
    input_ids = torch.randint(lo, hi, (2, 7), generator=g)
    input_ids[0, 6] = eos
    input_ids[1, 4] = eos
    input_ids[1, 5:] = pad
    attention_mask = torch.ones(2, 7, dtype=torch.int64)
    attention_mask[1, 5:] = 0
    decoder_input_ids = torch.randint(lo, hi, (2, 6), generator=g)
    decoder_input_ids[:, 0] = start
    labels = torch.cat([decoder_input_ids[:, 1:], torch.randint(lo, hi, (2, 1), generator=g)], dim=1)
    loss_dec = shift_tokens_right(labels, pad, start)
    assert torch.equal(loss_dec, decoder_input_ids)

    tensors = {
        "input_ids": i64(input_ids),
        "attention_mask": i64(attention_mask),
        "decoder_input_ids": i64(decoder_input_ids),
        "labels": i64(labels),
        "loss_decoder_input_ids": i64(loss_dec),
    }
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    tensors["encoder_last_hidden_state"] = f32(out.encoder_last_hidden_state)
    tensors["logits"] = f32(out.logits)

    model.zero_grad(set_to_none=True)
    lout = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    lout.loss.backward()
    tensors["loss"] = f32(lout.loss.reshape(1))
    grad_names, no_grad = grads_of(model, tensors)
    model.zero_grad(set_to_none=True)

    gen_records = {}
    with torch.no_grad():
        for lp in (1.0, 0.6):
            kw = {"num_beams": 3, "length_penalty": lp, "early_stopping": True, "max_new_tokens": 12,
                  "do_sample": False}
            r = model.generate(input_ids=input_ids, attention_mask=attention_mask, output_scores=True,
                               return_dict_in_generate=True, **kw)
            tensors[f"beam3_lp{lp}"] = i64(r.sequences)
            tensors[f"beam3_lp{lp}_scores"] = f32(r.sequences_scores)
            gen_records[f"beam3_lp{lp}"] = kw
        # early_stopping only applies to beam search (transformers warns if it is passed with num_beams=1)
        kw = {"num_beams": 1, "max_new_tokens": 12, "do_sample": False}
        seq = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kw)
        tensors["greedy"] = i64(seq)
        gen_records["greedy"] = kw
    min_margin, margins = greedy_margins(model, input_ids, attention_mask, gen_records["greedy"])
    b1, b06, gr = tensors["beam3_lp1.0"], tensors["beam3_lp0.6"], tensors["greedy"]
    nontrivial = {
        "beam_lp1.0_vs_lp0.6_differ": not (b1.shape == b06.shape and torch.equal(b1, b06)),
        "rows_differ": any(not torch.equal(t[0], t[1]) for t in (b1, b06, gr)),
        "some_output_ends_before_max_new_tokens": any(bool((t[:, 1:] == pad).any()) for t in (b1, b06, gr)),
        "greedy_differs_from_beams": not any(t.shape == gr.shape and torch.equal(t, gr) for t in (b1, b06)),
    }
    if not all(v for k, v in nontrivial.items() if k != "greedy_differs_from_beams"):
        print(f"  NOTE {name}: generation fixtures are partly trivial: {nontrivial}")
    gc = model.generation_config.to_diff_dict()

    meta = {
        "name": name,
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "seed": seed,
        "input_seed": 1000 + seed,
        "noise_std": NOISE_STD,
        "noise_skipped_params": skipped,
        "final_logits_bias": f"buffer set to N(0, 0.05) before saving, plus {eos_bias} on the eos id so that "
                             "some hypotheses end early (makes length_penalty matter)",
        "init_note": "config.init_std is raised (see config) so the random model's outputs depend on the source; "
                     "N(0, noise_std) noise is added afterwards as for the other models",
        "config": config_summary(cfg, ["vocab_size", "d_model", "encoder_layers", "decoder_layers",
                                       "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
                                       "decoder_ffn_dim", "max_position_embeddings", "pad_token_id",
                                       "eos_token_id", "decoder_start_token_id", "forced_eos_token_id",
                                       "init_std",
                                       "activation_function", "scale_embedding",
                                       "share_encoder_decoder_embeddings", "tie_word_embeddings"]),
        "inputs": {
            "input_ids": "int64 [2, 7] source; random ids in [1, pad) then eos (0); row 1 = 4 ids, eos, 2 pad",
            "attention_mask": "int64 [2, 7]; 0 on the source padding",
            "decoder_input_ids": "int64 [2, 6]; decoder_start_token_id then 5 random ids",
            "labels": "int64 [2, 6]; decoder_input_ids shifted left plus one random last id",
        },
        "outputs": {
            "encoder_last_hidden_state": "[2, 7, d_model] from model(input_ids, attention_mask, decoder_input_ids)",
            "logits": "[2, 6, vocab] from the same call (lm_head(h) + final_logits_bias)",
            "loss": "model(input_ids, attention_mask, labels=labels).loss, mean CE over 12 tokens, shape [1]",
            "loss_decoder_input_ids": "shift_tokens_right(labels, pad, decoder_start): the decoder input HF uses "
                                      "for the loss (equal to decoder_input_ids here)",
            "grad.{param}": "d loss / d param for every parameter that gets a gradient (shared embedding listed "
                            "once as model.shared.weight; it has padding_idx = pad so its pad row gets zero "
                            "gradient; the frozen sinusoidal embed_positions get none)",
            "beam3_lp1.0 / beam3_lp0.6 / greedy": "model.generate(input_ids, attention_mask, **kwargs) output, "
                                                  "int64 [2, T] as returned (starts with decoder_start_token_id; "
                                                  "finished rows padded with pad_token_id)",
            "beam3_lp1.0_scores / beam3_lp0.6_scores": "sequences_scores [2] of the returned beams: sum of token "
                                                       "log-probs / L**length_penalty, L = generated tokens after "
                                                       "the decoder start token, eos included",
        },
        "generation_nontrivial": nontrivial,
        "generation_kwargs": gen_records,
        "generation_config_non_default": gc,
        "generation_note": ("forced_eos_token_id from the config is active in generate(): at the last allowed "
                            "step (max_length = 1 + max_new_tokens) eos is forced. Beam search length penalty "
                            "divides the summed log-probs by L**length_penalty with L = number of generated "
                            "tokens after decoder_start_token_id, eos included."),
        "greedy_min_top2_margin": min_margin,
        "greedy_top2_margins_per_step": margins,
        "grad_params": grad_names,
        "params_without_grad": no_grad,
        "tied_parameter_groups": tied_groups(model),
        "buffers": {n: list(b.shape) for n, b in model.named_buffers()},
        **info,
    }
    write_reference(d, tensors, meta)

    def check():
        m = AutoModelForSeq2SeqLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
        with torch.no_grad():
            o = m(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
            seq = m.generate(input_ids=input_ids, attention_mask=attention_mask,
                             **gen_records["beam3_lp0.6"])
        diff = float((o.logits - tensors["logits"]).abs().max())
        same_beam = seq.shape == tensors["beam3_lp0.6"].shape and torch.equal(seq, tensors["beam3_lp0.6"])
        if not same_beam:
            print(f"  WARNING {name}: reloaded beam3_lp0.6 differs")
        return state_diff(model, m), diff

    return check


def t5_untie(model, d: Path, seed):
    """transformers 5 ties T5's head to the embedding whatever the config says (and
    writes tie_word_embeddings: true); a v1.1 checkpoint has a head of its own. Write
    one as published (lm_head.weight, tie_word_embeddings false) and load it back."""
    from safetensors.torch import load_file

    model.save_pretrained(d)
    sd = load_file(str(d / "model.safetensors"))
    g = torch.Generator().manual_seed(3000 + seed)
    sd["lm_head.weight"] = sd["shared.weight"].clone() * 0.5 + torch.randn(sd["shared.weight"].shape, generator=g)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with open(d / "config.json") as f:
        c = json.load(f)
    c["tie_word_embeddings"] = False
    c.pop("scale_decoder_outputs", None)
    with open(d / "config.json", "w") as f:
        json.dump(c, f, indent=2)
    m = AutoModelForSeq2SeqLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
    assert m.lm_head.weight is not m.shared.weight and not m.config.scale_decoder_outputs
    return m


def make_t5(name, cfg, seed, eos_boost, untied=False):
    """T5 (v1.0: ReLU, tied head scaled by d_model^-0.5; v1.1: gated GELU, a head of its
    own, unscaled), a padded source batch, the loss and every gradient, the relative
    position buckets for every distance in [-2048, 2048], and greedy and 4-beam
    generations of 50 sources."""
    from transformers.models.t5.modeling_t5 import T5Attention

    d = OUT / name
    torch.manual_seed(seed)
    model = AutoModelForSeq2SeqLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    skipped = add_noise(model)
    # Raise the end-of-sentence logit (along the mean direction of the decoder's output)
    # so that some generations end before the length limit.
    with torch.no_grad():
        gb = torch.Generator().manual_seed(2000 + seed)
        src = torch.randint(2, cfg.vocab_size, (8, 10), generator=gb)
        h = model(input_ids=src, decoder_input_ids=src[:, :6], output_hidden_states=True).decoder_hidden_states[-1]
        if model.config.scale_decoder_outputs:
            h = h * cfg.d_model ** -0.5
        mean = h.reshape(-1, cfg.d_model).mean(0)
        model.lm_head.weight[cfg.eos_token_id] += eos_boost * mean / mean.dot(mean)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    if untied:
        model = t5_untie(model, d, seed)
    else:
        model.save_pretrained(d)
    for f in sorted(d.iterdir()):
        if f.name not in KEEP_FILES:
            f.unlink()
    with safe_open(str(d / "model.safetensors"), framework="pt") as sf:
        keys = {k: list(sf.get_slice(k).get_shape()) for k in sorted(sf.keys())}

    V, pad, eos, start = cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.decoder_start_token_id
    g = torch.Generator().manual_seed(1000 + seed)
    input_ids = torch.randint(2, V, (2, 9), generator=g)
    input_ids[0, 8] = eos
    input_ids[1, 5] = eos
    input_ids[1, 6:] = pad
    attention_mask = torch.ones(2, 9, dtype=torch.int64)
    attention_mask[1, 6:] = 0
    labels = torch.randint(2, V, (2, 7), generator=g)
    labels[0, 6] = eos
    labels[1, 4] = eos
    labels[1, 5:] = -100
    decoder_input_ids = model._shift_right(labels)
    tensors = {
        "input_ids": i64(input_ids),
        "attention_mask": i64(attention_mask),
        "labels": i64(labels),
        "decoder_input_ids": i64(decoder_input_ids),
    }
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                    output_hidden_states=True)
    tensors["encoder_last_hidden_state"] = f32(out.encoder_last_hidden_state)
    for i, h in enumerate(out.encoder_hidden_states):
        tensors[f"encoder_hidden_states.{i}"] = f32(h)
    tensors["decoder_last_hidden_state"] = f32(out.decoder_hidden_states[-1])
    tensors["logits"] = f32(out.logits)
    model.zero_grad(set_to_none=True)
    lout = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    lout.loss.backward()
    tensors["loss"] = f32(lout.loss.reshape(1))
    grad_names, no_grad = grads_of(model, tensors)
    model.zero_grad(set_to_none=True)

    rel = torch.arange(-2048, 2049)
    buckets = {}
    for nb, md in {(cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance), (32, 128)}:
        for bi in (True, False):
            key = f"buckets.{nb}.{md}.{'bi' if bi else 'causal'}"
            tensors[key] = i64(T5Attention._relative_position_bucket(rel, bidirectional=bi, num_buckets=nb,
                                                                        max_distance=md))
            buckets[key] = f"_relative_position_bucket(arange(-2048, 2049), bidirectional={bi}, " \
                           f"num_buckets={nb}, max_distance={md})"

    # 50 sources of 3 to 12 ids (the last one eos), each generated alone (no padding).
    n_gen, max_new = 50, 10
    lens = torch.randint(3, 13, (n_gen,), generator=g)
    srcs = torch.full((n_gen, 12), -1, dtype=torch.int64)
    kw = {"greedy": dict(num_beams=1, do_sample=False, max_new_tokens=max_new),
          "beam4": dict(num_beams=4, do_sample=False, max_new_tokens=max_new, early_stopping=True,
                        length_penalty=1.0),
          # the summarizer's options: no repeated n-gram, a minimum length
          "greedy_rules": dict(num_beams=1, do_sample=False, max_new_tokens=max_new, no_repeat_ngram_size=2,
                               min_new_tokens=4),
          "beam4_rules": dict(num_beams=4, do_sample=False, max_new_tokens=max_new, early_stopping=True,
                              length_penalty=0.8, no_repeat_ngram_size=3, min_new_tokens=5)}
    outs = {k: torch.full((n_gen, max_new + 1), -1, dtype=torch.int64) for k in kw}
    early = {k: 0 for k in kw}
    with torch.no_grad():
        for i in range(n_gen):
            n = int(lens[i])
            s = torch.randint(2, V, (1, n), generator=g)
            s[0, -1] = eos
            srcs[i, :n] = s[0]
            for k, a in kw.items():
                # use_cache=False: transformers 5.24 sizes the cache by num_layers, not
                # num_decoder_layers (IndexError when they differ)
                seq = model.generate(input_ids=s, attention_mask=torch.ones_like(s), use_cache=False, **a)[0]
                outs[k][i, :len(seq)] = seq
                early[k] += int(len(seq) < max_new + 1)
    tensors["gen_sources"] = i64(srcs)
    for k in kw:
        tensors[f"gen_{k}"] = i64(outs[k])
    differ = sum(int(not torch.equal(outs["greedy"][i], outs["beam4"][i])) for i in range(n_gen))
    print(f"  {name}: generations ending before the limit {early}, beam differs from greedy on {differ}/50")

    meta = {
        "name": name,
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "seed": seed,
        "input_seed": 1000 + seed,
        "noise_std": NOISE_STD,
        "noise_skipped_params": skipped,
        "untied_head": untied,
        "config": {k: v for k, v in cfg.to_dict().items() if k in (
            "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
            "relative_attention_num_buckets", "relative_attention_max_distance", "feed_forward_proj",
            "layer_norm_epsilon", "pad_token_id", "eos_token_id", "decoder_start_token_id")},
        "inputs": {
            "input_ids": "int64 [2, 9]; row 1: 5 ids, eos, 3 pad",
            "attention_mask": "int64 [2, 9]",
            "labels": "int64 [2, 7]; row 1 ends with eos at 4 and -100 after",
            "decoder_input_ids": "model._shift_right(labels): decoder start, labels shifted, -100 -> pad",
        },
        "outputs": {
            "encoder_hidden_states.{i}": "[2, 9, d_model]: the embeddings (0), each block's output; the last "
                                         "one before the final norm",
            "encoder_last_hidden_state": "after encoder.final_layer_norm",
            "decoder_last_hidden_state": "after decoder.final_layer_norm, before any output scaling",
            "logits": "[2, 7, vocab] from model(input_ids, attention_mask, decoder_input_ids)",
            "loss": "mean CE over the labels that are not -100 (12 tokens)",
            "grad.{param}": "d loss / d param for every parameter",
            "buckets.*": buckets,
            "gen_sources": "int64 [50, 12]: source i is the ids before the first -1 (ends with eos)",
            "gen_greedy / gen_beam4": "generate(source alone, **generation_kwargs[k]) as returned (decoder "
                                      "start first), then -1",
        },
        "generation_kwargs": kw,
        "grad_params": grad_names,
        "params_without_grad": no_grad,
        "tied_parameter_groups": tied_groups(model),
        "checkpoint_keys": keys,
    }
    write_reference(d, tensors, meta)

    def check():
        m = AutoModelForSeq2SeqLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32).eval()
        with torch.no_grad():
            o = m(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        return state_diff(model, m), float((o.logits - tensors["logits"]).abs().max())

    return check


def state_diff(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    if set(sa) != set(sb):
        print("  state_dict key mismatch:", sorted(set(sa) ^ set(sb)))
    worst = 0.0
    for k in sa.keys() & sb.keys():
        if sa[k].dtype.is_floating_point:
            worst = max(worst, float((sa[k] - sb[k]).abs().max()))
    return worst


# --------------------------------------------------------------------------
# MiniLM (real model)

MINILM_SENTENCES = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Order #4521 shipped on 2024-03-15 for $19.99 (incl. 7.5% tax)!",
    "Crème brûlée and jalapeño piñata at the café in São Paulo.",
    "今天天气很好，我们去公园散步吧。",
    "A transformer encoder maps each token to a contextual vector, and mean pooling "
    "over the non-padding positions turns those vectors into one sentence embedding.",
    "Where is the nearest train station?",
    "rust borrow checker: cannot borrow `x` as mutable more than once at a time",
]


def make_minilm():
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    d = OUT / "minilm"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    modules = json.loads((MINILM_SRC / "modules.json").read_text())
    module_types = [m["type"] for m in modules]
    has_normalize = any(t.endswith("Normalize") for t in module_types)

    st = SentenceTransformer(str(MINILM_SRC), device="cpu")
    st.eval()
    max_len = st.max_seq_length
    enc = st.encode(MINILM_SENTENCES, normalize_embeddings=False, convert_to_tensor=True, batch_size=32)
    enc = enc.to(torch.float32).cpu()

    tok = AutoTokenizer.from_pretrained(str(MINILM_SRC))
    batch = tok(MINILM_SENTENCES, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    assert tok.pad_token_id == 0
    model = AutoModel.from_pretrained(str(MINILM_SRC), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        out = model(**batch)
    h = out.last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    normed = F.normalize(mean, p=2, dim=1)

    diff_norm = float((enc - normed).abs().max())
    diff_mean = float((enc - mean).abs().max())
    returns = "embeddings_normalized" if diff_norm < diff_mean else "embeddings_mean"

    tensors = {
        "input_ids": i64(batch["input_ids"]),
        "attention_mask": i64(batch["attention_mask"]),
        "token_type_ids": i64(batch["token_type_ids"]),
        "embeddings": f32(enc),
        "embeddings_mean": f32(mean),
        "embeddings_normalized": f32(normed),
    }
    meta = {
        "name": "minilm",
        "model_dir": str(MINILM_SRC),
        "note": "the model itself is not copied here; load it from model_dir",
        "modules": module_types,
        "modules_include_normalize": has_normalize,
        "max_seq_length": max_len,
        "sentences": MINILM_SENTENCES,
        "tokens": [tok.convert_ids_to_tokens(batch["input_ids"][i][: int(batch["attention_mask"][i].sum())])
                   for i in range(len(MINILM_SENTENCES))],
        "inputs": {
            "input_ids": "int64 [8, Tmax] tokenizer(sentences, padding=True, truncation=True, "
                         "max_length=max_seq_length), padded with 0 ([PAD]); includes [CLS] ... [SEP]",
            "attention_mask": "int64 [8, Tmax]",
            "token_type_ids": "int64 [8, Tmax], all 0",
        },
        "outputs": {
            "embeddings": "SentenceTransformer.encode(sentences, normalize_embeddings=False, "
                          "convert_to_tensor=True) as returned",
            "embeddings_mean": "AutoModel last_hidden_state mean-pooled over attention_mask (no normalization)",
            "embeddings_normalized": "embeddings_mean / ||embeddings_mean||_2",
        },
        "encode_returns": returns,
        "encode_max_abs_diff_vs_embeddings_normalized": diff_norm,
        "encode_max_abs_diff_vs_embeddings_mean": diff_mean,
    }
    write_reference(d, tensors, meta)
    print(f"minilm: modules={module_types} normalize={has_normalize} max_seq_length={max_len} "
          f"T={batch['input_ids'].shape[1]} encode() returns {returns} "
          f"(diff vs normalized {diff_norm:.2e}, vs mean {diff_mean:.2e})")


# --------------------------------------------------------------------------


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    gpt2_common = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    # GPT2Config defaults bos/eos to 50256, outside these tiny vocabularies: use the last id instead.
    llama_common = dict(num_hidden_layers=2, max_position_embeddings=64, rms_norm_eps=1e-6, attention_dropout=0.0)
    bert_common = dict(num_hidden_layers=2, max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                       pad_token_id=0)
    # init_std 0.2 (default 0.02) so that the tiny random models' generations depend on the source
    marian_common = dict(init_std=0.2, max_position_embeddings=64, eos_token_id=0, scale_embedding=True,
                         share_encoder_decoder_embeddings=True, dropout=0.0, attention_dropout=0.0,
                         activation_dropout=0.0)

    only = None
    if "--only" in sys.argv:
        only = set(sys.argv[sys.argv.index("--only") + 1].split(","))

    class Checks(dict):
        """Builds a fixture only when --only names it (or is not given)."""

        def add(self, name, make, *args, **kwargs):
            if only is None or name in only:
                self[name] = make(name, *args, **kwargs)

    checks = Checks()
    checks.add("gpt2-tiny", make_causal,
        GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=64, vocab_size=99,
        bos_token_id=98, eos_token_id=98, **gpt2_common),
        seed=11, ppl=True)

    checks.add("gpt2-3heads", make_causal,
        GPT2Config(n_layer=2, n_head=3, n_embd=24, n_positions=32, vocab_size=101,
        bos_token_id=100, eos_token_id=100, **gpt2_common),
        seed=12)

    checks.add("llama-gqa", make_causal,
        LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=80,
        vocab_size=103, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **llama_common),
        seed=21)

    checks.add("llama-tied-6heads", make_causal,
        LlamaConfig(hidden_size=48, num_attention_heads=6, num_key_value_heads=6,
        intermediate_size=96, vocab_size=97, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        **llama_common),
        seed=22)

    checks.add("bert-tiny", make_bert,
        BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=101,
        num_labels=3, **bert_common),
        seed=31)

    checks.add("bert-3heads", make_bert,
        BertConfig(hidden_size=24, num_attention_heads=3, intermediate_size=48, vocab_size=97,
        num_labels=2, **bert_common),
        seed=32)

    checks.add("marian-tiny", make_marian,
        MarianConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        vocab_size=99, pad_token_id=98, decoder_start_token_id=98,
        activation_function="swish", **marian_common),
        seed=41, eos_bias=2.0)

    checks.add("marian-3heads", make_marian,
        MarianConfig(d_model=24, encoder_layers=1, decoder_layers=2, encoder_attention_heads=3,
        decoder_attention_heads=3, encoder_ffn_dim=48, decoder_ffn_dim=48,
        vocab_size=101, pad_token_id=100, decoder_start_token_id=100,
        activation_function="gelu", **marian_common),
        seed=42, eos_bias=1.0)

    checks.add("gpt2-relu", make_causal,
        GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=53, activation_function="relu",
        bos_token_id=52, eos_token_id=52, **gpt2_common),
        seed=13)

    checks.add("gpt2-gelu-erf", make_causal,
        GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=32, vocab_size=53, activation_function="gelu",
        bos_token_id=52, eos_token_id=52, **gpt2_common),
        seed=14)

    checks.add("llama-bias", make_causal,
        LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
        vocab_size=59, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **llama_common),
        seed=23)

    # The Hugging Face decoders people load most, at awkward sizes: head counts that are
    # not powers of two, grouped key/value heads, head widths of their own, vocabularies
    # that are not multiples of 8, and sequences past the sliding window and past the
    # original context.
    checks.add("llama3-scaled", make_causal,
        LlamaConfig(hidden_size=40, num_attention_heads=5, num_key_value_heads=1, head_dim=12,
        intermediate_size=56, vocab_size=61, tie_word_embeddings=False, attention_bias=True, mlp_bias=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        **llama_common),
        seed=24)

    checks.add("llama-linear", make_causal,
        LlamaConfig(hidden_size=30, num_attention_heads=3, num_key_value_heads=3, intermediate_size=44,
        vocab_size=53, tie_word_embeddings=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.5},
        **llama_common),
        seed=25)

    checks.add("llama-dynamic", make_causal,
        LlamaConfig(hidden_size=36, num_attention_heads=6, num_key_value_heads=3, intermediate_size=40,
        vocab_size=67, tie_word_embeddings=False, num_hidden_layers=2, max_position_embeddings=6,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
        rms_norm_eps=1e-6, attention_dropout=0.0),
        seed=26, length=11)

    checks.add("qwen2-window", make_causal,
        Qwen2Config(hidden_size=36, num_attention_heads=6, num_key_value_heads=2, intermediate_size=50,
        vocab_size=71, tie_word_embeddings=True, use_sliding_window=True, sliding_window=5, max_window_layers=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **llama_common),
        seed=27, length=12)

    checks.add("qwen2", make_causal,
        Qwen2Config(hidden_size=28, num_attention_heads=7, num_key_value_heads=1, intermediate_size=36,
        vocab_size=59, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **llama_common),
        seed=28)

    checks.add("mistral-window", make_causal,
        MistralConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=10,
        intermediate_size=52, vocab_size=73, tie_word_embeddings=False, sliding_window=4,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **llama_common),
        seed=29, ppl=True, length=12)

    # The encoders people fine-tune for classification besides BERT: RoBERTa and
    # XLM-RoBERTa (positions counted past the padding id 1, one token type, the head
    # classifier.dense / out_proj), DistilBERT (its own names, no token types, a ReLU
    # head); 3 and 5 heads, vocabularies that are not multiples of 8.
    roberta_common = dict(num_hidden_layers=2, max_position_embeddings=24, type_vocab_size=1, hidden_act="gelu",
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
                          pad_token_id=1, bos_token_id=0, eos_token_id=2)
    checks.add("roberta-3heads", make_bert,
        RobertaConfig(hidden_size=24, num_attention_heads=3, intermediate_size=40, vocab_size=83, num_labels=3,
        **roberta_common),
        seed=33)
    checks.add("xlm-roberta-5heads", make_bert,
        XLMRobertaConfig(hidden_size=40, num_attention_heads=5, intermediate_size=56, vocab_size=91,
        num_labels=2, **roberta_common),
        seed=34)
    checks.add("distilbert-3heads", make_bert,
        DistilBertConfig(dim=24, n_heads=3, n_layers=2, hidden_dim=44, vocab_size=79, max_position_embeddings=32,
        activation="gelu", dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0, pad_token_id=0,
        num_labels=3),
        seed=35)

    # T5 v1.0 (ReLU, tied and scaled head) and v1.1 (gated GELU, a head of its own): head
    # counts that are not powers of two, d_kv x heads != d_model, odd vocabularies.
    t5_common = dict(dropout_rate=0.0, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
                     decoder_start_token_id=0)
    checks.add("t5-v1_0", make_t5,
        T5Config(vocab_size=61, d_model=20, d_kv=6, d_ff=36, num_layers=2, num_decoder_layers=2, num_heads=3,
        relative_attention_num_buckets=8, relative_attention_max_distance=20, feed_forward_proj="relu",
        **t5_common),
        seed=51, eos_boost=4.0)
    checks.add("t5-v1_1", make_t5,
        T5Config(vocab_size=67, d_model=24, d_kv=8, d_ff=30, num_layers=2, num_decoder_layers=3, num_heads=5,
        relative_attention_num_buckets=10, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        **t5_common),
        seed=52, eos_boost=4.0, untied=True)

    if only is not None:
        missing = only - set(checks)
        if missing:
            raise SystemExit(f"--only: no fixture named {sorted(missing)}")
    if "--skip-minilm" not in sys.argv and only is None:
        make_minilm()

    print("\nreload check (from_pretrained, recompute recorded logits):")
    ok = True
    for name, check in checks.items():
        sd, diff = check()
        ok &= sd == 0.0 and diff == 0.0
        print(f"  {name:18s} state_dict max|diff| {sd:.3e}   logits max|diff| {diff:.3e}")

    print("\nfixtures:")
    for d in sorted(OUT.iterdir()):
        files = sorted(f.name for f in d.iterdir())
        size = sum(f.stat().st_size for f in d.iterdir())
        with safe_open(str(d / "reference.safetensors"), framework="pt") as sf:
            n_ref = len(list(sf.keys()))
        print(f"  {d.name:18s} {size / 1024:7.1f} KiB  {n_ref:3d} reference tensors  {files}")
    du = subprocess.run(["du", "-sh", str(OUT)], capture_output=True, text=True).stdout.strip()
    print(f"\ntotal: {du}")
    print("versions:", versions())
    if not ok:
        print("RELOAD CHECK FAILED")
        sys.exit(1)


if __name__ == "__main__":
    main()
