#!/usr/bin/env bash
# Training throughput and peak memory, cliptune vs open_clip's own trainer, side by side on
# the same data (5,120 Fashion-MNIST pairs), model (scripts/bench/open_clip_fmnist.json:
# ViT width 128, 4 layers, patch 4 at 28 px; text width 128, 4 layers, context 16), batch
# 256, fp32, CPU, THREADS torch threads and one data-decoding worker each. Each trainer runs
# 2 epochs; the figure is the second epoch's training samples/s (no evaluation inside it).
# Rounds alternate (ours, theirs, ours, theirs...) so machine load hits both alike.
#
# Run: scripts/bench-train.sh            (ROUNDS=2 THREADS=2 DATA=/tmp/cliptune-bench/fmnist)
#      PRECISION=bf16 scripts/bench-train.sh   (CPU bf16 autocast on both sides: cliptune
#      "precision": "bf16", open_clip_train --precision amp_bf16; f32 master weights in both)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/refvenv.sh)
"$PY" -c 'import pandas, webdataset, open_clip_train' 2>/dev/null \
  || "$(dirname "$PY")/pip" install --quiet "open-clip-torch[training]==3.3.0" >&2
DATA=${DATA:-/tmp/cliptune-bench/fmnist}
ROUNDS=${ROUNDS:-2}
THREADS=${THREADS:-2}
PRECISION=${PRECISION:-fp32}
case "$PRECISION" in fp32) THEIR_PRECISION=fp32 ;; bf16) THEIR_PRECISION=amp_bf16 ;; *) echo "PRECISION: fp32 or bf16" >&2; exit 2 ;; esac
[ -f "$DATA/small/train.csv" ] || "$PY" scripts/bench/fashion_mnist_data.py "$DATA" 5120
[ -x target/release/cliptune ] || cargo build --release -p cliptune-cli
BIN=${BIN:-target/release/cliptune}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$BIN" --home "$WORK/home" --json models create --arch scripts/bench/open_clip_fmnist.json --name fm --seed 0 >/dev/null
CONFIG='{"batch_size": 256, "num_epochs": 2, "learning_rate": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.98],
 "epsilon": 1e-6, "warmup_steps": 10, "early_stopping": false, "validation_fraction": 0.1,
 "precision": "'"$PRECISION"'"}'
peak() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
for r in $(seq "$ROUNDS"); do
  /usr/bin/time -v "$BIN" --home "$WORK/home" --json train --data "$DATA/small" --base-model fm \
    --device cpu --threads "$THREADS" --decode-threads 1 --config "$CONFIG" >"$WORK/ours.jsonl" 2>"$WORK/ours.time"
  ours=$("$PY" -c 'import json,sys; e=[json.loads(l) for l in open(sys.argv[1]) if "\"epoch\"" in l and "\"event\":\"epoch\"" in l]; print(round(e[-1]["samples_per_sec"], 1))' "$WORK/ours.jsonl")
  rm -rf "$WORK/logs"
  OMP_NUM_THREADS=$THREADS /usr/bin/time -v "$PY" scripts/bench/open_clip_train_run.py \
    --train-data "$DATA/small/train.csv" --dataset-type csv --csv-img-key filepath --csv-caption-key title \
    --csv-separator , --model open_clip_fmnist --batch-size 256 --epochs 2 --lr 1e-3 --wd 0.1 --beta1 0.9 \
    --beta2 0.98 --eps 1e-6 --warmup 10 --workers 1 --precision "$THEIR_PRECISION" --logs "$WORK/logs" --name run \
    --log-every-n-steps 1 --report-to '' --seed 0 --save-frequency 0 >/dev/null 2>"$WORK/theirs.time"
  # Mean step time of the second epoch (open_clip logs each step's time as "Batch (t): X").
  theirs=$("$PY" - "$WORK/logs/run/out.log" <<'PYEOF'
import re, sys
t = [float(m.group(2)) for m in (re.search(r"Train Epoch: (\d+) .*Batch \(t\): ([0-9.]+)", l) for l in open(sys.argv[1])) if m and m.group(1) == "1"]
print(round(256 / (sum(t[1:]) / len(t[1:])), 1))
PYEOF
)
  echo "round $r: cliptune $ours samples/s, peak RSS $(peak "$WORK/ours.time") MiB | open_clip_train $theirs samples/s, peak RSS $(peak "$WORK/theirs.time") MiB (main process)"
done
