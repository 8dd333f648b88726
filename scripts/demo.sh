#!/usr/bin/env bash
# The README's main job on the embedded default. Uses a demo home under out/ unless
# CLIPTUNE_HOME is set; running it twice works (it starts from a fresh demo home).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/cliptune
export CLIPTUNE_HOME=${CLIPTUNE_HOME:-$PWD/out/demo-home}
rm -rf "$CLIPTUNE_HOME"
echo "== creating a small CLIP model (random weights: no pretrained weights can be downloaded)"
id=$($bin models create --arch tests/fixtures/clip/hf-tiny/config.json --name demo-base --seed 0)
echo "model id: $id"
$bin models inspect "$CLIPTUNE_HOME/models/$id"
