#!/usr/bin/env bash
# Quality benchmark: CLIP trained from scratch on Fashion-MNIST (captions "a photo of a
# {class}"), cliptune and open_clip_train side by side with the same recipe, each given the
# number of epochs that fits the 10-minute budget at its own measured speed on this machine
# (EPOCHS_OURS / EPOCHS_OPENCLIP; see docs/training.md), then zero-shot accuracy on the
# 10,000 test images (each image gets the best of the 10 class captions).
#
# Run: EPOCHS_OURS=2 EPOCHS_OPENCLIP=2 scripts/bench-train-fmnist.sh   (THREADS=2, DATA=...)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(scripts/refvenv.sh)
DATA=${DATA:-/tmp/cliptune-bench/fmnist}
THREADS=${THREADS:-2}
EPOCHS_OURS=${EPOCHS_OURS:-2}
EPOCHS_OPENCLIP=${EPOCHS_OPENCLIP:-2}
ONLY=${ONLY:-both}
[ -f "$DATA/test/test.csv" ] || "$PY" scripts/bench/fashion_mnist_data.py "$DATA" 5120
[ -x target/release/cliptune ] || cargo build --release -p cliptune-cli
BIN=${BIN:-target/release/cliptune}
WORK=${WORK:-$(mktemp -d)}
LR=${LR:-1e-3} WD=0.1 WARMUP=${WARMUP:-100} BATCH=${BATCH:-256}
if [ "$ONLY" != openclip ]; then
  "$BIN" --home "$WORK/home" --json models create --arch scripts/bench/open_clip_fmnist.json --name fm --seed 0 >/dev/null
  start=$(date +%s)
  "$BIN" --home "$WORK/home" --json train --data "$DATA/train" --base-model fm --name fm-trained --device cpu \
    --threads "$THREADS" --decode-threads 1 --config "{\"batch_size\": $BATCH, \"num_epochs\": $EPOCHS_OURS,
    \"learning_rate\": $LR, \"weight_decay\": $WD, \"betas\": [0.9, 0.98], \"epsilon\": 1e-6,
    \"warmup_steps\": $WARMUP, \"lr_schedule\": \"cosine\", \"early_stopping\": false, \"eval_batch_size\": 500}" \
    >"$WORK/ours.jsonl"
  echo "cliptune: $EPOCHS_OURS epochs in $(( $(date +%s) - start )) s wall clock (data check, baseline and per-epoch validation included)"
  "$BIN" --home "$WORK/home" --json eval --model fm-trained --data "$DATA/test" --device cpu --threads "$THREADS" \
    | "$PY" -c 'import json,sys; m=json.load(sys.stdin); print("cliptune zero-shot accuracy %.4f on %d test images" % (m["caption_accuracy"], m["pairs"]))'
fi
if [ "$ONLY" != ours ]; then
  start=$(date +%s)
  OMP_NUM_THREADS=$THREADS "$PY" scripts/bench/open_clip_train_run.py \
    --train-data "$DATA/train/train.csv" --dataset-type csv --csv-img-key filepath --csv-caption-key title \
    --csv-separator , --model open_clip_fmnist --batch-size $BATCH --epochs "$EPOCHS_OPENCLIP" --lr $LR --wd $WD \
    --beta1 0.9 --beta2 0.98 --eps 1e-6 --warmup $WARMUP --lr-scheduler cosine --workers 1 --precision fp32 \
    --logs "$WORK/logs" --name run --log-every-n-steps 10 --report-to '' --seed 0 --save-frequency 1 >"$WORK/theirs.log" 2>&1
  echo "open_clip_train: $EPOCHS_OPENCLIP epochs in $(( $(date +%s) - start )) s (training only)"
  "$PY" scripts/bench/open_clip_zeroshot.py open_clip_fmnist "$WORK/logs/run/checkpoints/epoch_$EPOCHS_OPENCLIP.pt" \
    "$DATA/test/test.csv" | sed 's/^/open_clip /'
fi
echo "work dir: $WORK"
