#!/usr/bin/env bash
# Scale-out an operator can watch: NATS, two herald pods and HAProxy (roundrobin, WebSocket
# passthrough, /readyz health checks) on loopback, CLIENTS browser-like clients through
# the balancer, then a third pod added after ADD_AFTER seconds. Every second it prints the
# connections each pod holds and what the pods have shed (herald_rebalance_shed_total),
# for RUN_SECS seconds. Ctrl-C stops everything.
#
#   scripts/scale-out-demo.sh                 # 3,000 clients, third pod at 10 s, 60 s in all
#   CLIENTS=6000 REBALANCE_RATE=0.05 scripts/scale-out-demo.sh
#
# Environment: CLIENTS [3000], ADD_AFTER [10], RUN_SECS [60], REBALANCE_ABOVE [1.2],
# REBALANCE_RATE [0.02], CONNECT_RATE [0 = unlimited], BALANCE [roundrobin, or leastconn], HERALD_BIN [target/release/herald,
# else target/debug/herald], NATS_SERVER [/usr/sbin/nats-server], HAPROXY [/usr/sbin/haproxy],
# BASE_PORT [18300: NATS on it, the balancer on +1, pods on +10..+12].
# Needs Debian's haproxy and nats-server packages and Node 20 or later.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLIENTS=${CLIENTS:-3000}
ADD_AFTER=${ADD_AFTER:-10}
RUN_SECS=${RUN_SECS:-60}
ABOVE=${REBALANCE_ABOVE:-1.2}
RATE=${REBALANCE_RATE:-0.02}
CONNECT_RATE=${CONNECT_RATE:-0}
BALANCE=${BALANCE:-roundrobin}
NATS_SERVER=${NATS_SERVER:-/usr/sbin/nats-server}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
BASE=${BASE_PORT:-18300}
if [ -z "${HERALD_BIN:-}" ]; then
  HERALD_BIN=$ROOT/target/release/herald
  [ -x "$HERALD_BIN" ] || HERALD_BIN=$ROOT/target/debug/herald
fi
[ -x "$HERALD_BIN" ] || { echo "no herald binary: cargo build --release" >&2; exit 1; }
[ "$CLIENTS" -le 8000 ] || { echo "CLIENTS: at most 8000 (HAProxy holds two sockets a client within 20,000 files)" >&2; exit 1; }
WORK=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

NATS_PORT=$BASE
LB_PORT=$((BASE + 1))
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
pids+=($!)
sleep 0.3

spawn_pod() {
  local i=$1 port=$((BASE + 10 + $1))
  HERALD_LOG=warn "$HERALD_BIN" serve --listen "127.0.0.1:$port" --nats-url "nats://127.0.0.1:$NATS_PORT" \
    --pod-name "pod-$i" --max-connections 20000 --rebalance-above "$ABOVE" --rebalance-rate "$RATE" \
    --connect-rate "$CONNECT_RATE" >"$WORK/pod-$i.log" 2>&1 &
  pids+=($!)
}

start_pod() {
  local i=$1 port=$((BASE + 10 + $1))
  spawn_pod "$i"
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "pod-$i did not become ready; its log:" >&2
  cat "$WORK/pod-$i.log" >&2
  exit 1
}

start_pod 0
start_pod 1
servers=""
for i in 0 1 2; do
  servers+="  server pod-$i 127.0.0.1:$((BASE + 10 + i)) check inter 300ms fall 2 rise 2"$'\n'
done
cat >"$WORK/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:$LB_PORT
  default_backend pods
backend pods
  balance $BALANCE
  option httpchk GET /readyz
$servers
CFG
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
pids+=($!)
sleep 0.5

node --experimental-websocket "$ROOT/scripts/scale-out-demo.mjs" "ws://127.0.0.1:$LB_PORT" "$CLIENTS" \
  >"$WORK/clients.log" 2>&1 &
pids+=($!)

count() { # connections and shed total of pod $1, or "-" when it is not up
  curl -fs "http://127.0.0.1:$((BASE + 10 + $1))/metrics" 2>/dev/null |
    awk '/^herald_connections /{c=$2} /^herald_rebalance_shed_total /{s=$2} END{if(c=="")print "- -"; else print c+0, s+0}'
}

echo "balance=$BALANCE clients=$CLIENTS rebalance-above=$ABOVE rebalance-rate=$RATE connect-rate=$CONNECT_RATE; pod-2 starts at ${ADD_AFTER}s"
printf '%4s  %14s  %14s  %14s\n' "t(s)" "pod-0 (shed)" "pod-1 (shed)" "pod-2 (shed)"
for t in $(seq 1 "$RUN_SECS"); do
  sleep 1
  if [ "$t" -eq "$ADD_AFTER" ]; then
    spawn_pod 2
  fi
  line=$(printf '%4s' "$t")
  for i in 0 1 2; do
    read -r c s <<<"$(count "$i")"
    line+=$(printf '  %14s' "$c ($s)")
  done
  echo "$line"
done
