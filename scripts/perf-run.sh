#!/usr/bin/env bash
# Reproduces the figures in docs/performance.md on one machine, over loopback only.
# Starts its own nats-server and herald pods (release build), runs herald-load scenarios and
# appends every JSON result line to $OUT (default artifacts/perf/results.jsonl).
#
#   scripts/perf-run.sh [single|scale|broadcast100k|all]
#
# single: one pod, 19,000 connections: idle memory, reconnect storm, broadcast, addressed.
# scale:  addressed cost at 1k and 10k users on one pod and 100k users on six pods.
# broadcast100k: a broadcast to 100,000 connections held by six pods (six loader
#         processes, since one process may hold at most 20,000 open files).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
OUT=${OUT:-artifacts/perf/results.jsonl}
SECRET=perf-secret
NATS_PORT=${NATS_PORT:-14222}
BASE_PORT=${BASE_PORT:-18080}
mkdir -p "$(dirname "$OUT")"
WORK=$(mktemp -d)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build --release --bin herald --bin herald-load
HERALD=target/release/herald
LOAD=target/release/herald-load

nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
NATS="nats://127.0.0.1:$NATS_PORT"

# start_pods N: starts N fresh pods on BASE_PORT.., sets POD_PIDS and HUBS
start_pods() {
  POD_PIDS=(); HUBS=()
  for i in $(seq 0 $(($1 - 1))); do
    port=$((BASE_PORT + i))
    HERALD_LOG=warn "$HERALD" serve --listen "127.0.0.1:$port" --nats-url "$NATS" \
      --jwt-secret "$SECRET" --pod-name "perf-$i" --max-connections 20000 \
      --max-sessions-per-user 16 >"$WORK/pod-$i.log" 2>&1 &
    POD_PIDS+=($!); PIDS+=($!); HUBS+=(--hub "127.0.0.1:$port")
  done
  for i in $(seq 0 $(($1 - 1))); do
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$((BASE_PORT + i))/readyz" >/dev/null && break
      sleep 0.1
    done
  done
}

stop_pods() {
  for p in "${POD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${POD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
}

pid_args() { for p in "${POD_PIDS[@]}"; do printf -- '--herald-pid %s ' "$p"; done; }

record() { tee -a "$WORK/last.txt" | tail -n 1 | tee -a "$OUT"; }

single() {
  echo "== one pod, 19,000 idle connections"
  start_pods 1
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) --user-prefix idle \
    idle --connections 19000 --hold 3s | record
  stop_pods
  echo "== one pod, reconnect storm of 19,000"
  start_pods 1
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" --user-prefix storm \
    storm --connections 19000 | record
  stop_pods
  echo "== one pod, 19,000 connections, 100 broadcasts at 20/s"
  start_pods 1
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) --user-prefix bc \
    broadcast --connections 19000 --messages 100 --rate 20 | record
  stop_pods
  echo "== one pod, 19,000 users, addressed 20,000/s for 10 s"
  start_pods 1
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) --user-prefix ad \
    addressed --users 19000 --rate 20000 --duration 10s | record
  stop_pods
}

scale() {
  for users in 1000 10000; do
    echo "== one pod, $users users, addressed 2,000/s for 10 s"
    start_pods 1
    # shellcheck disable=SC2046
    "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) --user-prefix "s$users" \
      addressed --users "$users" --rate 2000 --duration 10s | record
    stop_pods
  done
  echo "== six pods, 100,002 users (six loaders of 16,667, one per pod), addressed 6 x 334/s"
  start_pods 6
  local loaders=()
  for l in $(seq 0 5); do
    "$LOAD" --hub "127.0.0.1:$((BASE_PORT + l))" --nats-url "$NATS" --jwt-secret "$SECRET" \
      --herald-pid "${POD_PIDS[$l]}" --user-prefix "A$l-" --first-source-ip $((2 + 16 * l)) \
      --source-ips 16 --timeout 120s \
      addressed --users 16667 --rate 334 --duration 10s >"$WORK/addr-$l.txt" 2>&1 &
    loaders+=($!)
  done
  for p in "${loaders[@]}"; do wait "$p" || true; done
  for l in $(seq 0 5); do tail -n 1 "$WORK/addr-$l.txt" | tee -a "$OUT"; done
  stop_pods
}

broadcast100k() {
  echo "== six pods, 100,002 connections (six loaders of 16,667), 20 broadcasts"
  start_pods 6
  local loaders=()
  for l in $(seq 0 5); do
    # Each loader: its own users, source addresses and pod; it waits for 20 broadcasts.
    # shellcheck disable=SC2046
    "$LOAD" --hub "127.0.0.1:$((BASE_PORT + l))" --nats-url "$NATS" --jwt-secret "$SECRET" \
      --user-prefix "L$l-" --first-source-ip $((2 + 16 * l)) --source-ips 16 --timeout 600s \
      broadcast --connections 16667 --messages 20 --no-publish >"$WORK/loader-$l.txt" 2>&1 &
    loaders+=($!)
  done
  for _ in $(seq 600); do
    n=$(curl -sf "http://127.0.0.1:$BASE_PORT/api/v1/stats" 2>/dev/null \
      | grep -o '"connections":[0-9]*' | head -1 | cut -d: -f2 || true)
    [ "${n:-0}" -ge 100002 ] && break
    sleep 0.5
  done
  echo "   cluster reports ${n:-?} connections"
  # shellcheck disable=SC2046
  "$LOAD" --hub "127.0.0.1:$BASE_PORT" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) \
    broadcast --connections 0 --messages 20 --rate 2 | record
  for p in "${loaders[@]}"; do wait "$p" || true; done
  for l in $(seq 0 5); do tail -n 1 "$WORK/loader-$l.txt" | tee -a "$OUT"; done
  stop_pods
}

case "$MODE" in
  single) single ;;
  scale) scale ;;
  broadcast100k) broadcast100k ;;
  all) single; scale; broadcast100k ;;
  *) echo "usage: $0 [single|scale|broadcast100k|all]" >&2; exit 2 ;;
esac
echo "results appended to $OUT"
