#!/usr/bin/env bash
# Every check CI runs, on a fresh Debian machine: installs what is missing (nats-server,
# openssl, chromium), then formatting, lints, Rust tests, the JS client's unit tests, the
# offline Kubernetes checks and the browser end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/nats-server ] || command -v nats-server >/dev/null || missing+=(nats-server)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== cargo fmt / clippy"
cargo fmt --all --check
cargo clippy --all-targets --workspace -- -D warnings

echo "== cargo test"
cargo test --workspace

echo "== benches run (smoke: each benchmark once, small sizes)"
FANOUT_SIZES=100,1000 cargo test --benches

echo "== JS client unit tests"
node --test clients/js/test/*.test.js

echo "== Kubernetes manifests (offline)"
bash scripts/check-k8s.sh

echo "== browser end-to-end"
bash clients/js/e2e/run.sh
