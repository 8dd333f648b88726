#!/usr/bin/env bash
# The search page's browser test: headless Chromium (Debian's package) driven by
# scripts/browser-test.mjs against a real server on a temporary store.
# Installs chromium with apt-get when it is missing (as root). Every step has a time limit.
#   scripts/browser-test.sh            # BROWSER_TEST_SCREENSHOTS=DIR keeps PNGs of the pages
#   scripts/browser-test.sh --install  # only check node and install chromium (make test then
#                                      # runs the test inside its one `cargo test` run)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null; then
  echo "error: the browser test needs Node.js (node) on PATH" >&2
  exit 1
fi
if [ ! -x /usr/bin/chromium ] && [ -z "${CHROMIUM:-}" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: chromium is missing; install Debian's package: sudo apt-get install -y chromium" >&2
    exit 1
  fi
  echo "== installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq chromium >/dev/null
fi
[ "${1:-}" = "--install" ] && exit 0
timeout 900 ${CARGO:-cargo} test -p cliptune-worker --test browser -- --ignored
