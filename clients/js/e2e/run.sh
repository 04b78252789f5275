#!/usr/bin/env bash
# End-to-end tests of the demo page against a built herald binary.
#   bash e2e/run.sh                      # every e2e file
#   bash e2e/run.sh e2e/demo.e2e.mjs     # only these (paths relative to clients/js)
#   E2E_FILES="e2e/demo.e2e.mjs" bash e2e/run.sh
# Needs: target/debug/herald (or HERALD_BIN), Node 20+, Debian's chromium, playwright-core;
# durable.e2e.mjs, sse.e2e.mjs and rebalance.e2e.mjs also need nats-server (HERALD_TEST_NATS_SERVER,
# /usr/sbin or PATH); rebalance.e2e.mjs also needs haproxy (HAPROXY, default /usr/sbin/haproxy).
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

if [ "$#" -gt 0 ]; then
  files=("$@")
else
  read -r -a files <<< "${E2E_FILES:-e2e/demo.e2e.mjs e2e/durable.e2e.mjs e2e/sse.e2e.mjs e2e/receipts.e2e.mjs e2e/compression.e2e.mjs e2e/rebalance.e2e.mjs}"
fi

# Files are named explicitly: Node 20 only finds *.test.js-style names in a directory, and
# Node 22+ no longer searches a directory argument at all (it tries to run it as a file).
# One file at a time: each starts its own browser and hubs, too much at once on small CI boxes.
exec node --test --test-concurrency=1 "${files[@]}"
