"""Where open_clip's training step spends its time on the CPU: the Fashion-MNIST benchmark
model (scripts/bench/open_clip_fmnist.json), batch 256 of random pixels and tokens,
open_clip's ClipLoss and torch.optim.AdamW (the per-parameter default on the CPU), 2
threads. Prints samples/s over 10 steps, then torch.profiler's table over 3 steps (cited in
docs/training.md). Usage: open_clip_step.py"""
import json
import time
from pathlib import Path

import open_clip
import torch
from open_clip.factory import _MODEL_CONFIGS
from torch.profiler import ProfilerActivity, profile

torch.set_num_threads(2)
_MODEL_CONFIGS["fm"] = json.loads((Path(__file__).parents[1] / "open_clip_fmnist.json").read_text())
model = open_clip.create_model("fm").train()
loss_fn = open_clip.loss.ClipLoss()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
batch = 256
img, txt = torch.randn(batch, 3, 28, 28), torch.randint(0, 49408, (batch, 16))


def step():
    opt.zero_grad()
    image, text, scale = model(img, txt)[:3]
    loss_fn(image, text, scale).backward()
    opt.step()


for _ in range(3):
    step()
t = time.perf_counter()
for _ in range(10):
    step()
print(f"{batch * 10 / (time.perf_counter() - t):.1f} samples/s")
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
