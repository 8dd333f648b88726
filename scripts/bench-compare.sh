#!/usr/bin/env bash
# Before/after: the same training, dataset embedding and search runs with two `cliptune`
# release binaries (say, a commit before a refactor and HEAD), rounds alternating which goes
# first so machine load hits both alike. Each binary works in its own store, made by itself
# from the same JPEGs and the same seeded model.
#
#   scripts/bench-compare.sh OLD_BIN NEW_BIN [N_IMAGES=400] [ROUNDS=2]
#
#   train:  `cliptune train` 1 epoch, batch 32, a small ViT (width 64, 2 layers, patch 32 at
#           224 px) on N captioned 640x480 JPEGs (scripts/bench/make_jpegs.py): samples/s
#           of the epoch (its epoch line);
#   embed:  `cliptune embed-dataset` of the same images, fp32, 2 decode threads: images/s;
#   search: 20 x `cliptune search --text ... -k 10 --json` over the feature set (one process
#           each: model load + text tower + nearest): median wall-clock ms.
# Build each binary with `cargo build --release --bin cliptune` in its checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 n=${3:-400} rounds=${4:-2}
py=$(scripts/benchvenv.sh)
work=${CLIPTUNE_BENCH_DIR:-$PWD/out/bench-compare}
mkdir -p "$work"
jpegs=$work/jpegs
if [ "$(ls "$jpegs" 2>/dev/null | grep -c '\.jpg$')" != "$n" ]; then
  rm -rf "$jpegs"
  "$py" scripts/bench/make_jpegs.py "$jpegs" "$n"
  (cd "$jpegs" && for f in *.jpg; do printf '{"file": "%s", "caption": "picture %s"}\n' "$f" "${f%.jpg}"; done > captions.jsonl)
fi
cat >"$work/small.json" <<'JSON'
{"embed_dim": 64, "activation": "quick_gelu",
 "vision": {"width": 64, "layers": 2, "heads": 2, "patch_size": 32, "image_size": 224, "mlp_dim": 256},
 "text": {"width": 64, "layers": 2, "heads": 2, "context_length": 77, "vocab_size": 49408, "mlp_dim": 256}}
JSON
export CLIPTUNE_LOG=warn
setup() { # $1 binary, $2 home
  rm -rf "$2"
  "$1" --home "$2" datasets import "$jpegs" --name bench >/dev/null
  "$1" --home "$2" models create --arch "$work/small.json" --name small --seed 0 >/dev/null
}
one() { # $1 label, $2 binary, $3 home; prints one JSON line
  local b=$2 h=$3
  local t
  t=$("$b" --home "$h" --json train --dataset bench --base-model small --name "ft-$RANDOM$RANDOM" \
    --device cpu --decode-threads 1 --threads 1 \
    --config '{"num_epochs": 1, "batch_size": 32, "early_stopping": false}' |
    "$py" -c 'import json, sys
rates = [l["samples_per_sec"] for l in map(json.loads, sys.stdin)
         if l.get("event") == "epoch" and l.get("samples_per_sec")]
print(round(rates[-1], 1))')
  "$py" - "$h/store.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute("DELETE FROM vectors"); db.commit()
PY
  local e
  e=$("$b" --home "$h" --json embed-dataset --dataset bench --model small --device cpu \
    --precision fp32 --torch-threads 1 --decode-threads 2 | "$py" -c 'import json, sys; print(json.load(sys.stdin)["items_per_s"])')
  local s
  s=$("$py" - "$b" "$h" <<'PY'
import statistics, subprocess, sys, time
b, h = sys.argv[1:]
ms = []
for i in range(20):
    t = time.perf_counter()
    subprocess.run([b, "--home", h, "--json", "search", "--dataset", "bench", "--model", "small",
                    "--text", f"picture {i:05d}", "-k", "10"], check=True, stdout=subprocess.DEVNULL)
    ms.append(1000 * (time.perf_counter() - t))
print(round(statistics.median(ms), 1))
PY
)
  echo "{\"bin\": \"$1\", \"train_samples_per_s\": $t, \"embed_images_per_s\": $e, \"search_ms\": $s, \"load\": \"$(cut -d' ' -f1 /proc/loadavg)\"}"
}
setup "$old" "$work/home-old"
setup "$new" "$work/home-new"
rows=$work/rows.jsonl
: >"$rows"
echo "# $n JPEGs, $(nproc) cores; old $old, new $new"
for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="old new"; else order="new old"; fi
  for which in $order; do
    if [ $which = old ]; then one old "$old" "$work/home-old"; else one new "$new" "$work/home-new"; fi | tee -a "$rows"
  done
done
"$py" - "$rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("# means over rounds")
for k in ("train_samples_per_s", "embed_images_per_s", "search_ms"):
    o = [r[k] for r in rows if r["bin"] == "old"]
    n = [r[k] for r in rows if r["bin"] == "new"]
    mo, mn = sum(o) / len(o), sum(n) / len(n)
    print(f"{k}: old {mo:.1f} ({', '.join(map(str, o))}), new {mn:.1f} ({', '.join(map(str, n))}), new/old {mn / mo:.3f}")
PY
