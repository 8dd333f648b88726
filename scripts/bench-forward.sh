#!/usr/bin/env bash
# Forward throughput of both CLIP towers, cliptune (tch) next to PyTorch + open_clip,
# same preset, batch, iterations and thread count. The two alternate for ROUNDS rounds and
# the best round of each counts, so a noisy neighbour hurts both alike.
#   scripts/bench-forward.sh [preset=ViT-B/32] [batch=32] [iters=10] [threads=1] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-ViT-B/32} batch=${2:-32} iters=${3:-10} threads=${4:-1} rounds=${5:-3}
scripts/setup-libtorch.sh >/dev/null
py=$(scripts/refvenv.sh)
cargo build --release -q -p cliptune-clip --example bench_forward
results=()
for _ in $(seq "$rounds"); do
  results+=("$(target/release/examples/bench_forward "$preset" "$batch" "$iters" "$threads")")
  results+=("$(OMP_NUM_THREADS=$threads "$py" scripts/bench/forward_torch.py "$preset" "$batch" "$iters" "$threads")")
done
printf '%s\n' "${results[@]}"
printf '%s\n' "${results[@]}" | "$py" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
best = {}
for r in rows:
    for k in ("image_per_s", "text_per_s"):
        best[(r["impl"], k)] = max(best.get((r["impl"], k), 0), r[k])
for k in ("image_per_s", "text_per_s"):
    a, b = best[("cliptune", k)], best[("open_clip", k)]
    print(f"{k}: cliptune {a:.2f}  open_clip {b:.2f}  ratio {a / b:.3f}x")
'
