#!/usr/bin/env bash
# Forward throughput of both CLIP towers, cliptune (tch) next to PyTorch + open_clip,
# same preset, batch, iterations and thread count; prints both and the ratio.
#   scripts/bench-forward.sh [preset=ViT-B/32] [batch=32] [iters=10] [threads=1]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-ViT-B/32} batch=${2:-32} iters=${3:-10} threads=${4:-1}
scripts/setup-libtorch.sh >/dev/null
py=$(scripts/refvenv.sh)
cargo build --release -q -p cliptune-clip --example bench_forward
ours=$(target/release/examples/bench_forward "$preset" "$batch" "$iters" "$threads")
theirs=$(OMP_NUM_THREADS=$threads "$py" scripts/bench/forward_torch.py "$preset" "$batch" "$iters" "$threads")
echo "$ours"
echo "$theirs"
"$py" - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ("image_per_s", "text_per_s"):
    print(f"{k}: cliptune/open_clip = {a[k] / b[k]:.3f}x")
PY
