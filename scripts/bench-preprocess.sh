#!/usr/bin/env bash
# Preprocessing throughput, side by side on the same files with the same thread count:
# cliptune-prep's batched path vs PIL + torchvision in a torch DataLoader (OpenAI's transform),
# 640x480 JPEGs -> normalised 3x224x224 tensors. Also times the tokenizer on 10,000 captions.
#
#   scripts/bench-preprocess.sh [N_IMAGES=300] [THREADS="1 2"]
#
# Needs the Python reference venv (scripts/refvenv.sh creates it) and, for libjpeg-turbo's
# SIMD decoder, `nasm` at build time (without it the same decoder builds in plain C: same
# pixels, slower).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
threads=${2:-"1 2"}
py=$(scripts/refvenv.sh)
dir=${CLIPTUNE_BENCH_DIR:-out/bench-preprocess}

if [ "$(ls "$dir"/*.jpg 2>/dev/null | wc -l)" != "$n" ]; then
  rm -rf "$dir"
  "$py" scripts/bench/make_jpegs.py "$dir" "$n"
fi
command -v nasm >/dev/null || echo "note: nasm not found: libjpeg-turbo builds without SIMD (slower decode)" >&2
cargo build --release -q -p cliptune-prep --example bench_preprocess --example bench_tokenize
bin=${CARGO_TARGET_DIR:-target}/release/examples

echo "# $n JPEGs 640x480 -> 3x224x224, $(nproc) cores, $(uname -m)"
for t in $threads; do
  rust=$(RAYON_NUM_THREADS=$t "$bin/bench_preprocess" "$dir" 224 "$t")
  python=$(OMP_NUM_THREADS=1 "$py" scripts/bench/preprocess_python.py "$dir" 224 "$t")
  echo "$rust"
  echo "$python"
  "$py" - "$rust" "$python" <<'PY'
import json, sys
r, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
same = "same" if r["checksum"] == p["checksum"] else "DIFFERENT"
print(f"threads {r['threads']}: cliptune-prep {r['images_per_s']:.0f} images/s, "
      f"PIL+torchvision {p['images_per_s']:.0f} images/s, ratio {r['images_per_s'] / p['images_per_s']:.2f}x "
      f"(checksums {same})")
PY
done
"$bin/bench_tokenize" 10000 1
