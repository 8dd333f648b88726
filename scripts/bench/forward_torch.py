"""The same forward passes as crates/clip/examples/bench_forward.rs, in PyTorch + open_clip."""
import json
import sys
import time

import open_clip
import torch

preset, batch, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
name = {"ViT-B/32": "ViT-B-32-quickgelu", "ViT-B/16": "ViT-B-16-quickgelu", "ViT-L/14": "ViT-L-14-quickgelu",
        "ViT-L/14@336px": "ViT-L-14-336-quickgelu"}[preset]
torch.manual_seed(0)
model = open_clip.create_model(name, pretrained=None).eval()
size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
pixels = torch.randn(batch, 3, size, size)
ids = torch.randint(1, 49000, (batch, 77))
ids[:, 20:] = 0
ids[:, 19] = 49407


def timed(f):
    f()
    start = time.perf_counter()
    for _ in range(iters):
        f()
    return (time.perf_counter() - start) / iters


with torch.inference_mode():
    image = timed(lambda: model.encode_image(pixels))
    text = timed(lambda: model.encode_text(ids))
print(json.dumps({"impl": "open_clip", "preset": preset, "batch": batch, "threads": threads,
                  "image_per_s": round(batch / image, 2), "text_per_s": round(batch / text, 2)}))
