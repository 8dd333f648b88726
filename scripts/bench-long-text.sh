#!/usr/bin/env bash
# Server CPU for one online POST /embed of a huge text, against a short one (the floor: a
# 16 MB text answered in under 100 ms of server CPU). Texts are tokenized up to the model's
# context only, so both should cost about the same.
#
#   scripts/bench-long-text.sh [MB] [ARCH]   # MB default 16; ARCH: tiny (default) or ViT-B/32
#
# CPU time is read from /proc/<pid>/stat of the server (user + system), before and after
# each request, with nothing else sent to it.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-16}
arch=${2:-tiny}
bin=${BIN:-target/release/cliptune}
[ -x "$bin" ] || cargo build --release --bin cliptune
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
export CLIPTUNE_HOME=$work/home CLIPTUNE_DEVICE=cpu CLIPTUNE_LOG=warn
if [ "$arch" = tiny ]; then
  # The demo's tiny model with CLIP's real 77-token context.
  cat > "$work/arch.json" <<'JSON'
{"embed_dim": 64, "quick_gelu": true,
 "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
JSON
  model=$("$bin" --json models create --arch "$work/arch.json" --name bench --seed 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
else
  model=$("$bin" --json models create --preset "$arch" --name bench --seed 0 | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
fi
"$bin" serve --addr 127.0.0.1:0 > "$work/serve.out" &
pid=$!
for _ in $(seq 100); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' "$work/serve.out" | head -1)
python3 - "$url" "$model" "$pid" "$mb" <<'PY'
import json, os, sys, time, urllib.request
url, model, pid, mb = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tick = os.sysconf("SC_CLK_TCK")
def cpu_ms():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1000 / tick
def post(text):
    body = json.dumps({"texts": [text], "model_id": model}).encode()
    before, t0 = cpu_ms(), time.perf_counter()
    r = urllib.request.urlopen(urllib.request.Request(f"{url}/embed", body, {"Content-Type": "application/json"}))
    out = json.load(r)
    wall = (time.perf_counter() - t0) * 1000
    time.sleep(0.3)  # let the server's threads settle before reading its CPU time
    return cpu_ms() - before, wall, len(body), out
post("warm up: load the model")
words = "a photo of a cat sitting on a red sofa next to a window &amp; a dog. "
huge = (words * (mb * 1_000_000 // len(words) + 1))[: mb * 1_000_000 - 200]
short = words * 40  # 2.8 KB: also past the context, so its vector must equal the huge one's
rows = []
for name, text in [("2.8 KB", short), (f"{mb} MB", huge), ("2.8 KB", short), (f"{mb} MB", huge)]:
    cpu, wall, size, out = post(text)
    rows.append((name, size, cpu, wall, out["texts"][0][:3]))
    print(f"{name:>6}: body {size:>10,} B  server CPU {cpu:7.1f} ms  wall {wall:7.1f} ms")
same = rows[0][4] == rows[1][4]
print(f"the {mb} MB text's vector equals the 2.8 KB one's (same first 77 tokens): {same}")
PY
