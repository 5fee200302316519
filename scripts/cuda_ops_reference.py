#!/usr/bin/env python3
"""PyTorch's timings of the operations `examples/cuda_speed.rs` times, at the same
shapes, on the same GPU, for a side-by-side table (run both in one device call):

    python3 scripts/cuda_ops_reference.py [REPEATS]

f32 products with TF32 off (attn's f32 path is IEEE f32 too); bf16 products with f32
output as attn's; attention through SDPA (f32: whichever kernel PyTorch picks), layer
norm, cross-entropy with its gradient, fused AdamW. Each: mean of REPEATS after one
warm-up, timed with CUDA events.
"""
import sys

import torch
import torch.nn.functional as F

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = "cuda"
print(torch.cuda.get_device_name(0), "torch", torch.__version__)


def time(f):
    f()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        f()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def flops(name, ms, fl):
    print(f"{name:<48} {ms:9.3f} ms {fl / ms / 1e9:8.1f} TFLOP/s")


def nbytes(name, ms, by):
    print(f"{name:<48} {ms:9.3f} ms {by / ms / 1e6:8.0f} GB/s")


def rand(*shape, dtype=torch.float32):
    return (torch.rand(*shape, device=dev) * 2 - 1).to(dtype)


n = 1 << 28
x, y = torch.zeros(n, device=dev), torch.zeros(n, device=dev)
nbytes("copy 1 GiB device to device", time(lambda: y.copy_(x)), 8.0 * n)
del x, y

for m, k, nn in [(4096, 4096, 4096), (8192, 768, 2304), (8192, 768, 50257)]:
    a, b = rand(m, k), rand(k, nn)
    c = torch.empty(m, nn, device=dev)
    fl = 2.0 * m * k * nn
    flops(f"f32 gemm {m}x{k}·{k}x{nn}", time(lambda: torch.matmul(a, b, out=c)), fl)
    ha, hb = a.bfloat16(), b.bfloat16()
    flops(f"bf16 gemm {m}x{k}·{k}x{nn} (f32 out)", time(lambda: torch.matmul(ha, hb).float()), fl)
    del a, b, c, ha, hb
s = 8192
ha, hb = rand(s, s, dtype=torch.bfloat16), rand(s, s, dtype=torch.bfloat16)
flops("bf16 gemm 8192³ (bf16 out)", time(lambda: torch.matmul(ha, hb)), 2.0 * s**3)
del ha, hb

b, t, ch, v = 8, 1024, 768, 50257
m = b * t
x = rand(m, ch).requires_grad_()
w, bias = rand(ch).requires_grad_(), rand(ch).requires_grad_()
nbytes("layer norm 8192x768", time(lambda: F.layer_norm(x, (ch,), w, bias)), 8.0 * m * ch)
out = F.layer_norm(x, (ch,), w, bias)
g = rand(m, ch)
nbytes(
    "layer norm backward 8192x768",
    time(lambda: torch.autograd.grad(out, (x, w, bias), g, retain_graph=True)),
    16.0 * m * ch,
)
u = rand(m, 4 * ch).requires_grad_()
nbytes("GELU 8192x3072 (value)", time(lambda: F.gelu(u, approximate="tanh")), 8.0 * m * 4 * ch)
del u
logits = rand(m, v).requires_grad_()
targets = torch.arange(m, device=dev) * 7919 % v


def xent():
    loss = F.cross_entropy(logits, targets, reduction="sum")
    torch.autograd.grad(loss, logits)


nbytes("cross-entropy + gradient 8192x50257", time(xent), 8.0 * m * v)
del logits
q, k_, v_ = (rand(b, 12, t, 64).requires_grad_() for _ in range(3))
att_fl = 4.0 * b * 12 * t * t * 64
flops("attention forward b8 t1024 12x64 (SDPA causal)", time(lambda: F.scaled_dot_product_attention(q, k_, v_, is_causal=True)), att_fl)
o = F.scaled_dot_product_attention(q, k_, v_, is_causal=True)
dy = rand(b, 12, t, 64)
flops(
    "attention backward b8 t1024 12x64",
    time(lambda: torch.autograd.grad(o, (q, k_, v_), dy, retain_graph=True)),
    2.0 * att_fl,
)
del q, k_, v_, o
np_ = 124_439_808
p = torch.nn.Parameter(rand(np_))
p.grad = rand(np_)
opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), fused=True)
nbytes("AdamW 124M parameters (fused)", time(opt.step), 28.0 * np_)
nbytes("sum of squares 124M", time(lambda: p.grad.square().sum()), 4.0 * np_)
