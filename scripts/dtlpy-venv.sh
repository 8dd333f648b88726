#!/usr/bin/env bash
# Prints the python of a venv holding the real Dataloop SDK (dtlpy, pinned) and pytest, creating
# it on first use. Only the dtlpy-against-the-fake-gate tests (scripts/dtlpy-test.sh) need it.
set -euo pipefail
DTLPY_VERSION=1.126.5
PYTEST_VERSION=8.4.2
venv=${CLIPTUNE_CACHE:-$HOME/.cache/cliptune}/dtlpy-venv-$DTLPY_VERSION
# The import check is what counts: a half-made venv from an interrupted run is made again.
if [ ! -x "$venv/bin/python" ] ||
  ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('dtlpy') != '$DTLPY_VERSION')" 2>/dev/null ||
  ! "$venv/bin/python" -c 'import pytest' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "dtlpy==$DTLPY_VERSION" "pytest==$PYTEST_VERSION" >&2
fi
echo "$venv/bin/python"
