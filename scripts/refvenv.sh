#!/usr/bin/env bash
# Prints the python of a throwaway venv holding the Python reference implementations
# (torch 2.11.0, torchvision, transformers, open_clip, PIL), creating it on first use (~4.6 GB).
# Only fixture generation and the side-by-side benchmarks need it; builds and tests do not.
set -euo pipefail
venv=${CLIPTUNE_CACHE:-$HOME/.cache/cliptune}/refvenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch, torchvision, transformers, open_clip' 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet torch==2.11.0 torchvision transformers open-clip-torch \
    safetensors pillow numpy ftfy regex >&2
fi
echo "$venv/bin/python"
