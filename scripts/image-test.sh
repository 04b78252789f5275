#!/usr/bin/env bash
# Builds herald's container image here and runs it the way k8s/ does: podman with runc and
# cgroupfs, a Debian base made locally with mmdebstrap (registries cannot be reached; see
# docs/deploy.md), the release binary copied in (Containerfile). Then checks that the
# container starts, runs as 10001:10001 on a read-only root filesystem, answers /healthz and
# /readyz, serves a WebSocket session (welcome, then a message published over the API), and
# has /bin/sleep for the preStop hook.
#
#   scripts/image-test.sh          # skips (exit 0, says why) when podman, runc or mmdebstrap is missing
#   IMAGE_TEST_REQUIRED=1 scripts/image-test.sh   # missing tools fail instead
#
# The base image is cached as localhost/debian:bookworm-slim (made once, ~1 min).
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in podman runc mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    if [ "${IMAGE_TEST_REQUIRED:-0}" = 1 ]; then
      echo "image test: $tool is missing (apt-get install -y podman runc mmdebstrap)" >&2
      exit 1
    fi
    echo "image test: skipped, $tool is not installed (apt-get install -y podman runc mmdebstrap)"
    exit 0
  fi
done

mkdir -p target/image
rm -f target/image/rootfs.tar
printf '[containers]\ndefault_ulimits = []\n' > target/image/containers.conf
export CONTAINERS_CONF="$PWD/target/image/containers.conf"
P=(podman --runtime runc --cgroup-manager=cgroupfs)
BASE=localhost/debian:bookworm-slim
IMAGE=localhost/herald:test
NAME=herald-image-test
PORT=${IMAGE_TEST_PORT:-18480}

if ! "${P[@]}" image exists "$BASE"; then
  echo "== base image: mmdebstrap bookworm (essential + ca-certificates)"
  mmdebstrap --quiet --variant=essential --include=ca-certificates bookworm target/image/rootfs.tar
  "${P[@]}" import target/image/rootfs.tar "$BASE" >/dev/null
  rm -f target/image/rootfs.tar
fi

echo "== herald release binary"
cargo build --release --quiet --bin herald
install -m 0755 target/release/herald target/image/herald

echo "== podman build"
"${P[@]}" build --quiet --network=host --build-arg "BASE=$BASE" -t "$IMAGE" -f Containerfile target/image >/dev/null

cleanup() { "${P[@]}" rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
echo "== podman run (read-only root filesystem, port $PORT)"
"${P[@]}" run -d --name "$NAME" --network=host --read-only \
  -e HERALD_LISTEN="127.0.0.1:$PORT" -e HERALD_JWT_SECRET=image-secret -e HERALD_API_KEY=image-key \
  "$IMAGE" >/dev/null

fail() {
  echo "image test: $*" >&2
  "${P[@]}" logs "$NAME" 2>&1 | tail -20 >&2
  exit 1
}
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null || fail "/healthz did not answer 200"
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || fail "/readyz did not answer 200"
ids=$("${P[@]}" exec "$NAME" id -u):$("${P[@]}" exec "$NAME" id -g)
[ "$ids" = "10001:10001" ] || fail "runs as $ids, not 10001:10001"
readonly_root=$("${P[@]}" inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$NAME")
[ "$readonly_root" = true ] || fail "the root filesystem is not read-only"
if "${P[@]}" exec "$NAME" sh -c 'echo x > /probe' 2>/dev/null; then
  fail "the root filesystem took a write"
fi
"${P[@]}" exec "$NAME" /bin/sleep 0 || fail "/bin/sleep (the preStop hook) is missing"

echo "== a WebSocket session against the container"
token=$("${P[@]}" exec -e HERALD_JWT_SECRET=image-secret "$NAME" herald token --user img1 --ttl 5m)
python3 - "$PORT" "$token" <<'PY' || fail "the WebSocket session did not work"
import base64, json, os, socket, sys, urllib.request
port, token = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
s.sendall((f"GET /websocket/img1?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
buf = b""
while b"\r\n\r\n" not in buf:
    buf += s.recv(4096)
head, buf = buf.split(b"\r\n\r\n", 1)
assert head.startswith(b"HTTP/1.1 101"), head
def text():
    global buf
    while True:
        while len(buf) < 2:
            buf += s.recv(65536)
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            while len(buf) < 4:
                buf += s.recv(65536)
            n, at = int.from_bytes(buf[2:4], "big"), 4
        while len(buf) < at + n:
            buf += s.recv(65536)
        op, payload, buf = buf[0] & 0x0F, buf[at:at + n], buf[at + n:]
        if op == 1:
            return json.loads(payload)
assert text()["type"] == "welcome"
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/publish",
                             json.dumps({"user": "img1", "data": {"order": 1}}).encode(),
                             {"Authorization": "Bearer image-key", "Content-Type": "application/json"})
assert urllib.request.urlopen(req, timeout=10).status == 202
msg = text()
assert msg["type"] == "message" and msg["data"] == {"order": 1}, msg
print("welcome, then the published message")
PY
"${P[@]}" stop -t 5 "$NAME" >/dev/null
echo "== image test: passed ($IMAGE: starts, 10001:10001, read-only root, probes, WebSocket, /bin/sleep)"
