#!/usr/bin/env bash
# CUDA checks of training and embedding (docs/training.md, docs/search.md). On a machine
# with an NVIDIA GPU:
#   1. training engine: ViT-B/32 at batch 128 on synthetic data, STEPS steps in bf16
#      autocast (f32 master weights) and 100 in fp32: samples/s and MFU against the
#      GPU's bf16 dense peak;
#   2. end to end on CUDA with the `cliptune` binary: generated JPEGs imported as a dataset,
#      `cliptune train` (bf16) from a random ViT-B/32, then `embed-dataset` on the CPU
#      (fp32) and on CUDA (fp32, bf16): the vectors are compared;
#   3. dataset embedding throughput on CUDA (JPEG files to stored vectors), fp32, bf16 and
#      bf16 with --fast-decode, each with its stage timings and the decode threads used;
#   4. the worker on CUDA: `make run`'s pipeline (create model -> train -> update variable
#      -> embed, scripts/demo.sh), then `cliptune serve`: POST /search, and POST /embed of an
#      image compared with the vector the embed node stored for it.
#
# Run: scripts/gpu-check.sh [STEPS=300] [IMAGES=4096]
#   Builds with cargo (needs `make setup CUDA=1`), or uses prebuilt `cliptune` and
#   `gpu_check` from $BIN_DIR (a GPU machine without Rust: build them elsewhere against
#   libtorch 2.11 with CUDA and point LD_LIBRARY_PATH at that machine's torch/lib).
#   Results go to $GPU_OUT (default out/gpu-check). GPU_CHECK_DEVICE=cpu runs parts 2 and 3
#   on the CPU instead (slow; only to check the script itself on a machine without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300} images=${2:-4096}
out=${GPU_OUT:-$PWD/out/gpu-check}
mkdir -p "$out"
if [ -n "${BIN_DIR:-}" ]; then
  bin=$BIN_DIR/cliptune check=$BIN_DIR/gpu_check
else
  scripts/setup-libtorch.sh
  cargo build --release --bin cliptune
  cargo build --release -p cliptune-train --example gpu_check
  bin=$PWD/target/release/cliptune check=$PWD/target/release/examples/gpu_check
fi
py=${PYTHON:-python3}
# The JPEG maker needs NumPy and Pillow; where this python lacks them, a small venv has them.
"$py" -c 'import numpy, PIL' 2>/dev/null || py=$(scripts/benchvenv.sh)
device=${GPU_CHECK_DEVICE:-cuda}
parts=" ${GPU_CHECK_PARTS:-1 2 3 4} "   # e.g. GPU_CHECK_PARTS=4 runs only part 4
has() { [[ "$parts" == *" $1 "* ]]; }
name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
case "$name" in
  *H200*|*H100*) peak=989 ;;   # dense bf16, SXM
  *A100*) peak=312 ;;
  *L40S*) peak=362 ;;
  *L4*) peak=121 ;;
  *) peak=0 ;;
esac
echo "GPU: ${name:-none found}; bf16 dense peak ${peak} TFLOP/s"

if [ "$device" = cuda ] && has 1; then
  echo "== 1. training step throughput (synthetic data)"
  "$check" "$steps" "$peak" bf16 | tee "$out/train_bf16.txt"
  "$check" 100 "$peak" fp32 | tee "$out/train_fp32.txt"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if has 2 || has 3; then
echo "== 2. end to end on $device"
"$py" scripts/bench/make_jpegs.py "$work/jpegs" "$images"
(cd "$work/jpegs" && i=0 && for f in *.jpg; do
  # Seven made-up classes so that training has something to fit.
  printf '{"file": "%s", "caption": "a photo of pattern %s"}\n' "$f" $((i % 7)); i=$((i + 1))
done > captions.jsonl)
mkdir -p "$work/small"
head -256 "$work/jpegs/captions.jsonl" > "$work/small/captions.jsonl"
for f in $(cut -d'"' -f4 "$work/small/captions.jsonl"); do cp "$work/jpegs/$f" "$work/small/"; done
export CLIPTUNE_HOME=$work/home CLIPTUNE_LOG=warn
c() { "$bin" --home "$CLIPTUNE_HOME" "$@"; }
# Vectors of the store as {entity: [...]}; then drop them so the next run embeds again.
take_vectors() {
  "$py" - "$CLIPTUNE_HOME/store.db" "$1" <<'PY'
import json, sqlite3, struct, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT entity_id, value FROM vectors").fetchall()
json.dump({e: struct.unpack(f"<{len(v)//4}f", v) for e, v in rows}, open(sys.argv[2], "w"))
db.execute("DELETE FROM vectors"); db.commit()
PY
}
ms() { date +%s%3N; }
c datasets import "$work/jpegs" --name big >/dev/null
c datasets import "$work/small" --name small >/dev/null
c models create --preset ViT-B/32 --name base --seed 0 >/dev/null
t0=$(ms)
c --json train --dataset big --base-model base --device "$device" \
  --config '{"batch_size": 128, "num_epochs": 2, "learning_rate": 1e-4, "precision": "bf16", "early_stopping": false}' \
  > "$out/train_e2e.jsonl"
t1=$(ms)
tail -1 "$out/train_e2e.jsonl"
# Where the last epoch's time went (read, decode on the decode threads, device steps).
"$py" - "$out/train_e2e.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
last = [l for l in lines if l.get("event") == "progress" and l.get("stages")]
if last:
    s = last[-1]["stages"]
    print("training stages (last epoch): " + ", ".join(
        f"{k} {s[k]['seconds']:.2f} s ({s[k]['items_per_s']:.1f}/s)" for k in ("read", "decode", "device"))
        + f" on {s['decode_threads']} decode threads; bottleneck {s['bottleneck']}")
PY
echo "cliptune train --device $device (bf16, 2 epochs of $images pairs, evaluation before and after each epoch): $(( t1 - t0 )) ms"
trained=$(tail -1 "$out/train_e2e.jsonl" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
runs="cpu_fp32:cpu:fp32 cuda_fp32:$device:fp32 cuda_bf16:$device:bf16"
[ "$device" = cuda ] && runs="$runs cuda_fp16:cuda:fp16"
for run in $runs; do
  IFS=: read -r tag dev prec <<<"$run"
  c --json embed-dataset --dataset small --model "$trained" --device "$dev" --precision "$prec" \
    --batch-size 64 > "$out/embed_small_$tag.json"
  take_vectors "$work/$tag.json"
done
"$py" - "$work" <<'PY' | tee "$out/compare.txt"
import json, math, sys
w = sys.argv[1]
ref = json.load(open(f"{w}/cpu_fp32.json"))
import os
for tag in ("cuda_fp32", "cuda_bf16", "cuda_fp16"):
    if not os.path.exists(f"{w}/{tag}.json"):
        continue
    got = json.load(open(f"{w}/{tag}.json"))
    assert set(got) == set(ref), f"{tag}: {len(got)} vectors vs {len(ref)} on the CPU"
    worst_cos, worst_abs = 1.0, 0.0
    for e, r in ref.items():
        g = got[e]
        dot = sum(a * b for a, b in zip(r, g))
        worst_cos = min(worst_cos, dot / math.sqrt(sum(a * a for a in r) * sum(b * b for b in g)))
        worst_abs = max(worst_abs, max(abs(a - b) for a, b in zip(r, g)))
    print(f"{tag} vs cpu_fp32 over {len(ref)} images: min cosine {worst_cos:.6f}, max |diff| {worst_abs:.2e}")
PY

echo "== 3. dataset embedding throughput on $device ($images JPEGs 640x480, ViT-B/32, batch 256, $(nproc) cores)"
# libjpeg-turbo's SIMD is in the binary only when nasm was installed at build time
# (docs/preprocessing.md, "SIMD JPEG decoding"): it decides most of the decode rate.
if ! command -v nm >/dev/null; then jsimd="unknown (no nm)"
elif nm "$bin" | grep -Eq "jsimd_idct_islow_(sse2|avx2|neon)"; then jsimd=yes
else jsimd="no (built without nasm)"; fi
echo "libjpeg-turbo SIMD in $bin: $jsimd"
# The feed: decode threads default to the usable cores less one; fast = --fast-decode.
for run in fp32: bf16: bf16:--fast-decode; do
  IFS=: read -r prec flag <<<"$run"
  tag=$prec${flag:+_fast}
  c --json embed-dataset --dataset big --model base --device "$device" --precision "$prec" \
    --batch-size 256 $flag > "$out/embed_big_$tag.json"
  take_vectors /dev/null
  "$py" - "$out/embed_big_$tag.json" "$prec ${flag:-exact-decode}" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); s = r["stages"]
print(f"{sys.argv[2]}: {r['status']}, {r['embedded']} images in {r['seconds']} s: {r['items_per_s']} images/s "
      f"with the feed on {s['decode_threads']} decode threads; stages "
      + ", ".join(f"{k} {s[k]['seconds']:.2f} s ({s[k]['items_per_s']}/s)" for k in ("read", "decode", "device", "write"))
      + f"; bottleneck {s['bottleneck']}")
PY
done

fi

echo "== 4. the worker on $device: the pipeline, then serve, /search and /embed"
CLIPTUNE_BIN=$bin CLIPTUNE_DEVICE=$device CLIPTUNE_HOME=$work/demo CLIPTUNE_DEMO_DATA=$work/demo-data \
  scripts/demo.sh > "$out/demo.txt"
grep -E 'ended|success|failed|Newest|caption_accuracy|i2t_r1|done in' "$out/demo.txt" || true
port=$(( 20000 + RANDOM % 20000 ))
"$bin" --home "$work/demo" serve --addr 127.0.0.1:$port --device "$device" > "$out/serve.log" 2>&1 &
server=$!
"$py" - "http://127.0.0.1:$port" "$work/demo-data" <<'PY' | tee "$out/serve_check.txt"
import base64, json, math, sys, time, urllib.request
url, data = sys.argv[1], sys.argv[2]
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))
for _ in range(300):
    try:
        urllib.request.urlopen(url + "/health", timeout=2); break
    except Exception:
        time.sleep(0.2)
q = "a large red circle on the left"
r = post("/search", {"text": q, "dataset_id": "shapes", "k": 5})
print("search:", [(round(h["score"], 3), h["caption"]) for h in r["results"]], r.get("timing"))
top = r["results"][0]
png = open(data + top["filename"], "rb").read()
online = post("/embed", {"images": [base64.b64encode(png).decode()]})["images"][0]
stored = post("/embed", {"item_ids": [top["image_item_id"]]})["items"][0]
dot = sum(a * b for a, b in zip(online, stored))
cos = dot / math.sqrt(sum(a * a for a in online) * sum(b * b for b in stored))
print(f"online /embed of {top['filename']} vs the embed node's stored vector: cosine {cos:.6f}")
assert top["caption"] == q, "the best match should carry the query's caption"
assert cos > 0.999, cos
PY
kill $server; wait $server 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm --format=csv || true
