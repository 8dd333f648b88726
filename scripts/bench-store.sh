#!/usr/bin/env bash
# Benchmarks of the embedded store (docs/store.md): top-10 cosine query latency over
# 100,000 and 1,000,000 x 512 vectors, and importing 10,000 files with captions.jsonl.
# Usage: scripts/bench-store.sh [--quick]   (--quick: skip the 1,000,000-vector run)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-$(nproc)}"
cargo build --release -p cliptune-store --bin cliptune-store-stress
bin="$CARGO_TARGET_DIR/release/cliptune-store-stress"
echo "# vectors: 100,000 x 512, 50 queries"
"$bin" bench-vectors 100000 512 50
if [[ "${1:-}" != "--quick" ]]; then
  echo "# vectors: 1,000,000 x 512, 20 queries (about 4 GB of disk and 2.5 GB of memory)"
  "$bin" bench-vectors 1000000 512 20
fi
echo "# import: 10,000 files of 32 KB with captions.jsonl, then the same folder again"
"$bin" bench-import 10000 32
