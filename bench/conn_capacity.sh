#!/usr/bin/env bash
# 10,000 concurrent TLS connections on 2 workers: memory, and service to
# others while they are held.
#
#   bash bench/conn_capacity.sh [--record] [--connections N] [BUILD_DIR]
#
# Builds nothing: it runs BUILD_DIR's (default build-bench) core/sluice,
# ollama-sim and bench/idle_conns. One sluice with --threads=2 and TLS in
# front of ollama-sim; idle_conns opens N (default 10000) TLS connections
# with ALPN h2 (handshake, preface and SETTINGS exchanged both ways, no
# stream) and holds them. Meanwhile a probe makes 200 HTTPS requests (curl,
# HTTP/2, new connection each) and their latencies are compared with 200
# made before the connections were opened. Reported: sluice's RSS before,
# with the connections held, and the bytes per connection; its fd count;
# the probe's p50/p99 idle and loaded (ratio); connections that failed or
# that the server closed (both must be 0).
#
# --max_connections is set to 2N + 2000: the derived default (half the
# open-files limit) is below 10000 when the hard limit is 20000, and every
# connection comes from 127.0.0.1, so the SO_REUSEPORT steering puts them
# all on one worker, which may hold half the total.
# Prints a markdown block; --record appends it to bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/conn_capacity.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
RECORD=0
CONNS=10000
BUILD_DIR=${BUILD:-build-bench}
while (( $# )); do
  case "$1" in
    --record) RECORD=1 ;;
    --connections) CONNS=${2:?--connections needs a number}; shift ;;
    -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "conn_capacity.sh: unknown option $1" >&2; exit 2 ;;
    *) BUILD_DIR=$1 ;;
  esac
  shift
done
[[ "$CONNS" =~ ^[0-9]+$ ]] || { echo "conn_capacity.sh: --connections: not a number" >&2; exit 2; }
use_build_dir conn_capacity.sh bench/idle_conns
IDLE="$BUILD_DIR/bench/idle_conns"
require_tools conn_capacity.sh curl
# The client holds CONNS sockets too.
ulimit -n "$(ulimit -Hn)"
if (( $(ulimit -n) < CONNS + 512 )); then
  echo "conn_capacity.sh: open-files limit $(ulimit -n) is too low for $CONNS connections" >&2
  exit 2
fi

make_work sluice-capacity

bash "$ROOT/tools/make-certs.sh" "$WORK/certs" >/dev/null
start_sim --threads=1
"$SLUICE" --threads=2 --listen_http= --listen_tls=127.0.0.1:0 \
  --tls_cert="$WORK/certs/server.pem" --tls_key="$WORK/certs/server.key" \
  --upstream="127.0.0.1:$SIM_PORT slots=0" --auth=none --rate_generation=off --rate_api=off \
  --max_connections=$(( 2 * CONNS + 2000 )) --keepalive_timeout=600s \
  --client_header_timeout=600s --log_level=warn >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!; PIDS+=("$SLUICE_PID")
PORT=$(wait_listening "$WORK/sluice.log" "$SLUICE_PID" '^sluice listening on https://127\.0\.0\.1:([0-9]+) .*')

# probe COUNT: one latency per line, in µs (curl, HTTP/2, new connection).
probe() {
  local i t
  for (( i = 0; i < $1; i++ )); do
    t=$(curl -sk --http2 -o /dev/null -w '%{http_code} %{time_total}' \
      --resolve "localhost:$PORT:127.0.0.1" "https://localhost:$PORT/api/version")
    [[ ${t%% *} == 200 ]] || { echo "probe: status ${t%% *}" >&2; echo 999999999; continue; }
    awk -v s="${t#* }" 'BEGIN { printf "%d\n", s * 1e6 }'
  done
}
pct() {  # P FILE: the P-th percentile of the numbers in FILE
  sort -n "$2" | awk -v p="$1" '{ a[NR] = $1 } END { i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; print a[i] }'
}

probe 20 >/dev/null  # warm-up: session caches, upstream link
sleep 0.5
RSS0=$(rss_kb "$SLUICE_PID"); FD0=$(fd_count "$SLUICE_PID")
probe 200 >"$WORK/idle.txt"

START=$(date +%s.%N)
"$IDLE" --port="$PORT" --alpn=h2 --connections="$CONNS" --parallel=128 \
  --setup_timeout_s=120 --hold_s=600 >"$WORK/conns.txt" 2>"$WORK/conns.err" &
CLIENT=$!; PIDS+=("$CLIENT")
for _ in $(seq 1300); do
  grep -q '^ready ' "$WORK/conns.txt" && break
  kill -0 "$CLIENT" 2>/dev/null || break
  sleep 0.1
done
READY=$(grep '^ready ' "$WORK/conns.txt" || true)
[[ -n "$READY" ]] || { echo "conn_capacity.sh: idle_conns did not get ready:" >&2; cat "$WORK/conns.err" >&2; exit 1; }
SETUP_S=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
ESTABLISHED=$(sed -nE 's/.*established=([0-9]+).*/\1/p' <<<"$READY")
FAILED=$(sed -nE 's/.*failed=([0-9]+).*/\1/p' <<<"$READY")
sleep 1
RSS1=$(rss_kb "$SLUICE_PID"); FD1=$(fd_count "$SLUICE_PID")
probe 200 >"$WORK/loaded.txt"
RSS2=$(rss_kb "$SLUICE_PID")
kill -TERM "$CLIENT" 2>/dev/null || true
wait "$CLIENT" 2>/dev/null || true
DONE=$(grep '^done ' "$WORK/conns.txt" || true)
CLOSED=$(sed -nE 's/.*closed_by_server=([0-9]+).*/\1/p' <<<"$DONE")
kill -0 "$SLUICE_PID" 2>/dev/null || { echo "conn_capacity.sh: sluice died" >&2; exit 1; }
# Connections gone: the fd count comes back.
for _ in $(seq 50); do (( $(fd_count "$SLUICE_PID") <= FD0 + 2 )) && break; sleep 0.1; done
FD2=$(fd_count "$SLUICE_PID"); RSS3=$(rss_kb "$SLUICE_PID")

I50=$(pct 50 "$WORK/idle.txt"); I99=$(pct 99 "$WORK/idle.txt")
L50=$(pct 50 "$WORK/loaded.txt"); L99=$(pct 99 "$WORK/loaded.txt")
PER_CONN=$(( (RSS1 - RSS0) * 1024 / (ESTABLISHED > 0 ? ESTABLISHED : 1) ))
RATIO=$(awk -v a="$L99" -v b="$I99" 'BEGIN { printf "%.2f", a / b }')
OK=1
[[ "$ESTABLISHED" == "$CONNS" && "$FAILED" == 0 && "${CLOSED:-x}" == 0 ]] || OK=0
grep -q '999999999' "$WORK/loaded.txt" "$WORK/idle.txt" && OK=0

REPORT=$(cat <<EOF

### $CONNS concurrent TLS connections, 2 workers ($(date -u '+%Y-%m-%d %H:%M UTC'))

- machine: $(nproc) vCPU, $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(( $(awk '/^MemTotal/ { print $2 }' /proc/meminfo) / 1048576 )) GiB, kernel $(uname -r)
- command: \`$COMMAND\`
- connections (all from 127.0.0.1, so on one of the two workers): TLS 1.3 + ALPN h2, preface and SETTINGS both ways, no stream (bench/idle_conns, 128 in setup at once); established $ESTABLISHED of $CONNS in ${SETUP_S} s, failed $FAILED, closed by the server ${CLOSED:-?}
- sluice RSS: $RSS0 KiB before, $RSS1 KiB with them held ($(( (RSS1 - RSS0) / 1024 )) MiB, $PER_CONN bytes per connection), $RSS2 KiB after the loaded probe, $RSS3 KiB once they closed; fds $FD0 -> $FD1 -> $FD2
- probe (curl, HTTPS/2, new connection per request, 200 each): idle p50 ${I50} µs p99 ${I99} µs; with the connections held p50 ${L50} µs p99 ${L99} µs; p99 ratio $RATIO
- result: $( (( OK )) && echo "every connection held, none closed, every probe answered 200" || echo "PROBLEM (see the figures)")
EOF
)
echo "$REPORT"
if (( RECORD )); then echo "$REPORT" >>"$ROOT/bench/RESULTS.md"; fi
(( OK ))
