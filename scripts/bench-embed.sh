#!/usr/bin/env bash
# Dataset embedding, end to end, side by side in one run (docs/search.md):
#   cliptune: JPEG files on disk -> `datasets import` -> the embed node (POST /embed on
#             `cliptune serve`) -> vectors stored in the model's feature set;
#   open_clip: the same JPEG files -> PyTorch DataLoader (open_clip's transform) ->
#             encode_image -> vectors in a .npy.
# Same randomly initialised ViT-B/32 (QuickGELU) weights, batch size and thread count.
#   scripts/bench-embed.sh [images=256] [batch=32] [threads=$(nproc)] [precision=auto] [theirs=fp32]
# precision: cliptune's --embed-precision (auto = its default: bf16 on CUDA and on CPUs with
# native bf16, e.g. AVX512-BF16/AMX, else fp32). theirs: open_clip's, fp32 (the script's
# default) or bf16 (torch.autocast on the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-256} batch=${2:-32} threads=${3:-$(nproc)} precision=${4:-auto} theirs=${5:-fp32}
scripts/setup-libtorch.sh >/dev/null
py=$(scripts/refvenv.sh)
cargo build --release -q --bin cliptune
bin=$PWD/target/release/cliptune
work=${BENCH_DIR:-$PWD/out/bench-embed}
mkdir -p "$work"
[ -f "$work/vitb32.safetensors" ] || "$py" scripts/bench/embed_model.py "$work/vitb32.safetensors"
if [ "$(ls "$work/jpegs" 2>/dev/null | grep -c '\.jpg$')" != "$n" ]; then
  rm -rf "$work/jpegs"
  "$py" scripts/bench/make_jpegs.py "$work/jpegs" "$n"
  (cd "$work/jpegs" && for f in *.jpg; do printf '{"file": "%s", "caption": "picture %s"}\n' "$f" "${f%.jpg}"; done > captions.jsonl)
fi
export CLIPTUNE_HOME=$work/home RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads CLIPTUNE_LOG=warn
rm -rf "$CLIPTUNE_HOME"
$bin models import "$work/vitb32.safetensors" --name bench-b32 >/dev/null

echo "== cliptune: import + embed node, $n JPEGs (640x480), batch $batch, $threads threads, $precision"
t0=$(date +%s.%N)
$bin datasets import "$work/jpegs" --name bench >/dev/null
t1=$(date +%s.%N)
port=$(( 20000 + RANDOM % 20000 ))
$bin serve --addr 127.0.0.1:$port --device cpu --torch-threads "$threads" --embed-batch-size "$batch" --embed-precision "$precision" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
t2=$(date +%s.%N)
out=$(curl -sf -X POST "http://127.0.0.1:$port/embed?wait=true&timeout=3600" -H 'content-type: application/json' \
  -d '{"dataset_id": "bench", "model": "bench-b32"}')
t3=$(date +%s.%N)
kill $server; wait $server 2>/dev/null || true; trap - EXIT
echo "$out" | "$py" -c 'import json,sys; e=json.load(sys.stdin); o=e["output"]; print("execution:", e["status"], "embedded", o["embedded"], "failed", len(o["failed"]), "precision", o.get("precision"))'
ours=$("$py" - "$n" "$t0" "$t1" "$t2" "$t3" "$batch" "$threads" <<'PY'
import json, sys
n, t0, t1, t2, t3 = int(sys.argv[1]), *map(float, sys.argv[2:6])
print(json.dumps({"impl": "cliptune", "images": n, "batch": int(sys.argv[6]), "threads": int(sys.argv[7]),
                  "import_s": round(t1 - t0, 2), "embed_s": round(t3 - t2, 2), "seconds": round(t1 - t0 + t3 - t2, 2),
                  "images_per_s": round(n / (t1 - t0 + t3 - t2), 2), "embed_only_images_per_s": round(n / (t3 - t2), 2)}))
PY
)
echo "$ours"

echo "== open_clip + DataLoader: same files, batch $batch, $threads threads, $theirs"
theirs=$("$py" scripts/bench/embed_open_clip.py "$work/vitb32.safetensors" "$work/jpegs" "$work/open_clip.npy" "$batch" "$threads" "$theirs")
echo "$theirs"
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"images/s, JPEG files -> vectors: cliptune {a['images_per_s']} vs open_clip {b['images_per_s']} "
      f"= {a['images_per_s'] / b['images_per_s']:.2f}x")
PY
