#!/usr/bin/env bash
# Does dataset embedding use every core? The CPU proxy of issue 16, in one run:
#
#   scripts/bench-feed.sh [N_IMAGES=400] [ROUNDS=2]
#
# For exact and then --fast-decode decoding, each round:
#   1. the single-thread cliptune-prep rate: decode + resize + normalise N photo-like 640x480
#      JPEGs (scripts/bench/make_jpegs.py) to 3x224x224 on one thread, files in memory
#      (crates/prep/examples/bench_fast_decode.rs);
#   2. `cliptune embed-dataset` over the same JPEGs, imported into a store, with a tiny
#      model (one layer, width 8: the device's share is a few percent) and --decode-threads
#      = every core (DECODE_THREADS to change it), fp32, one libtorch thread;
# then prints cores x the single-thread rate, the embed-dataset rate, their ratio (floor
# 80%), the stage timings' bottleneck (should be decode), the per-core speed-up of
# --fast-decode (floor 2x) and the cosine between the two paths' vectors (floor 0.995 on
# the mean). Every figure carries the load average at the time: other processes on the
# machine lower the ratio, so run it when the machine is quiet.
#
# Builds with `cargo build --release` (PROFILE=dev: the debug build, faster to build, slower
# to run; both figures then come from the same build). The JPEG maker and the summary run in
# a small NumPy + Pillow venv (scripts/benchvenv.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-400} rounds=${2:-2}
profile=${PROFILE:-release}
py=$(scripts/benchvenv.sh)
work=${CLIPTUNE_BENCH_DIR:-$PWD/out/bench-feed}
cores=$(nproc)
threads=${DECODE_THREADS:-$cores}
batch=${BATCH:-64}
mkdir -p "$work"
if [ "$(ls "$work/jpegs" 2>/dev/null | grep -c '\.jpg$')" != "$n" ]; then
  rm -rf "$work/jpegs"
  "$py" scripts/bench/make_jpegs.py "$work/jpegs" "$n"
  (cd "$work/jpegs" && for f in *.jpg; do printf '{"file": "%s", "caption": "picture %s"}\n' "$f" "${f%.jpg}"; done > captions.jsonl)
fi
if [ "$profile" = release ]; then
  cargo build --release -q -p cliptune-cli -p cliptune-prep --bin cliptune --example bench_fast_decode
  dir=${CARGO_TARGET_DIR:-target}/release
else
  cargo build -q -p cliptune-cli -p cliptune-prep --bin cliptune --example bench_fast_decode
  dir=${CARGO_TARGET_DIR:-target}/debug
fi
bin=$dir/cliptune single=$dir/examples/bench_fast_decode

home=$work/home
rm -rf "$home"
c() { "$bin" --home "$home" "$@"; }
export CLIPTUNE_LOG=warn
cat >"$work/tiny.json" <<'JSON'
{"embed_dim": 8, "activation": "quick_gelu",
 "vision": {"width": 8, "layers": 1, "heads": 1, "patch_size": 32, "image_size": 224, "mlp_dim": 32},
 "text": {"width": 8, "layers": 1, "heads": 1, "context_length": 77, "vocab_size": 49408, "mlp_dim": 32}}
JSON
c datasets import "$work/jpegs" --name bench >/dev/null
c models create --arch "$work/tiny.json" --name tiny --seed 0 >/dev/null
# Vectors of the store as {entity: [...]} into $1 (or nowhere), then dropped so that the
# next run embeds everything again.
take_vectors() {
  "$py" - "$home/store.db" "$1" <<'PY'
import json, sqlite3, struct, sys
db = sqlite3.connect(sys.argv[1])
rows = db.execute("SELECT entity_id, value FROM vectors").fetchall()
if sys.argv[2] != "-":
    json.dump({e: struct.unpack(f"<{len(v)//4}f", v) for e, v in rows}, open(sys.argv[2], "w"))
db.execute("DELETE FROM vectors"); db.commit()
PY
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

rows=$work/rows.jsonl
: >"$rows"
echo "# $n JPEGs 640x480 -> 224, $cores cores, decode threads $threads, batch $batch, $profile build"
for r in $(seq "$rounds"); do
  for mode in exact fast; do
    flag=(); [ $mode = fast ] && flag=(--fast-decode)
    before=$(load)
    one=$("$single" "$work/jpegs" 224 $mode)
    c --json embed-dataset --dataset bench --model tiny --device cpu --precision fp32 \
      --torch-threads 1 --batch-size "$batch" --decode-threads "$threads" "${flag[@]}" >"$work/embed-$mode.json"
    after=$(load)
    take_vectors "$([ "$r" = 1 ] && echo "$work/vectors-$mode.json" || echo -)"
    "$py" - "$mode" "$r" "$cores" "$before" "$after" "$one" "$work/embed-$mode.json" >>"$rows" <<'PY'
import json, sys
mode, r, cores, before, after, one, path = sys.argv[1:]
e = json.load(open(path))
assert e["status"] == "success" and not e["failed"], e
one = json.loads(one)
print(json.dumps({"mode": mode, "round": int(r), "cores": int(cores), "load_before": before,
                  "load_after": after, "single": one["images_per_s"], "embed": e["items_per_s"],
                  "embedded": e["embedded"], "threads": e["stages"]["decode_threads"],
                  "stages": e["stages"]}))
PY
    "$py" - "$(tail -1 "$rows")" <<'PY'
import json, sys
x = json.loads(sys.argv[1])
s = x["stages"]
ideal = x["cores"] * x["single"]
stages = ", ".join(f"{k} {s[k]['seconds']:.2f} s" for k in ("read", "decode", "device", "write"))
print(f"round {x['round']} {x['mode']:5}: single thread {x['single']:.1f}/s, x {x['cores']} cores = "
      f"{ideal:.1f}/s; embed-dataset {x['embed']:.1f}/s on {x['threads']} decode threads = "
      f"{100 * x['embed'] / ideal:.1f}% (floor 80%); stages {stages}; bottleneck {s['bottleneck']}; "
      f"load {x['load_before']} -> {x['load_after']}")
PY
  done
done

"$py" - "$rows" "$work/vectors-exact.json" "$work/vectors-fast.json" <<'PY'
import json, sys
import numpy as np
rows = [json.loads(l) for l in open(sys.argv[1])]
def mean(mode, key):
    v = [r[key] for r in rows if r["mode"] == mode]
    return sum(v) / len(v)
print("# summary (means over rounds)")
for mode in ("exact", "fast"):
    ideal = rows[0]["cores"] * mean(mode, "single")
    ratio = mean(mode, "embed") / ideal
    necks = sorted({r["stages"]["bottleneck"] for r in rows if r["mode"] == mode})
    print(f"{mode}: cores x single thread {ideal:.1f}/s, embed-dataset {mean(mode, 'embed'):.1f}/s, "
          f"ratio {100 * ratio:.1f}% ({'meets' if ratio >= 0.8 else 'below'} the 80% floor); "
          f"bottleneck {'/'.join(necks)}")
per_core = mean("fast", "embed") / mean("exact", "embed")
single = mean("fast", "single") / mean("exact", "single")
# The machine's speed drifts (other tenants of the host): a round's fast run against the
# exact run just before it cancels most of the drift.
def paired(key):
    by = {(r["round"], r["mode"]): r[key] for r in rows}
    v = sorted(by[(k, "fast")] / by[(k, "exact")] for k, m in by if m == "exact")
    return v, v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
pairs, med = paired("embed")
spairs, smed = paired("single")
print(f"--fast-decode per-core speed-up: embed-dataset {per_core:.2f}x (ratio of means), per round "
      f"{', '.join(f'{p:.2f}' for p in pairs)} (median {med:.2f}x); single thread {single:.2f}x, "
      f"per round median {smed:.2f}x ({'meets' if med >= 2 else 'below'} the 2x floor)")
a, b = json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
assert set(a) == set(b), "the two runs stored different items"
x = np.array([a[k] for k in sorted(a)], dtype=np.float64)
y = np.array([b[k] for k in sorted(a)], dtype=np.float64)
cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
print(f"cosine exact vs --fast-decode over {len(cos)} images (tiny model, seed 0): mean {cos.mean():.6f}, "
      f"min {cos.min():.6f} ({'meets' if cos.mean() >= 0.995 else 'below'} the 0.995 floor)")
PY
