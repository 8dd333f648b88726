#!/usr/bin/env python3
"""Writes N photo-like 640x480 JPEGs (quality 90, 4:2:0) for the benchmarks and the GPU
check. Image i depends only on i (its own seeded generator), so any N gives the same first
images; the work is spread over every core."""

import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

Y, X = np.mgrid[0:480, 0:640].astype(np.float32)


def write(args):
    out, i = args
    rng = np.random.default_rng(i)
    planes = []
    for c in range(3):
        fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6)]
        v = 128 + 70 * np.sin(fx * X + ph) * np.cos(fy * Y + c) + 30 * np.sin(0.2 * X * fy + 0.1 * Y)
        planes.append(v + rng.normal(0, 6, (480, 640)))
    img = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
    Image.fromarray(img, "RGB").save(out / f"img{i:05d}.jpg", quality=90)


if __name__ == "__main__":
    out, n = Path(sys.argv[1]), int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(write, [(out, i) for i in range(n)], chunksize=16)
