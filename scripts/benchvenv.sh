#!/usr/bin/env bash
# Prints the python of a small venv with NumPy and Pillow (about 60 MB), creating it on first
# use: enough for the JPEG makers and the summaries of scripts/bench-feed.sh and
# scripts/gpu-check.sh. The parity fixtures and the side-by-side benchmarks need the full
# reference venv instead (scripts/refvenv.sh, ~4.6 GB).
set -euo pipefail
venv=${CLIPTUNE_CACHE:-$HOME/.cache/cliptune}/benchvenv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy, PIL' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy==2.3.5 pillow==12.0.0 >&2
fi
echo "$venv/bin/python"
