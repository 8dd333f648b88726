#!/usr/bin/env bash
# Lays out libtorch 2.11.0 (for tch 0.24) from PyPI wheels into .libtorch/.
#
#   scripts/setup-libtorch.sh          lean CPU layout (~500 MB, no GPU code linked)
#   CUDA=1 scripts/setup-libtorch.sh   full CUDA layout (a venv with torch==2.11.0, ~4.6 GB)
#
# Idempotent: a second run with the same layout returns at once.
# Wheels are cached in $CLIPTUNE_CACHE (default ~/.cache/cliptune) so a re-clone is fast.
set -euo pipefail

TORCH_VERSION=2.11.0
CUDART=nvidia-cuda-runtime==13.0.96
CUPTI=nvidia-cuda-cupti==13.0.85

root=$(cd "$(dirname "$0")/.." && pwd)
dest=$root/.libtorch
cache=${CLIPTUNE_CACHE:-$HOME/.cache/cliptune}
layout=cpu
[ "${CUDA:-0}" = "1" ] && layout=cuda

py=${PYTHON:-python3}
command -v "$py" >/dev/null || { echo "error: python3 with pip is needed to fetch the torch wheels" >&2; exit 1; }

# The three wheels carry different manylinux tags (torch 2_28, cuda-cupti 2_25,
# cuda-runtime 2014 = 2_17). Older pips (23.x, as Python 3.11 ships) do not widen
# one --platform to older tags, so every tag from 2_17 to 2_28 is listed.
fetch_wheels() {
  local platforms=(--platform manylinux2014_x86_64) m
  for m in $(seq 17 28); do platforms+=(--platform "manylinux_2_${m}_x86_64"); done
  "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    "${platforms[@]}" -d "$1" "torch==$TORCH_VERSION" "$CUDART" "$CUPTI"
}

# `--check-fetch`: resolve and download the wheels into an empty directory with pip's
# cache off, as a fresh machine does (run by `make test`, so a warm cache cannot hide it).
if [ "${1:-}" = "--check-fetch" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  PIP_NO_CACHE_DIR=1 fetch_wheels "$tmp"
  for w in "torch-$TORCH_VERSION-" nvidia_cuda_runtime- nvidia_cuda_cupti-; do
    ls "$tmp/$w"*.whl >/dev/null 2>&1 || { echo "error: pip fetched no $w wheel" >&2; exit 1; }
  done
  echo "wheel fetch from an empty cache: ok ($(ls "$tmp" | tr '\n' ' '))"
  exit 0
fi

if [ -f "$dest/build-version" ] && [ "$(cat "$dest/layout" 2>/dev/null)" = "$layout" ]; then
  echo "libtorch $TORCH_VERSION ($layout) already set up in $dest"
  exit 0
fi

# torch-sys decides at build time whether to link CUDA; after a layout switch it must rebuild.
if [ -f "$dest/layout" ] && [ -d "$root/target" ]; then
  echo "switching libtorch layout to $layout: cleaning torch-sys builds"
  (cd "$root" && cargo clean -q -p torch-sys) || true
fi

rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/lib"

if [ "$layout" = cpu ]; then
  wheels=$cache/wheels
  mkdir -p "$wheels"
  if ! ls "$wheels"/torch-$TORCH_VERSION-*.whl >/dev/null 2>&1 \
     || ! ls "$wheels"/nvidia_cuda_runtime-*.whl >/dev/null 2>&1 \
     || ! ls "$wheels"/nvidia_cuda_cupti-*.whl >/dev/null 2>&1; then
    echo "downloading torch==$TORCH_VERSION wheels into $wheels (about 545 MB) ..."
    fetch_wheels "$wheels"
  fi
  # Keep only what a CPU program needs: headers, libtorch_cpu, c10, gomp, and the two
  # small CUDA runtime libraries that libtorch_cpu.so lists as needed (they load without a GPU).
  "$py" - "$wheels" "$dest.tmp" "$TORCH_VERSION" <<'PY'
import glob, os, sys, zipfile
wheels, out, version = sys.argv[1:]
keep_lib = {"libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libcudart.so.13", "libcupti.so.13"}
def extract(whl):
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            n = info.filename
            if n.startswith("torch/include/") and not n.endswith("/"):
                target = os.path.join(out, n[len("torch/"):])
            elif os.path.basename(n) in keep_lib and "/lib/" in n:
                target = os.path.join(out, "lib", os.path.basename(n))
            else:
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
for pattern in (f"torch-{version}-*.whl", "nvidia_cuda_runtime-*.whl", "nvidia_cuda_cupti-*.whl"):
    extract(sorted(glob.glob(os.path.join(wheels, pattern)))[-1])
PY
  # The wheel's libtorch.so only exists to pull in libtorch_cuda.so: replace it by an
  # empty library so that `-ltorch` resolves and no CUDA code is linked.
  "${CC:-cc}" -shared -o "$dest.tmp/lib/libtorch.so" -x c /dev/null
else
  venv=$root/.libtorch-venv
  if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet "torch==$TORCH_VERSION"
  site=$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
  # The libraries stay in the venv so that their $ORIGIN-relative paths to the
  # nvidia-* packages keep working; build scripts add the resolved directory as rpath.
  rmdir "$dest.tmp/lib"
  ln -s "$site/include" "$dest.tmp/include"
  ln -s "$site/lib" "$dest.tmp/lib"
fi

echo "$TORCH_VERSION" > "$dest.tmp/build-version"
echo "$layout" > "$dest.tmp/layout"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "libtorch $TORCH_VERSION ($layout) set up in $dest"
