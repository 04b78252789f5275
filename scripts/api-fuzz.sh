#!/usr/bin/env bash
# Holds herald's HTTP API to docs/openapi.json with Schemathesis (a property-based API
# fuzzer, from PyPI, installed into .venv-tools/): every generated request, valid and
# invalid, must get an answer the document describes (status, content type, headers, body
# schema), never a 5xx, invalid requests must be refused, the API key must be needed, and
# herald must stay healthy. Two runs: standalone, and NATS mode with --durable against
# the nats-server in HERALD_TEST_NATS_SERVER (Debian's by default).
#
# The document fuzzed is the one the hub under test serves (GET /api/v1/openapi.json): each
# hub runs with --max-await 100ms, so a publish that waits for a receipt nobody sends returns
# within the run, and the document it serves says that maximum. Not checked:
# positive_data_acceptance (a valid-looking request must be 2xx), which cannot hold where
# validity depends on state or time (a cursor from this store, a block `until` in the
# future) that a schema cannot say.
#
# Usage: scripts/api-fuzz.sh [max examples per operation, default 100]
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS=4.32.5
VENV=.venv-tools
EXAMPLES=${1:-100}
HERALD=${HERALD_BIN:-target/debug/herald}
NATS=${HERALD_TEST_NATS_SERVER:-/usr/sbin/nats-server}
KEY=fuzz-api-key
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

if ! "$VENV/bin/python" -m pip show schemathesis 2>/dev/null | grep -qx "Version: $SCHEMATHESIS"; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS"
fi
[ -x "$HERALD" ] || cargo build -q --bin herald

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() {
  local url=$1
  for _ in $(seq 1 200); do
    curl -fs "$url/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "herald at $url never became ready" >&2
  return 1
}

fuzz() {
  local name=$1 url=$2
  echo "-- $name: schemathesis against $url ($EXAMPLES examples per operation)"
  curl -fsS -H "Authorization: Bearer $KEY" "$url/api/v1/openapi.json" >"$WORK/openapi-fuzz.json"
  timeout 600 "$VENV/bin/schemathesis" run "$WORK/openapi-fuzz.json" --url "$url" \
    -H "Authorization: Bearer $KEY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,ignored_auth,missing_required_header,unsupported_method \
    --max-examples "$EXAMPLES" --request-timeout 5 --no-color
  curl -fs "$url/healthz" >/dev/null || { echo "$name: herald is not healthy after the run" >&2; return 1; }
  echo "-- $name: herald still healthy"
}

port=$(free_port)
mkdir -p "$WORK/data"
HERALD_LOG=error "$HERALD" serve --listen "127.0.0.1:$port" --api-key "$KEY" --jwt-secret fuzz-secret --max-await 100ms \
  --durable --data-dir "$WORK/data" &
pids+=($!)
wait_ready "http://127.0.0.1:$port"
fuzz "standalone --durable" "http://127.0.0.1:$port"

nport=$(free_port)
"$NATS" -a 127.0.0.1 -p "$nport" -js -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$nport") 2>/dev/null && break
  sleep 0.05
done
port=$(free_port)
HERALD_LOG=error "$HERALD" serve --listen "127.0.0.1:$port" --api-key "$KEY" --jwt-secret fuzz-secret --max-await 100ms \
  --nats-url "nats://127.0.0.1:$nport" --durable &
pids+=($!)
wait_ready "http://127.0.0.1:$port"
fuzz "NATS --durable" "http://127.0.0.1:$port"
echo "== API fuzz: no defects"
