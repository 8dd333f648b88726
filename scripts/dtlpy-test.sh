#!/usr/bin/env bash
# The real Dataloop SDK (dtlpy, from PyPI) against the fake gate: builds the cliptune-gate
# and cliptune binaries, makes or reuses the dtlpy venv (scripts/dtlpy-venv.sh), runs tests/dataloop.
# Extra arguments go to pytest. CARGO_TARGET_DIR is honoured.
set -euo pipefail
cd "$(dirname "$0")/.."
# --workspace: the features of `cargo test --workspace`, so `make test` compiles nothing twice.
${CARGO:-cargo} build --quiet --workspace --bin cliptune-gate --bin cliptune
target=${CARGO_TARGET_DIR:-target}
export CLIPTUNE_GATE_BIN CLIPTUNE_BIN
CLIPTUNE_GATE_BIN=$(cd "$target/debug" && pwd)/cliptune-gate
# The runner tests start the worker the way dataloop/runner.py does in a pod.
CLIPTUNE_BIN=$(cd "$target/debug" && pwd)/cliptune
python=$(scripts/dtlpy-venv.sh)
exec "$python" -m pytest -p no:cacheprovider tests/dataloop "$@"
