#!/usr/bin/env bash
# CUDA check of the training engine: ~300 steps of ViT-B/32 at batch 128 on synthetic data
# with bf16 autocast; prints samples/s and MFU against the GPU's bf16 dense peak.
# Needs the CUDA libtorch layout (`make setup CUDA=1`). Unverified until run on a GPU machine.
#
# Run: scripts/gpu-check.sh [STEPS] [PEAK_TFLOPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-300}
peak=${2:-}
if [ -z "$peak" ]; then
  name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || true)
  case "$name" in
    *H200*|*H100*) peak=989 ;;   # dense bf16, SXM
    *A100*) peak=312 ;;
    *L40S*) peak=362 ;;
    *L4*) peak=121 ;;
    *) peak=0 ;;
  esac
  echo "GPU: ${name:-unknown}; bf16 peak ${peak} TFLOP/s" >&2
fi
cargo run --release -p cliptune-train --example gpu_check -- "$steps" "$peak"
