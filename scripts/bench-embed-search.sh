#!/usr/bin/env bash
# Top-k search latency through `POST /search` on a real server (docs/search.md): a model's
# feature set filled with N synthetic 512-d vectors, then text queries (embedded by the
# ViT-B/32 text tower, then searched) and item queries (a stored vector as the query).
#   scripts/bench-embed-search.sh [vectors="100000 1000000"] [queries=30] [k=10]
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-"100000 1000000"} q=${2:-30} k=${3:-10}
scripts/setup-libtorch.sh >/dev/null
py=$(scripts/refvenv.sh)
cargo build --release -q --bin cliptune
cargo build --release -q -p cliptune-worker --example fill_vectors
bin=$PWD/target/release/cliptune
work=${BENCH_DIR:-$PWD/out/bench-search}
mkdir -p "$work"
[ -f "$work/vitb32.safetensors" ] || "$py" scripts/bench/embed_model.py "$work/vitb32.safetensors"
export CLIPTUNE_HOME=$work/home CLIPTUNE_LOG=warn
if ! $bin models show bench-b32 >/dev/null 2>&1; then
  $bin models import "$work/vitb32.safetensors" --name bench-b32 >/dev/null
fi
for n in $sizes; do
  echo "== $n vectors"
  target/release/examples/fill_vectors "$CLIPTUNE_HOME" bench-b32 "$n"
  port=$(( 20000 + RANDOM % 20000 ))
  $bin serve --addr 127.0.0.1:$port --device cpu >"$work/serve.log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
  python3 scripts/bench/embed_search_client.py "http://127.0.0.1:$port" bench-b32 bench-vectors "$q" "$k"
  kill $server; wait $server 2>/dev/null || true; trap - EXIT
done
