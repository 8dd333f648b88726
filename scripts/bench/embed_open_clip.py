"""Dataset embedding the usual PyTorch way, for scripts/bench-embed.sh: JPEG files read and
preprocessed by a DataLoader (open_clip's own transform, `threads` workers), ViT-B-32 image
features under inference_mode with `threads` intra-op threads, L2-normalised and written to
one .npy. Prints one JSON line. The time starts before the model is built and its weights
loaded (as cliptune's includes loading the checkpoint); `load_s` is that part.
With PRECISION bf16 the forward runs under CPU autocast to bfloat16 (as `cliptune
--embed-precision bf16`).
Usage: embed_open_clip.py MODEL.safetensors IMAGE_DIR OUT.npy BATCH THREADS [fp32|bf16]"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

model_path, image_dir, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
batch, threads = int(sys.argv[4]), int(sys.argv[5])
precision = sys.argv[6] if len(sys.argv) > 6 else "fp32"
torch.set_num_threads(threads)
start = time.perf_counter()
model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=None)
model.load_state_dict(load_file(model_path))
model.eval()
load_s = time.perf_counter() - start
files = sorted(image_dir.glob("*.jpg"))


class Files(torch.utils.data.Dataset):
    def __len__(self):
        return len(files)

    def __getitem__(self, i):
        with Image.open(files[i]) as im:
            return preprocess(im.convert("RGB"))


loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=threads, shuffle=False)
vectors = []
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
    for pixels in loader:
        vectors.append(F.normalize(model.encode_image(pixels).float(), dim=-1).numpy())
np.save(out, np.concatenate(vectors))
seconds = time.perf_counter() - start
print(json.dumps({"impl": "open_clip + DataLoader", "precision": precision, "images": len(files), "batch": batch, "threads": threads,
                  "load_s": round(load_s, 2), "seconds": round(seconds, 2), "images_per_s": round(len(files) / seconds, 2)}))
