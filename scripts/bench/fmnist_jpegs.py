#!/usr/bin/env python3
"""Writes Fashion-MNIST's 10,000 test images (Debian package dataset-fashion-mnist) as
SIDE x SIDE JPEGs (PIL bicubic upscale of the 28x28 original, gray, quality 90) with the
captions.jsonl that `cliptune eval --data` reads ("a photo of a {class}", as
fashion_mnist_data.py writes them), so that a 28 px model's preprocessing has a JPEG at least
twice its input to decode (224 = 8 x 28: reduced-scale decoding at 1/8).

Run: $(scripts/refvenv.sh) scripts/bench/fmnist_jpegs.py OUT [SIDE=224]
"""
import gzip
import json
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

SRC = "/usr/share/datasets/fashion-mnist"
CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot"]


def read(kind):
    with gzip.open(f"{SRC}/{kind}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{SRC}/{kind}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    return images, labels


def write(args):
    out, side, i, img = args
    Image.fromarray(img, mode="L").resize((side, side), Image.BICUBIC).save(
        f"{out}/{i:05d}.jpg", quality=90)


if __name__ == "__main__":
    out = sys.argv[1]
    side = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    os.makedirs(out, exist_ok=True)
    images, labels = read("t10k")
    with Pool(os.cpu_count()) as pool:
        pool.map(write, [(out, side, i, img) for i, img in enumerate(images)], chunksize=256)
    with open(f"{out}/captions.jsonl", "w") as j:
        for i, label in enumerate(labels):
            j.write(json.dumps({"file": f"{i:05d}.jpg", "caption": f"a photo of a {CLASSES[label]}",
                                "label": CLASSES[label]}) + "\n")
    print("wrote", len(images), "JPEGs", side, "x", side, "to", out)
