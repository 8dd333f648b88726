"""open_clip's ViT-B/32 image tower on the CPU, batch 32, 2 threads: images/s in f32, under
torch.autocast to bf16, and with the whole model cast to bf16; then torch.profiler's table
of the autocast forward (cited in docs/search.md). Usage: open_clip_autocast.py"""
import copy
import time

import open_clip
import torch
from torch.profiler import ProfilerActivity, profile

torch.set_num_threads(2)
visual = open_clip.create_model("ViT-B-32-quickgelu").visual.eval()
x = torch.randn(32, 3, 224, 224)


def per_s(f, reps=4):
    with torch.inference_mode():
        f()
        t = time.perf_counter()
        for _ in range(reps):
            f()
    return 32 * reps / (time.perf_counter() - t)


def autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return visual(x)


whole = copy.deepcopy(visual).bfloat16()
print(f"f32 {per_s(lambda: visual(x)):.1f}, autocast bf16 {per_s(autocast):.1f}, "
      f"model in bf16 {per_s(lambda: whole(x.bfloat16())):.1f} images/s")
with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
    autocast()
    autocast()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
