#!/usr/bin/env python3
"""PIL + torchvision side of scripts/bench-preprocess.sh: OpenAI's CLIP transform in a torch
DataLoader with THREADS worker processes (batch 32), one warm-up pass, one timed pass."""

import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(im):
    return im.convert("RGB")


class Images(Dataset):
    def __init__(self, paths, size):
        self.paths = paths
        self.transform = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size),
                                  to_rgb, ToTensor(), Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(Image.open(self.paths[i]))


def one_thread(_):
    torch.set_num_threads(1)


def main():
    directory, size, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    paths = sorted(str(p) for p in Path(directory).glob("*.jpg"))
    loader = DataLoader(Images(paths, size), batch_size=32, num_workers=threads,
                        worker_init_fn=one_thread, persistent_workers=True)

    def run():
        checksum = 0.0
        for batch in loader:
            checksum += float(batch.view(-1)[batch.numel() // 2])
        return checksum

    run()
    t = time.perf_counter()
    checksum = run()
    secs = time.perf_counter() - t
    print(json.dumps({"impl": "PIL+torchvision", "images": len(paths), "threads": threads,
                      "seconds": round(secs, 3), "images_per_s": round(len(paths) / secs, 1),
                      "checksum": round(checksum, 4)}))


if __name__ == "__main__":
    main()
