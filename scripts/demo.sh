#!/usr/bin/env bash
# The README's main job (`make run`), on the embedded store: draw a captioned image set,
# create a small base model, import the set, install the "CLIP Fine-tuning" template and run
# it (create model -> train -> update variable -> embed), then search with the new model.
#
# Uses a demo home and data folder under out/ unless CLIPTUNE_HOME / CLIPTUNE_DEMO_DATA are
# set; both are recreated, so running it twice works. CLIPTUNE_DEVICE picks the device
# (default auto: CUDA when this build has it, else the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CLIPTUNE_BIN:-target/debug/cliptune}
[ -x "$bin" ] || { echo "error: $bin not found: run 'make build' first" >&2; exit 1; }
export CLIPTUNE_HOME=${CLIPTUNE_HOME:-$PWD/out/demo-home}
data=${CLIPTUNE_DEMO_DATA:-$PWD/out/demo-shapes}
pipeline="CLIP Fine-tuning"
rm -rf "$CLIPTUNE_HOME" "$data"
started=$SECONDS

echo "== 1/6 drawing a captioned image set (coloured shapes, nothing downloaded)"
"$bin" demo data --out "$data" --count 1000 --size 64

echo "== 2/6 creating a small base model (random weights: no pretrained weights can be downloaded)"
base=$("$bin" models create --arch "$data/arch.json" --name demo-base --seed 0)
echo "base model: $base"

echo "== 3/6 importing the image set"
"$bin" datasets import "$data" --name shapes

echo "== 4/6 installing the pipeline template from dataloop.json"
"$bin" pipeline install dataloop.json

echo "== 5/6 running the pipeline: create model -> train -> update variable -> embed"
"$bin" pipeline execute "$pipeline" \
  --var "Dataset with captions=shapes" \
  --var "Base CLIP model=demo-base" \
  --var 'Model config={"num_epochs": 30, "batch_size": 64, "learning_rate": 0.001, "warmup_steps": 20, "weight_decay": 0.05, "early_stopping": false}'

echo "== 6/6 searching the set with the new model (the pipeline's \"Newest CLIP model\")"
for q in "a large red circle on the left" "a small blue cross on the right"; do
  "$bin" demo query --dataset shapes --text "$q" -k 5
done

echo "== done in $((SECONDS - started)) s; store in $CLIPTUNE_HOME"
echo "   next: $bin serve   # then open http://127.0.0.1:8080/ to search in a browser"
