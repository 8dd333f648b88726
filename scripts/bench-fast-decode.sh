#!/usr/bin/env bash
# Reduced-scale JPEG decoding (`Preprocessor::with_fast_decode`) against the exact path.
#
#   scripts/bench-fast-decode.sh [N_IMAGES=300] [ROUNDS=2]
#
# 1. Speed: decode + resize + normalise N photo-like 640x480 JPEGs (scripts/bench/make_jpegs.py)
#    to 3x224x224 on one thread, files already in memory (crates/prep/examples/bench_fast_decode.rs),
#    exact and fast alternating, ROUNDS rounds (odd rounds exact first, even rounds fast first).
# 2. Pixels: the normalised tensors' exact-vs-fast difference (examples/fast_decode_dump.rs).
# 3. Embeddings, when CLIPTUNE names a cliptune binary (e.g. built from this tree with
#    `cargo build --release --bin cliptune`): the fast path's 224x224 RGB images are written as
#    PNGs, which cliptune's exact path embeds unchanged, so no CLI flag is needed.
#    - cosine exact vs fast over the N JPEGs with a randomly initialised ViT-B/32 (seed 0);
#    - with FM_MODEL (a model, id or name, in CLIPTUNE_HOME, with a 28 px image tower trained on
#      Fashion-MNIST; docs/preprocessing.md says how it was made): Fashion-MNIST's 10,000 test
#      images as 224x224 JPEGs (scripts/bench/fmnist_jpegs.py; 1/8 scale), zero-shot accuracy
#      (`cliptune eval`) exact vs fast, and the cosine between the two paths' embeddings.
#
# Needs the Python reference venv (scripts/refvenv.sh) for the JPEG makers and the cosines.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-300}
rounds=${2:-2}
py=$(scripts/refvenv.sh)
work=${CLIPTUNE_BENCH_DIR:-out/bench-fast-decode}
threads=${THREADS:-2}
mkdir -p "$work"
if [ "$(ls "$work/jpegs"/*.jpg 2>/dev/null | wc -l)" != "$n" ]; then
  rm -rf "$work/jpegs"
  "$py" scripts/bench/make_jpegs.py "$work/jpegs" "$n"
fi
cargo build --release -q -p cliptune-prep --example bench_fast_decode --example fast_decode_dump
bin=${CARGO_TARGET_DIR:-target}/release/examples

rm -f "$work/speed.jsonl.tmp"
echo "# $n JPEGs 640x480 -> 3x224x224, one thread, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="exact fast"; else order="fast exact"; fi
  for m in $order; do
    res=$("$bin/bench_fast_decode" "$work/jpegs" 224 "$m")
    echo "round $r: $res"
    echo "$res" >>"$work/speed.jsonl.tmp"
  done
done
"$py" - "$work/speed.jsonl.tmp" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for key, unit in (("images_per_s", "images/s (wall clock)"), ("images_per_cpu_s", "images per CPU second")):
    ex = [r[key] for r in rows if r["mode"] == "exact"]
    fa = [r[key] for r in rows if r["mode"] == "fast"]
    ratios = [f / e for e, f in zip(ex, fa)]
    print(f"{unit}: exact {ex}, fast {fa}; fast/exact per round "
          f"{[round(x, 2) for x in ratios]}, of the means {sum(fa) / len(fa) / (sum(ex) / len(ex)):.2f}x")
PY
rm -f "$work/speed.jsonl.tmp"

echo "# pixels: fast vs exact (normalised units)"
"$bin/fast_decode_dump" "$work/jpegs" 224 "$work/fast-png" fast

[ -n "${CLIPTUNE:-}" ] || { echo "CLIPTUNE not set: embedding cosine and zero-shot accuracy skipped"; exit 0; }
home=${CLIPTUNE_HOME:-$work/home}
ct() { "$CLIPTUNE" --home "$home" --json "$@"; }
cosines() { # label, exact embeddings JSON, fast embeddings JSON
  "$py" - "$@" <<'PY'
import json, sys
import numpy as np
a = np.array(json.load(open(sys.argv[2]))["image"], dtype=np.float64)
b = np.array(json.load(open(sys.argv[3]))["image"], dtype=np.float64)
cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
print(f"{sys.argv[1]}: cosine over {len(cos)} images: mean {cos.mean():.6f}, "
      f"min {cos.min():.6f}, 1st percentile {np.percentile(cos, 1):.6f}")
PY
}
if ! ct models inspect vitb32-random >/dev/null 2>&1; then
  ct models create --preset ViT-B/32 --name vitb32-random --seed 0 >/dev/null
fi
jpgs=("$work"/jpegs/*.jpg)
pngs=("${jpgs[@]/#$work\/jpegs/$work/fast-png}")
pngs=("${pngs[@]/%.jpg/.png}")
ct embed --model vitb32-random $(printf -- '--image %s ' "${jpgs[@]}") >"$work/vitb32-exact.json"
ct embed --model vitb32-random $(printf -- '--image %s ' "${pngs[@]}") >"$work/vitb32-fast.json"
# The PNG route itself: the exact path's pixels as PNGs must embed as the JPEGs do (cosine 1).
"$bin/fast_decode_dump" "$work/jpegs" 224 "$work/exact-png" exact >/dev/null
ct embed --model vitb32-random $(printf -- '--image %s ' "${pngs[@]/#$work\/fast-png/$work/exact-png}") >"$work/vitb32-exact-png.json"
cosines "check: exact pixels as PNG vs the JPEGs" "$work/vitb32-exact.json" "$work/vitb32-exact-png.json"
cosines "exact vs fast, ViT-B/32, random weights (seed 0), $n 640x480 JPEGs (1/2 scale)" "$work/vitb32-exact.json" "$work/vitb32-fast.json"

[ -n "${FM_MODEL:-}" ] || { echo "FM_MODEL not set: Fashion-MNIST zero-shot accuracy skipped"; exit 0; }
fm=$work/fmnist-jpeg224
[ -f "$fm/captions.jsonl" ] || "$py" scripts/bench/fmnist_jpegs.py "$fm" 224
"$bin/fast_decode_dump" "$fm" 28 "$work/fmnist-fast-png" fast
sed 's/\.jpg"/.png"/' "$fm/captions.jsonl" >"$work/fmnist-fast-png/captions.jsonl"
for variant in exact fast; do
  dir=$fm; [ $variant = fast ] && dir=$work/fmnist-fast-png
  ct eval --model "$FM_MODEL" --data "$dir" --device cpu --threads "$threads" >"$work/fmnist-eval-$variant.json"
  "$py" -c 'import json,sys; m=json.load(open(sys.argv[1])); print("Fashion-MNIST zero-shot, %s path: %.4f on %d test images" % (sys.argv[2], m["caption_accuracy"], m["pairs"]))' \
    "$work/fmnist-eval-$variant.json" $variant
done
mapfile -t fjpgs < <(ls "$fm"/*.jpg)
fpngs=("${fjpgs[@]/#$fm/$work/fmnist-fast-png}")
fpngs=("${fpngs[@]/%.jpg/.png}")
ct embed --model "$FM_MODEL" $(printf -- '--image %s ' "${fjpgs[@]}") >"$work/fmnist-exact.json"
ct embed --model "$FM_MODEL" $(printf -- '--image %s ' "${fpngs[@]}") >"$work/fmnist-fast.json"
cosines "exact vs fast, Fashion-MNIST model ($FM_MODEL), 10,000 test images at 224 px (1/8 scale)" "$work/fmnist-exact.json" "$work/fmnist-fast.json"
