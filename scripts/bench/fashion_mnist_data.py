"""Writes Fashion-MNIST (Debian package dataset-fashion-mnist) as captioned-image folders
for `cliptune train/eval` and CSVs for open_clip_train, captions "a photo of a {class}".

  OUT/train/  59,000 train + 1,000 validation pairs (every 60th train image), captions.jsonl
              (with subset) and train.csv (the 59,000 train pairs, for open_clip_train)
  OUT/test/   the 10,000 test images, captions.jsonl (no subset) and test.csv
  OUT/small/  the first N_SMALL train pairs (throughput benchmark), captions.jsonl + train.csv

Run: $(scripts/refvenv.sh) scripts/bench/fashion_mnist_data.py OUT [N_SMALL]
"""
import csv
import gzip
import json
import os
import sys

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


def write(out, images, labels, subset_of, csv_name, csv_filter):
    os.makedirs(out, exist_ok=True)
    with open(f"{out}/captions.jsonl", "w") as j, open(f"{out}/{csv_name}", "w", newline="") as c:
        w = csv.writer(c)
        w.writerow(["filepath", "title"])
        for i, (img, label) in enumerate(zip(images, labels)):
            name = f"{i:05d}.png"
            path = f"{out}/{name}"
            if not os.path.exists(path):
                Image.fromarray(img, mode="L").save(path)
            caption = f"a photo of a {CLASSES[label]}"
            line = {"file": name, "caption": caption, "label": CLASSES[label]}
            subset = subset_of(i)
            if subset:
                line["subset"] = subset
            j.write(json.dumps(line) + "\n")
            if csv_filter(i):
                w.writerow([os.path.abspath(path), caption])


out = sys.argv[1]
n_small = int(sys.argv[2]) if len(sys.argv) > 2 else 5120
tr_x, tr_y = read("train")
te_x, te_y = read("t10k")
write(f"{out}/train", tr_x, tr_y, lambda i: "validation" if i % 60 == 0 else "train",
      "train.csv", lambda i: i % 60 != 0)
write(f"{out}/test", te_x, te_y, lambda i: None, "test.csv", lambda i: True)
write(f"{out}/small", tr_x[:n_small], tr_y[:n_small], lambda i: None, "train.csv", lambda i: True)
print("wrote", out)
