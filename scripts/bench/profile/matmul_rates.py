"""Matrix-multiply rates on this CPU through torch (2 threads by default): f32 through MKL
(`F.linear`, what both trainers and embedders use), f32 through oneDNN
(`mkldnn._linear_pointwise`), and bf16 (`@` on bf16 tensors). Shapes: a square one, ViT-B/32
inference at batch 32 (1600 tokens), and the Fashion-MNIST benchmark model's training shapes.
Figures cited in docs/search.md and docs/training.md.
Usage: matmul_rates.py [threads]"""
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)


def rate(f, flops, reps=10):
    for _ in range(3):
        f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return flops / ((time.perf_counter() - t) / reps) / 1e9


for m, k, n in [(2048, 2048, 2048), (1600, 768, 3072), (1600, 3072, 768), (1600, 768, 2304),
                (12800, 128, 512), (12800, 512, 128), (12800, 128, 384), (4096, 128, 512)]:
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    flops = 2 * m * k * n
    mkl = rate(lambda: F.linear(x, w, b), flops)
    dnnl = rate(lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""), flops)
    xb, wb = x.bfloat16(), w.t().contiguous().bfloat16()
    bf16 = rate(lambda: xb @ wb, flops)
    print(f"{m}x{k}x{n}: f32 MKL {mkl:.1f}, f32 oneDNN {dnnl:.1f}, bf16 {bf16:.1f} GFLOP/s")
