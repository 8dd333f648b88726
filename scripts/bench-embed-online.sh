#!/usr/bin/env bash
# Online `POST /embed` throughput on a real server under a load tool (ApacheBench, `ab`):
# one request at a time vs 64 concurrent clients, each request one short text, ViT-B/32
# (random weights, QuickGELU) on the CPU. Dynamic batching should make the concurrent rate
# several times the sequential one (docs/search.md).
#   scripts/bench-embed-online.sh [requests=2000] [concurrency=64] [kind=text|image] [torch_threads=0: libtorch's default]
# On a machine busy with other work, torch_threads=1 avoids OpenMP threads spinning against
# each other (5-15x slower single requests were seen with 2 threads at load average 12 on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000} c=${2:-64} kind=${3:-text} threads=${4:-0}
command -v ab >/dev/null || { echo "error: needs ApacheBench: apt-get install -y apache2-utils" >&2; exit 1; }
scripts/setup-libtorch.sh >/dev/null
py=$(scripts/refvenv.sh)
cargo build --release -q --bin cliptune
bin=$PWD/target/release/cliptune
work=${BENCH_DIR:-$PWD/out/bench-online}
mkdir -p "$work"
[ -f "$work/vitb32.safetensors" ] || "$py" scripts/bench/embed_model.py "$work/vitb32.safetensors"
export CLIPTUNE_HOME=$work/home CLIPTUNE_LOG=warn
if ! $bin models show bench-b32 >/dev/null 2>&1; then
  $bin models import "$work/vitb32.safetensors" --name bench-b32 >/dev/null
fi
if [ "$kind" = image ]; then
  "$py" scripts/bench/make_jpegs.py "$work/one" 1 >/dev/null
  printf '{"images": ["%s"], "model_id": "bench-b32"}' "$(base64 -w0 "$work/one/img00000.jpg")" > "$work/body.json"
else
  printf '{"texts": ["a photo of a dog playing with a red ball in the park"], "model_id": "bench-b32"}' > "$work/body.json"
fi
port=$(( 20000 + RANDOM % 20000 ))
$bin serve --addr 127.0.0.1:$port --device cpu --torch-threads "$threads" >"$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
curl -si -X POST "http://127.0.0.1:$port/embed" -H 'content-type: application/json' -d @"$work/body.json" \
  | grep -iE '^(HTTP|server-timing|x-)' | tr -d '\r'
load() {  # requests concurrency
  ab -q -k -n "$1" -c "$2" -p "$work/body.json" -T application/json "http://127.0.0.1:$port/embed" > "$work/ab-$2.txt"
  local rps non2xx p50 p99
  rps=$(awk '/^Requests per second/ {print $4}' "$work/ab-$2.txt")
  non2xx=$(awk '/^Non-2xx responses/ {print $3}' "$work/ab-$2.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$work/ab-$2.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$work/ab-$2.txt")
  echo "concurrency $2: $1 requests, ${rps} requests/s, latency p50 ${p50} ms p99 ${p99} ms, non-2xx ${non2xx:-0}" >&2
  echo "$rps"
}
ab -q -k -n 20 -c 4 -p "$work/body.json" -T application/json "http://127.0.0.1:$port/embed" >/dev/null  # warm up
one=$(load $(( n / 10 )) 1)
many=$(load "$n" "$c")
kill $server; wait $server 2>/dev/null || true; trap - EXIT
python3 -c "print(f'$kind requests/s: {float(\"$many\"):.1f} at concurrency $c vs {float(\"$one\"):.1f} one at a time = {float(\"$many\") / float(\"$one\"):.2f}x')"
