#!/usr/bin/env bash
# End-to-end test of the demo page against a built herald binary.
# Needs: target/debug/herald (or HERALD_BIN), Node 20+, Debian's chromium, playwright-core.
# playwright-core drives the system browser and never downloads one.
set -euo pipefail
cd "$(dirname "$0")/.."   # clients/js

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update
  $SUDO apt-get install -y chromium
fi

if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund || npm install --no-audit --no-fund
fi

# Named explicitly: Node 20 only finds *.test.js-style names in a directory, and Node 22+
# no longer searches a directory argument at all (it tries to run it as a file).
exec node --test e2e/demo.e2e.mjs
