#!/usr/bin/env python3
"""Writes N photo-like 640x480 JPEGs (quality 90, 4:2:0) for scripts/bench-preprocess.sh."""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

out, n = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
y, x = np.mgrid[0:480, 0:640].astype(np.float32)
for i in range(n):
    planes = []
    for c in range(3):
        fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6)]
        v = 128 + 70 * np.sin(fx * x + ph) * np.cos(fy * y + c) + 30 * np.sin(0.2 * x * fy + 0.1 * y)
        planes.append(v + rng.normal(0, 6, (480, 640)))
    img = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(out / f"img{i:05d}.jpg", quality=90)
