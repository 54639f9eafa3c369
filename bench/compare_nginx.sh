#!/usr/bin/env bash
# sluice against nginx configured like the production baseline
# (NGINX_BASELINE.md) and against HAProxy configured for the same job
# (bench/haproxy.sh), all three in front of the same ollama-sim, over TLS.
#
#   bash bench/compare_nginx.sh [--record] [--quick] [--rounds=N] [--only=abcdef]
#                               [--keep] [BUILD_DIR]
#   (or BUILD=dir bash bench/compare_nginx.sh ...)
#
# Builds nothing: it runs BUILD_DIR's core/sluice, tools/ollama-sim/ollama-sim
# and bench/{relay_delay,h2_relay_delay,cancel_latency,tls_handshakes,
# idle_conns} (default build dir: build-bench), Debian's /usr/sbin/nginx
# (as root, with a private prefix and config in a temporary directory) and
# /usr/sbin/haproxy (2.6, config in the temporary directory), h2load
# (nghttp2-client) and wrk. Certificates come from tools/make-certs.sh in
# the temporary directory. Everything listens on 127.0.0.1. Each proxy has
# one worker (HAProxy: nbthread 1) pinned to CPU 0; the simulator and the
# load generators share CPU 1.
#
# Equal work: each proxy checks the API key, runs its per-client rate
# check (limits no client reaches), applies the deny rules and writes an
# access log line per request (sluice --access_log to a file; nginx's
# access_log; HAProxy's log to its stdout, a file). Before measuring, each
# must answer 200 with HSTS over h2, 401 without or with a wrong key, 403
# on /api/delete and /api/push and 301 on its plain-HTTP port; the script
# stops (exit 1) when one does not, so a misconfigured proxy yields no
# figures.
#
# Rounds alternate the three proxies for every measure, the order rotated
# each round (nginx haproxy sluice, haproxy sluice nginx, ...):
#  (a) h2load over TLS (h2), GET /api/tags, -c64 -m10: req/s
#  (b) wrk over TLS (HTTP/1.1), GET /api/tags, -c64: req/s and p99 latency
#  (c) full TLS handshakes per second, one small request per connection
#      (bench/tls_handshakes: BoringSSL client, no resumption)
#  (d) per-chunk relay delay with 1000 concurrent h2 streams over 10 TLS
#      connections (bench/h2_relay_delay): p50/p99/max and time to first
#      chunk; relay_delay straight to the simulator (HTTP/1.1) as reference;
#      time to first chunk with all 1000 streams on one connection; and
#      the delay of one stream alone (an idle proxy)
#  (e) RSS per idle TLS h2 connection, 5000 connections (bench/idle_conns)
#      held against a freshly started instance of each proxy; in round 1
#      also with ALPN http/1.1 and no request (the TLS part alone)
#  (f) client cancel to upstream close (bench/cancel_latency): h2
#      RST_STREAM and HTTP/1.1 close, against the simulator's last_abort_us
# and prints a markdown table of medians with sluice/nginx and
# sluice/HAProxy ratios.
# --record appends the table, per-round figures and notes to
# bench/RESULTS.md. --quick: 1 round, short runs, 1000 idle connections
# (for trying the script; not for recording). --only=LETTERS runs only
# those measures. --keep leaves the temporary directory (configs, logs, raw
# tool output) in place and prints its path. Full run (3 rounds): about
# 9 minutes; --only=a (the h2 req/s the targets name): about 1 minute.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/compare_nginx.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
RECORD=0
QUICK=0
KEEP=0
ONLY=abcdef
ROUNDS=3
BUILD_DIR=${BUILD:-build-bench}
for arg in "$@"; do
  case "$arg" in
    --record) RECORD=1 ;;
    --quick) QUICK=1 ;;
    --rounds=*) ROUNDS=${arg#--rounds=} ;;
    --only=*) ONLY=${arg#--only=} ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' ; exit 0 ;;
    -*) echo "compare_nginx.sh: unknown option $arg" >&2; exit 2 ;;
    *) BUILD_DIR=$arg ;;
  esac
done
[[ "$BUILD_DIR" = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
[[ -n "${BUILD:-}" ]] && COMMAND="BUILD=$BUILD $COMMAND"
# SLUICE_EXTRA_ARGS="--busy_poll=2ms" adds flags to sluice's command line.
[[ -n "${SLUICE_EXTRA_ARGS:-}" ]] && COMMAND="SLUICE_EXTRA_ARGS='$SLUICE_EXTRA_ARGS' $COMMAND"
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || { echo "compare_nginx.sh: --rounds wants 1..99" >&2; exit 2; }
[[ "$ONLY" =~ ^[a-f]+$ ]] || { echo "compare_nginx.sh: --only wants letters a to f" >&2; exit 2; }
wanted() { [[ "$ONLY" == *"$1"* ]]; }

# --- Settings -----------------------------------------------------------
H2_CONNS=64; H2_STREAMS=10; H2_SECONDS=5; H2_WARMUP=1
WRK_CONNS=64; WRK_SECONDS=5
HS_CONC=16; HS_SECONDS=3
DELAY_CONNS=10; DELAY_STREAMS=1000; DELAY_TOKENS=40; DELAY_MS=50
ONECONN_TOKENS=10  # 1000 streams on one connection: 8 waves of 128
SINGLE_TOKENS=40   # one stream alone
IDLE_CONNS=5000
CANCEL_TRIALS=5; CANCEL_AFTER=3; CANCEL_DELAY_MS=10
if (( QUICK )); then
  [[ " $* " == *" --rounds="* ]] || ROUNDS=1
  H2_SECONDS=2; WRK_SECONDS=2; HS_SECONDS=1; DELAY_TOKENS=10
  IDLE_CONNS=1000; CANCEL_TRIALS=3; ONECONN_TOKENS=4; SINGLE_TOKENS=10
fi
API_KEY="sk-bench-0123456789abcdef"
AUTH="Bearer $API_KEY"
NGINX=/usr/sbin/nginx
HAPROXY=/usr/sbin/haproxy

# --- Tools --------------------------------------------------------------
SLUICE="$BUILD_DIR/core/sluice"
SIM="$BUILD_DIR/tools/ollama-sim/ollama-sim"
missing=()
for bin in "$SLUICE" "$SIM" "$BUILD_DIR/bench/relay_delay" "$BUILD_DIR/bench/h2_relay_delay" \
           "$BUILD_DIR/bench/cancel_latency" "$BUILD_DIR/bench/tls_handshakes" \
           "$BUILD_DIR/bench/idle_conns"; do
  [[ -x "$bin" ]] || missing+=("$bin (not built: cmake --build ${BUILD_DIR#"$ROOT"/})")
done
[[ -x "$NGINX" ]] || missing+=("$NGINX (Debian package nginx)")
[[ -x "$HAPROXY" ]] || missing+=("$HAPROXY (Debian package haproxy)")
for tool in h2load:nghttp2-client wrk:wrk curl:curl openssl:openssl taskset:util-linux ss:iproute2; do
  command -v "${tool%%:*}" >/dev/null || missing+=("${tool%%:*} (Debian package ${tool#*:})")
done
if ((${#missing[@]})); then
  echo "compare_nginx.sh: missing:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  echo "Build: cmake -S . -B build-bench -G Ninja -DCMAKE_BUILD_TYPE=Release -DSLUICE_BUILD_TESTS=OFF && cmake --build build-bench" >&2
  echo "Packages: tools/install-deps.sh --test installs nginx, haproxy, nghttp2-client and wrk." >&2
  exit 2
fi
if (( $(id -u) != 0 )); then
  echo "compare_nginx.sh: run as root (nginx's master process needs it here)" >&2
  exit 2
fi

# Pinning: each proxy alone on CPU 0, everything else on CPU 1.
pin_cpus "proxy (nginx, HAProxy or sluice, one worker) on CPU 0; ollama-sim and load generators on CPU 1"

# 5000 idle connections need more than the usual 1024 descriptors, in the
# proxies (which inherit this) and the clients.
ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)
if (( FD_LIMIT < IDLE_CONNS + 200 )); then
  echo "compare_nginx.sh: open-file limit $FD_LIMIT is below $((IDLE_CONNS + 200))" >&2
  exit 2
fi

make_work sluice-vs-nginx
# The proxies sluice is measured against: write_nginx_conf/start_nginx
# and write_haproxy_conf/start_haproxy.
# shellcheck source=bench/nginx.sh
source "$ROOT/bench/nginx.sh"
# shellcheck source=bench/haproxy.sh
source "$ROOT/bench/haproxy.sh"

# stop_pid PID: stops one process this script started and forgets it, so
# that the exit trap never signals a recycled PID.
stop_pid() {
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# A port for nginx or HAProxy (they cannot report a kernel-chosen one): below the
# ephemeral range, so no client connection of this run can hold it, and
# unused in any state now.
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  (( low > 12000 )) || low=32768
  for _ in $(seq 200); do
    port=$((10000 + RANDOM % (low - 11000)))
    if [[ -z "$(ss -Htan "sport = :$port")" ]]; then echo "$port"; return 0; fi
  done
  echo "compare_nginx.sh: no free port found" >&2
  return 1
}

# https_ok PORT [h2]: GET /api/tags with the key answers 200.
https_ok() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$WORK/certs/ca.pem" \
    ${2:+--http2} -H "Authorization: $AUTH" "https://localhost:$1/api/tags" || true)
  [[ "$code" == 200 ]]
}

bash "$ROOT/tools/make-certs.sh" "$WORK/certs" >/dev/null
# The same key for sluice, stored as its hash (sluice keys add makes
# random keys; the bench needs this fixed one).
printf 'bench:sha256:%s\n' "$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)" \
  >"$WORK/sluice_keys.txt"

start_sim --threads=1

# start_sluice TAG: the same settings as flags (sluice's defaults already
# match most; spelled out here so the comparison is explicit). Its access
# log (the baseline's nginx format) goes to $WORK/sluice-TAG-access.log;
# its upstream pool is the default adaptive one (--upstream_keepalive=auto).
# slots=0: its generations go to the simulator at once, as nginx's do (by
# default sluice would hold all but one per model in its fair queue).
start_sluice() {
  local log="$WORK/sluice-$1.log"
  "${PROXY_CPU[@]}" "$SLUICE" --threads=1 \
    --listen_tls=127.0.0.1:0 --tls_cert="$WORK/certs/server.pem" --tls_key="$WORK/certs/server.key" \
    --tls_session_tickets=false \
    --listen_http=127.0.0.1:0 --http_mode=redirect \
    --hsts='max-age=63072000; includeSubDomains' \
    --upstream="127.0.0.1:$SIM_PORT slots=0" \
    --access_log="$WORK/sluice-$1-access.log" \
    --connect_timeout=10s --read_timeout=600s --send_timeout=600s \
    --client_max_body_size=100M --h2_max_concurrent_streams=128 \
    --keys_file="$WORK/sluice_keys.txt" \
    --rate_generation='1000000r/s burst=1000000 nodelay' \
    --rate_api='1000000r/s burst=1000000 nodelay' \
    ${SLUICE_EXTRA_ARGS:-} >"$log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  STARTED_PORT=$(wait_listening "$log" "$STARTED_PID" \
    '^sluice listening on https://127\.0\.0\.1:([0-9]+) .*')
  STARTED_HTTP_PORT=$(wait_listening "$log" "$STARTED_PID" \
    '^sluice listening on http://127\.0\.0\.1:([0-9]+) .*')
  for _ in $(seq 40); do
    https_ok "$STARTED_PORT" && return 0
    sleep 0.05
  done
  echo "compare_nginx.sh: sluice on :$STARTED_PORT does not answer GET /api/tags" >&2
  cat "$log" >&2
  return 1
}

# Memory and CPU of a proxy: the process and its children (nginx's worker).
proxy_pids() { echo "$1"; pgrep -P "$1" || true; }
# proxy_kb rss_kb|pss_kb PID: that figure summed over the proxy's processes.
proxy_kb() { local pids; mapfile -t pids < <(proxy_pids "$2"); "$1" "${pids[@]}"; }
cpu_ns() {  # CPU time of every thread, ns (schedstat's first field)
  local pid f sum=0 v
  for pid in $(proxy_pids "$1"); do
    for f in /proc/"$pid"/task/*/schedstat; do
      read -r v _ <"$f" 2>/dev/null || v=0
      sum=$((sum + v))
    done
  done
  echo "$sum"
}
cpu_pct() {  # NS_BEFORE NS_AFTER T_BEFORE T_AFTER: percent of one core
  awk -v a="$1" -v b="$2" -v t0="$3" -v t1="$4" 'BEGIN { s = t1 - t0; printf "%.0f", (s > 0) ? (b - a) / 1e7 / s : 0 }'
}
per_core() {  # RATE CPU_PCT: the rate scaled to one fully busy core
  awk -v r="$1" -v c="$2" 'BEGIN { if (r == "" || c + 0 <= 0) print "n/a"; else printf "%.0f", r * 100 / c }'
}

now_s() { date +%s.%N; }

declare -A PID PORT HTTP_PORT
declare -A H2RPS H2CPU H2PC WRKRPS WRKP99 WRKCPU WRKPC HSRATE HSCPU HSPC
declare -A S50 S99 DCPU DP50 DP99 DMAX TTFC50 TTFC99 ONE50 ONE99 ONEEL MEMB MEMPSS MEMTLS CAN_H2 CAN_H1 CAN_H2_R CAN_H1_R
DIRECT_P50=""; DIRECT_P99=""; DIRECT_MAX=""
PROBLEMS=""
problem() { PROBLEMS+="$1"$'\n'; echo "  problem: $1" >&2; }
access_lines() {  # NAME: lines in that proxy's access logs (all its instances)
  case $1 in
    nginx) cat "$WORK"/nginx-*/access.log ;;
    haproxy) cat "$WORK"/haproxy-*/access.log ;;
    sluice) cat "$WORK"/sluice-*-access.log ;;
  esac 2>/dev/null | wc -l
}

# The contenders, in the order of round 1; each later round starts one
# further along (round 2: haproxy sluice nginx), so no proxy always runs
# first or last after a given other.
CONTENDERS=(nginx haproxy sluice)
order() {  # ROUND: the contenders in that round's order
  local n=${#CONTENDERS[@]} i
  for ((i = 0; i < n; i++)); do echo "${CONTENDERS[$(( (i + $1 - 1) % n ))]}"; done
}
for name in "${CONTENDERS[@]}"; do
  "start_$name" main
  PID[$name]=$STARTED_PID; PORT[$name]=$STARTED_PORT; HTTP_PORT[$name]=$STARTED_HTTP_PORT
done

# All must answer the same way before anything is measured: 200 with HSTS
# over h2.
for name in "${CONTENDERS[@]}"; do
  hdrs=$(curl -sS -D - -o /dev/null --http2 --max-time 3 --cacert "$WORK/certs/ca.pem" \
    -H "Authorization: $AUTH" "https://localhost:${PORT[$name]}/api/tags" || true)
  grep -q '^HTTP/2 200' <<<"$hdrs" || problem "$name: GET /api/tags over h2 did not answer 200"
  grep -qi '^strict-transport-security: max-age=63072000; includeSubDomains' <<<"$hdrs" ||
    problem "$name: no HSTS header"
done
# expect_code WHAT CODE CURL_ARGS...: one request, its status must be CODE.
expect_code() {
  local what=$1 want=$2 got
  shift 2
  got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$WORK/certs/ca.pem" "$@" || true)
  [[ "$got" == "$want" ]] || problem "$what answered $got, not $want"
}
for name in "${CONTENDERS[@]}"; do
  expect_code "$name: plain-HTTP listener" 301 "http://127.0.0.1:${HTTP_PORT[$name]}/api/tags"
done
# The baseline's policy rows, on each.
for name in "${CONTENDERS[@]}"; do
  N="https://localhost:${PORT[$name]}"
  expect_code "$name: /api/tags without a key" 401 "$N/api/tags"
  expect_code "$name: /api/tags with a wrong key" 401 -H "Authorization: Bearer sk-wrong" "$N/api/tags"
  expect_code "$name: /api/tags with the key but no Bearer" 401 -H "Authorization: $API_KEY" "$N/api/tags"
  expect_code "$name: DELETE /api/delete without a key" 403 -X DELETE -d '{"model":"m"}' "$N/api/delete"
  expect_code "$name: DELETE /api/delete" 403 -X DELETE -H "Authorization: $AUTH" -d '{"model":"m"}' "$N/api/delete"
  expect_code "$name: POST /api/push" 403 -H "Authorization: $AUTH" -d '{"model":"m"}' "$N/api/push"
  expect_code "$name: POST /api/pull from 127.0.0.1" 200 -H "Authorization: $AUTH" \
    -H 'X-Sim-Token-Delay-Ms: 0' -d '{"model":"m","stream":false}' "$N/api/pull"
done
expect_code "nginx: stub_status from 127.0.0.1" 200 -H "Authorization: $AUTH" "https://localhost:${PORT[nginx]}/nginx_status"
# Each logs the requests it got (HAProxy and nginx at once; sluice within
# --access_log_flush, 1 s).
sleep 1.5
for name in "${CONTENDERS[@]}"; do
  [[ "$(access_lines "$name")" -gt 0 ]] || problem "$name: no access log lines after the checks"
done
if [[ -n "$PROBLEMS" ]]; then
  echo "compare_nginx.sh: a proxy does not answer as configured; nothing measured. Logs and configs: $WORK" >&2
  KEEP=1
  exit 1
fi

# --- Measures -----------------------------------------------------------
run_h2load() {  # NAME ROUND
  local name=$1 round=$2 out t0 t1 c0 c1 rps cpu
  c0=$(cpu_ns "${PID[$name]}"); t0=$(now_s)
  out=$("${LOAD_CPU[@]}" timeout $((H2_SECONDS + H2_WARMUP + 20)) h2load -t1 \
    -c"$H2_CONNS" -m"$H2_STREAMS" -D"$H2_SECONDS" --warm-up-time="$H2_WARMUP" \
    -H "Authorization: $AUTH" "https://127.0.0.1:${PORT[$name]}/api/tags" 2>&1) || true
  t1=$(now_s); c1=$(cpu_ns "${PID[$name]}")
  echo "$out" >"$WORK/h2load-$name-$round.txt"
  rps=$(sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p' <<<"$out")
  H2RPS[$name]+="${rps:-n/a} "
  cpu=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
  H2CPU[$name]+="$cpu "
  H2PC[$name]+="$(per_core "$rps" "$cpu") "
  local req non2xx
  req=$(grep -E '^requests:' <<<"$out" || true)
  non2xx=$(sed -nE 's/^status codes: [0-9]+ 2xx, [0-9]+ 3xx, ([0-9]+) 4xx, ([0-9]+) 5xx/\1 \2/p' <<<"$out")
  if [[ -z "$rps" ]] || ! grep -qE ' 0 failed, 0 errored, 0 timeout' <<<"$req" || [[ "$non2xx" != "0 0" ]]; then
    problem "h2load $name round $round: ${req:-no summary}; 4xx/5xx: ${non2xx:-?}"
  fi
  printf '  (a) h2load %-7s round %d: %s req/s, proxy CPU %s%%\n' "$name" "$round" "${rps:-n/a}" "$cpu" >&2
}

run_wrk() {  # NAME ROUND
  local name=$1 round=$2 out t0 t1 c0 c1 rps cpu
  c0=$(cpu_ns "${PID[$name]}"); t0=$(now_s)
  out=$("${LOAD_CPU[@]}" timeout $((WRK_SECONDS + 20)) wrk -t1 -c"$WRK_CONNS" \
    -d"${WRK_SECONDS}s" --latency -H "Authorization: $AUTH" \
    "https://127.0.0.1:${PORT[$name]}/api/tags" 2>&1) || true
  t1=$(now_s); c1=$(cpu_ns "${PID[$name]}")
  echo "$out" >"$WORK/wrk-$name-$round.txt"
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  WRKRPS[$name]+="${rps:-n/a} "
  WRKP99[$name]+="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")") "
  cpu=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
  WRKCPU[$name]+="$cpu "
  WRKPC[$name]+="$(per_core "$rps" "$cpu") "
  local bad
  bad=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';' || true)
  [[ -n "$bad" || -z "$rps" ]] && problem "wrk $name round $round: ${bad:-no result}"
  printf '  (b) wrk    %-7s round %d: %s req/s, proxy CPU %s%%\n' "$name" "$round" "${rps:-n/a}" "$cpu" >&2
}

run_handshakes() {  # NAME ROUND
  local name=$1 round=$2 line rc=0 c0 c1 t0 t1 cpu
  c0=$(cpu_ns "${PID[$name]}"); t0=$(now_s)
  line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/tls_handshakes" --port="${PORT[$name]}" \
    --concurrency="$HS_CONC" --duration_s="$HS_SECONDS" --authorization="$AUTH" \
    --label="$name" 2>"$WORK/hs-$name-$round.err") || rc=$?
  t1=$(now_s); c1=$(cpu_ns "${PID[$name]}")
  HSRATE[$name]+="$(field per_s "$line") "
  cpu=$(cpu_pct "$c0" "$c1" "$t0" "$t1")
  HSCPU[$name]+="$cpu "
  HSPC[$name]+="$(per_core "$(field per_s "$line")" "$cpu") "
  (( rc == 0 )) || problem "tls_handshakes $name round $round (exit $rc): $line $(head -3 "$WORK/hs-$name-$round.err" | paste -sd';')"
  [[ "$(field resumed "$line")" == 0 ]] || problem "tls_handshakes $name: sessions were resumed"
  printf '  (c) handshakes %-6s round %d: %s; proxy CPU %s%%\n' "$name" "$round" "$line" "$cpu" >&2
}

run_delay() {  # NAME ROUND
  local name=$1 round=$2 line rc=0 c0 c1 t0 t1
  c0=$(cpu_ns "${PID[$name]}"); t0=$(now_s)
  line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/h2_relay_delay" --port="${PORT[$name]}" \
    --connections="$DELAY_CONNS" --streams="$DELAY_STREAMS" --tokens="$DELAY_TOKENS" \
    --token_delay_ms="$DELAY_MS" --authorization="$AUTH" --duration_s=60 \
    --label="$name" 2>"$WORK/delay-$name-$round.err") || rc=$?
  t1=$(now_s); c1=$(cpu_ns "${PID[$name]}")
  DCPU[$name]+="$(cpu_pct "$c0" "$c1" "$t0" "$t1") "
  echo "$line" >"$WORK/delay-$name-$round.txt"
  DP50[$name]+="$(field p50_us "$line") "
  DP99[$name]+="$(field p99_us "$line") "
  DMAX[$name]+="$(field max_us "$line") "
  TTFC50[$name]+="$(field ttfc_p50_us "$line") "
  TTFC99[$name]+="$(field ttfc_p99_us "$line") "
  (( rc == 0 )) || problem "h2_relay_delay $name round $round (exit $rc): $line $(head -3 "$WORK/delay-$name-$round.err" | paste -sd';')"
  printf '  (d) h2_relay_delay %-6s round %d: %s\n' "$name" "$round" "$line" >&2
}

run_direct_delay() {  # ROUND
  local round=$1 line rc=0
  line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/relay_delay" --port="$SIM_PORT" \
    --connections="$DELAY_STREAMS" --rounds=1 --tokens="$DELAY_TOKENS" \
    --token_delay_ms="$DELAY_MS" --duration_s=60 --label=direct-h1 \
    2>"$WORK/delay-direct-$round.err") || rc=$?
  DIRECT_P50+="$(field p50_us "$line") "
  DIRECT_P99+="$(field p99_us "$line") "
  DIRECT_MAX+="$(field max_us "$line") "
  (( rc == 0 )) || problem "relay_delay direct round $round (exit $rc): $line"
  printf '  (d) relay_delay direct round %d: %s\n' "$round" "$line" >&2
}

run_oneconn() {  # NAME ROUND: all streams on one connection
  local name=$1 round=$2 line rc=0
  line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/h2_relay_delay" --port="${PORT[$name]}" \
    --connections=1 --streams="$DELAY_STREAMS" --tokens="$ONECONN_TOKENS" \
    --token_delay_ms="$DELAY_MS" --authorization="$AUTH" --duration_s=60 \
    --label="$name-1conn" 2>"$WORK/oneconn-$name-$round.err") || rc=$?
  ONE50[$name]+="$(field ttfc_p50_us "$line") "
  ONE99[$name]+="$(field ttfc_p99_us "$line") "
  ONEEL[$name]+="$(field elapsed_s "$line") "
  (( rc == 0 )) || problem "h2_relay_delay (1 connection) $name round $round (exit $rc): $line $(head -3 "$WORK/oneconn-$name-$round.err" | paste -sd';')"
  printf '  (d) one connection %-6s round %d: %s\n' "$name" "$round" "$line" >&2
}

run_single() {  # NAME ROUND: one stream alone, the unloaded relay delay
  local name=$1 round=$2 line rc=0
  line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/h2_relay_delay" --port="${PORT[$name]}" \
    --connections=1 --streams=1 --tokens="$SINGLE_TOKENS" --token_delay_ms="$DELAY_MS" \
    --authorization="$AUTH" --duration_s=30 --label="$name-1stream" \
    2>"$WORK/single-$name-$round.err") || rc=$?
  S50[$name]+="$(field p50_us "$line") "
  S99[$name]+="$(field p99_us "$line") "
  (( rc == 0 )) || problem "h2_relay_delay (1 stream) $name round $round (exit $rc): $line"
  printf '  (d) one stream %-6s round %d: %s\n' "$name" "$round" "$line" >&2
}

run_memory() {  # NAME ROUND [ALPN]: a fresh instance, IDLE_CONNS idle connections
  local name=$1 round=$2 alpn=${3:-h2} pid port before after pss0 pss1 out client line est tag
  tag=$name-$round-${alpn//\//}
  "start_$name" "mem$round" || { problem "$name: memory instance did not start"; return; }
  pid=$STARTED_PID; port=$STARTED_PORT
  for _ in 1 2 3; do https_ok "$port" h2 || true; done
  sleep 0.3
  before=$(proxy_kb rss_kb "$pid"); pss0=$(proxy_kb pss_kb "$pid")
  out="$WORK/idle-$tag.txt"
  "${LOAD_CPU[@]}" "$BUILD_DIR/bench/idle_conns" --port="$port" --alpn="$alpn" \
    --connections="$IDLE_CONNS" --parallel=64 --setup_timeout_s=60 --hold_s=90 \
    >"$out" 2>"$WORK/idle-$tag.err" &
  client=$!
  PIDS+=("$client")
  for _ in $(seq 700); do
    grep -q '^ready ' "$out" && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  line=$(grep '^ready ' "$out" || true)
  est=$(field established "$line")
  if [[ -n "$est" && "$est" -gt 0 ]]; then
    sleep 1
    after=$(proxy_kb rss_kb "$pid"); pss1=$(proxy_kb pss_kb "$pid")
    if [[ $alpn == h2 ]]; then
      MEMB[$name]+="$(( (after - before) * 1024 / est )) "
      MEMPSS[$name]+="$(( (pss1 - pss0) * 1024 / est )) "
    else
      MEMTLS[$name]+="$(( (after - before) * 1024 / est )) "
    fi
    printf '  (e) idle %s %-6s round %d: %s; RSS %d -> %d KiB (%d B/conn); PSS %d -> %d KiB\n' "$alpn" "$name" "$round" \
      "$line" "$before" "$after" "$(( (after - before) * 1024 / est ))" "$pss0" "$pss1" >&2
  elif [[ $alpn == h2 ]]; then
    MEMB[$name]+="n/a "; MEMPSS[$name]+="n/a "
  fi
  stop_pid "$client"
  line=$(grep '^done ' "$out" || true)
  [[ "$(field failed "$(grep '^ready ' "$out" || true)")" == 0 && "$(field closed_by_server "$line")" == 0 ]] ||
    problem "idle_conns $alpn $name round $round: $(paste -sd';' "$out") $(head -3 "$WORK/idle-$tag.err" | paste -sd';')"
  kill -0 "$pid" 2>/dev/null || problem "$name memory instance exited during the idle test"
  stop_pid "$pid"
}

run_cancel() {  # NAME ROUND
  local name=$1 round=$2 proto line rc
  for proto in h2 h1; do
    rc=0
    line=$("${LOAD_CPU[@]}" "$BUILD_DIR/bench/cancel_latency" --port="${PORT[$name]}" \
      --sim_port="$SIM_PORT" --proto="$proto" --trials="$CANCEL_TRIALS" \
      --cancel_after="$CANCEL_AFTER" --token_delay_ms="$CANCEL_DELAY_MS" \
      --authorization="$AUTH" --label="$name" 2>"$WORK/cancel-$name-$proto-$round.err") || rc=$?
    local samples
    samples=$(field samples_us "$line" | tr ',' ' ')
    [[ "$samples" == "-" ]] && samples=""
    if [[ $proto == h2 ]]; then
      CAN_H2[$name]+="$samples "; CAN_H2_R[$name]+="$(field p50_us "$line") "
    else
      CAN_H1[$name]+="$samples "; CAN_H1_R[$name]+="$(field p50_us "$line") "
    fi
    (( rc == 0 )) || problem "cancel_latency $name $proto round $round (exit $rc): $line $(head -3 "$WORK/cancel-$name-$proto-$round.err" | paste -sd';')"
    printf '  (f) cancel %-6s %s round %d: %s\n' "$name" "$proto" "$round" "$line" >&2
  done
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "compare_nginx.sh: sim :$SIM_PORT, nginx :${PORT[nginx]}, haproxy :${PORT[haproxy]}, sluice :${PORT[sluice]}; $PINNING; load average $LOAD_BEFORE; $ROUNDS round(s)" >&2
# Warm each (upstream keepalive pools, page cache, CPU frequency).
for name in "${CONTENDERS[@]}"; do
  "${LOAD_CPU[@]}" timeout 10 h2load -t1 -c8 -m4 -D1 -H "Authorization: $AUTH" \
    "https://127.0.0.1:${PORT[$name]}/api/tags" >/dev/null 2>&1 || true
done

T_START=$(date +%s)
for round in $(seq "$ROUNDS"); do
  mapfile -t ROUND_ORDER < <(order "$round")
  if wanted a; then for name in "${ROUND_ORDER[@]}"; do run_h2load "$name" "$round"; done; fi
  if wanted b; then for name in "${ROUND_ORDER[@]}"; do run_wrk "$name" "$round"; done; fi
  if wanted c; then for name in "${ROUND_ORDER[@]}"; do run_handshakes "$name" "$round"; done; fi
  if wanted d; then
    run_direct_delay "$round"
    for name in "${ROUND_ORDER[@]}"; do run_delay "$name" "$round"; done
    for name in "${ROUND_ORDER[@]}"; do run_oneconn "$name" "$round"; done
    for name in "${ROUND_ORDER[@]}"; do run_single "$name" "$round"; done
  fi
  if wanted f; then for name in "${ROUND_ORDER[@]}"; do run_cancel "$name" "$round"; done; fi
  if wanted e; then
    for name in "${ROUND_ORDER[@]}"; do run_memory "$name" "$round"; done
    # TLS alone (no HTTP/2 session), once: splits the per-connection cost.
    if (( round == 1 )); then
      for name in "${ROUND_ORDER[@]}"; do run_memory "$name" "$round" http/1.1; done
    fi
  fi
done
T_TOTAL=$(( $(date +%s) - T_START ))
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

for name in "${CONTENDERS[@]}"; do
  kill -0 "${PID[$name]}" 2>/dev/null || problem "$name exited during the run"
done
SIM_STATS=$(curl -s --max-time 2 "http://127.0.0.1:$SIM_PORT/sim/stats" || true)
NGINX_STATUS=$(curl -s --max-time 2 --cacert "$WORK/certs/ca.pem" -H "Authorization: $AUTH" \
  "https://localhost:${PORT[nginx]}/nginx_status" | paste -sd' ' || true)
sleep 1.5  # sluice's access log flush
declare -A ACCESS
for name in "${CONTENDERS[@]}"; do ACCESS[$name]=$(access_lines "$name"); done
NGINX_LOG=$(grep -hE '\[(warn|error|crit|alert|emerg)\]' "$WORK"/nginx-*/error.log 2>/dev/null | head -3 || true)
HAPROXY_LOG=$(grep -hE '\[(WARNING|ALERT)\]' "$WORK"/haproxy-*/error.log 2>/dev/null | head -3 || true)
SLUICE_LOG=$(grep -hE --exclude='*-access.log' '\[(warn|error)\]' "$WORK"/sluice-*.log 2>/dev/null | head -5 || true)
[[ -n "$NGINX_LOG" ]] && problem "nginx error log: $(paste -sd';' <<<"$NGINX_LOG")"
[[ -n "$HAPROXY_LOG" ]] && problem "haproxy log: $(paste -sd';' <<<"$HAPROXY_LOG")"
[[ -n "$SLUICE_LOG" ]] && problem "sluice log: $(paste -sd';' <<<"$SLUICE_LOG")"

# --- Table --------------------------------------------------------------
# shellcheck disable=SC2086
m() { median $1; }

declare -A R
for name in "${CONTENDERS[@]}"; do
  R[h2,$name]=$(m "${H2RPS[$name]-}")
  R[h2pc,$name]=$(m "${H2PC[$name]-}")
  R[wrk,$name]=$(m "${WRKRPS[$name]-}")
  R[wrkpc,$name]=$(m "${WRKPC[$name]-}")
  R[hspc,$name]=$(m "${HSPC[$name]-}")
  R[wrkp99,$name]=$(m "${WRKP99[$name]-}")
  R[hs,$name]=$(m "${HSRATE[$name]-}")
  R[dp50,$name]=$(m "${DP50[$name]-}")
  R[dp99,$name]=$(m "${DP99[$name]-}")
  R[dmax,$name]=$(m "${DMAX[$name]-}")
  R[t50,$name]=$(m "${TTFC50[$name]-}")
  R[t99,$name]=$(m "${TTFC99[$name]-}")
  R[s50,$name]=$(m "${S50[$name]-}")
  R[s99,$name]=$(m "${S99[$name]-}")
  R[o50,$name]=$(m "${ONE50[$name]-}")
  R[o99,$name]=$(m "${ONE99[$name]-}")
  R[oel,$name]=$(m "${ONEEL[$name]-}")
  R[mem,$name]=$(m "${MEMB[$name]-}")
  R[pss,$name]=$(m "${MEMPSS[$name]-}")
  R[memtls,$name]=$(m "${MEMTLS[$name]-}")
  R[c2,$name]=$(m "${CAN_H2[$name]-}")
  R[c1,$name]=$(m "${CAN_H1[$name]-}")
done
D50=$(m "$DIRECT_P50"); D99=$(m "$DIRECT_P99"); DMX=$(m "$DIRECT_MAX")
H2_RATIO=$(ratio "${R[h2,sluice]}" "${R[h2,nginx]}")
H2_RATIO_HA=$(ratio "${R[h2,sluice]}" "${R[h2,haproxy]}")
MEM_RATIO=$(ratio "${R[mem,sluice]}" "${R[mem,nginx]}")
ADDED99=$(added "${R[dp99,sluice]}" "$D99")
# The direct reference runs 1000 HTTP/1.1 connections to the simulator with
# client and simulator on the same CPU; when that CPU is the bottleneck its
# p99 exceeds the proxied one and "added" means nothing.
if [[ "$ADDED99" == n/a ]]; then
  DELAY_VERDICT=n/a
elif awk -v d="$D99" -v s="${R[dp99,sluice]}" 'BEGIN { exit !(d > s) }'; then
  DELAY_VERDICT="undetermined (the direct reference's p99 is above sluice's: CPU 1 was the limit there)"
else
  DELAY_VERDICT=$(verdict "${ADDED99#+}" 100 le)
fi
row() {  # LABEL KEY [TARGET]
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$(fmt "${R[$2,nginx]}")" \
    "$(fmt "${R[$2,haproxy]}")" "$(fmt "${R[$2,sluice]}")" \
    "$(ratio "${R[$2,sluice]}" "${R[$2,nginx]}")" "$(ratio "${R[$2,sluice]}" "${R[$2,haproxy]}")" "${3:-}"
}
TABLE=$(
  echo "| Measure (median of $ROUNDS rounds, the three alternating) | nginx | HAProxy | sluice | sluice/nginx | sluice/HAProxy | target |"
  echo "|---|---:|---:|---:|---:|---:|---|"
  row "(a) h2 over TLS, GET /api/tags req/s (h2load -t1 -c$H2_CONNS -m$H2_STREAMS -D${H2_SECONDS}s)" h2 \
    "sluice/nginx >= 2.50: $(verdict "$H2_RATIO" 2.5 ge); sluice/HAProxy >= 1.25: $(verdict "$H2_RATIO_HA" 1.25 ge)"
  row "(a) the same per fully busy proxy core (req/s ÷ proxy CPU share)" h2pc \
    "(per core: sluice/nginx $(verdict "$(ratio "${R[h2pc,sluice]}" "${R[h2pc,nginx]}")" 2.5 ge), sluice/HAProxy $(verdict "$(ratio "${R[h2pc,sluice]}" "${R[h2pc,haproxy]}")" 1.25 ge))"
  row "(b) HTTP/1.1 over TLS, GET /api/tags req/s (wrk -t1 -c$WRK_CONNS -d${WRK_SECONDS}s)" wrk
  row "(b) the same per fully busy proxy core" wrkpc
  row "(b) HTTP/1.1 over TLS, GET /api/tags latency p99 (µs)" wrkp99
  row "(c) full TLS handshakes/s, 1 request each (tls_handshakes, $HS_CONC at once)" hs
  row "(c) the same per fully busy proxy core" hspc
  row "(d) per-chunk delay p50 (µs), $DELAY_STREAMS h2 streams on $DELAY_CONNS TLS conns [direct h1: $D50]" dp50
  row "(d) per-chunk delay p99 (µs) [direct h1: $D99; sluice added: $ADDED99]" dp99 \
    "sluice added <= 100: $DELAY_VERDICT"
  row "(d) per-chunk delay max (µs) [direct h1: $DMX]" dmax
  row "(d) time to first chunk p50 (µs)" t50
  row "(d) time to first chunk p99 (µs)" t99
  row "(d) one stream alone ($SINGLE_TOKENS tokens): per-chunk delay p50 (µs)" s50
  row "(d) one stream alone: per-chunk delay p99 (µs)" s99
  row "(d) $DELAY_STREAMS streams on 1 connection ($ONECONN_TOKENS tokens each): time to first chunk p50 (µs)" o50
  row "(d) $DELAY_STREAMS streams on 1 connection: time to first chunk p99 (µs)" o99
  row "(e) RSS per idle TLS h2 connection (bytes, $IDLE_CONNS conns)" mem \
    "<= 0.60: $(verdict "$MEM_RATIO" 0.6 le)"
  row "(e) PSS per idle TLS h2 connection (bytes)" pss
  row "(e) RSS per idle TLS connection, ALPN http/1.1, no request (bytes, round 1 only)" memtls
  row "(f) client cancel to upstream close, h2 RST_STREAM (µs, median of all trials)" c2
  row "(f) client cancel to upstream close, HTTP/1.1 close (µs, median of all trials)" c1
)

per_round() {  # ARRAY_NAME: "nginx [..] haproxy [..] sluice [..]"
  local k v
  for k in "${CONTENDERS[@]}"; do eval "v=\${$1[$k]-}"; printf '%s [%s] ' "$k" "${v% }"; done
}
# round_ratios ARRAY_NAME OTHER: sluice/OTHER within each round (the runs
# of one round are next to each other in time).
round_ratios() {
  local -a s o
  local i out=""
  eval "read -r -a s <<<\"\${$1[sluice]-}\""
  eval "read -r -a o <<<\"\${$1[$2]-}\""
  for i in "${!s[@]}"; do out+="$(ratio "${s[$i]}" "${o[$i]:-n/a}") "; done
  echo "${out% }"
}
NOTES="Setup: $PINNING. nginx $("$NGINX" -v 2>&1 | sed 's/^nginx version: //') (OpenSSL), worker_processes 1, the baseline config (generated into the temp dir: TLS 1.2/1.3, ECDHE AES-GCM ciphers, shared session cache 10m, tickets off, HSTS always, API-key map with the auth check, limit_req zones gen/api with unreachable rates, /api/delete and /api/push 403, /api/pull allow-list, stub_status, access_log with the baseline format), except keepalive_requests 1000000 (the baseline's 1000 would end each client connection with GOAWAY every 1000 requests) and upstream keepalive 1024 (the baseline's 32 reconnects for most requests at 640 in flight); its defaults otherwise (http2_max_concurrent_streams 128). HAProxy $("$HAPROXY" -v 2>&1 | sed -nE 's/^HAProxy version ([^ ]+).*/\1/p') (OpenSSL), nbthread 1, the same job (bench/haproxy.sh: TLS 1.2/1.3 with the same ciphers, session cache 40000 entries for 1 day, tickets off, ALPN h2,http/1.1, 128 h2 streams, HSTS on every response, the API key as an ACL on the whole Authorization value from a pattern file, stick-tables gen/api tracking every request by client address against an unreachable 1000000 req/s, /api/delete and /api/push 403, /api/pull allow-list, 413 over 100M, X-Forwarded-For, X-Real-IP, X-Forwarded-Proto, http-reuse always with an unbounded idle pool, timeouts 10/600/600 s, access log in the baseline's format). sluice --threads=1 with the same settings (tickets off, the default adaptive upstream pool, timeouts 10/600/600 s, body 100M, 128 h2 streams, the same API key in a keys file, rate zones with unreachable rates, default route rules, --access_log in the baseline's nginx format). All use the same ECDSA P-256 certificate from tools/make-certs.sh and the same ollama-sim --threads=1.
Work per request: each checks the API key, runs its rate zones and writes an access log line per request: access log lines at the end, nginx ${ACCESS[nginx]}, HAProxy ${ACCESS[haproxy]} (log stdout to a file, one write per line), sluice ${ACCESS[sluice]} (buffered, a writer thread).
Proxy CPU % = CPU time of all the proxy's threads (schedstat) over the run's wall time, in percent of one core; 'per fully busy proxy core' = rate × 100 / CPU %, which reads through a client-bound or starved run (it assumes cost scales linearly).
(a) req/s per round (round order: $(order 1 | paste -sd' '), then rotated): $(per_round H2RPS); sluice/nginx per round [$(round_ratios H2RPS nginx)], sluice/HAProxy per round [$(round_ratios H2RPS haproxy)]; proxy CPU %: $(per_round H2CPU); per busy core: $(per_round H2PC).
(b) req/s per round: $(per_round WRKRPS); p99 µs: $(per_round WRKP99); proxy CPU %: $(per_round WRKCPU); per busy core: $(per_round WRKPC).
(c) bench/tls_handshakes (BoringSSL client, no session cache, ALPN http/1.1, X25519 + ECDSA P-256 as negotiated by default, Connection: close after one GET /api/tags; the client on CPU 1 does as much crypto per handshake as the server, so a proxy below 100 % CPU here was limited by the client): per round $(per_round HSRATE); proxy CPU %: $(per_round HSCPU); per busy core: $(per_round HSPC).
(d) bench/h2_relay_delay --connections=$DELAY_CONNS --streams=$DELAY_STREAMS --tokens=$DELAY_TOKENS --token_delay_ms=$DELAY_MS ($((DELAY_STREAMS / DELAY_CONNS)) streams per connection, under the proxies' 128 limit, so no stream waits for a slot). p99 per round: $(per_round DP99); max: $(per_round DMAX); ttfc p99: $(per_round TTFC99); proxy CPU % over the run: $(per_round DCPU). The same tool with all $DELAY_STREAMS streams on one connection and $ONECONN_TOKENS tokens each: the server's SETTINGS_MAX_CONCURRENT_STREAMS (128 for all three) makes the client queue the rest, so the first chunk waits for earlier streams to end; run time per round: $(per_round ONEEL) s. One stream alone ($SINGLE_TOKENS tokens, one connection): the delay with the proxy otherwise idle, p50 per round $(per_round S50). Direct reference: relay_delay with $DELAY_STREAMS HTTP/1.1 connections straight to the simulator, p50 [${DIRECT_P50% }] p99 [${DIRECT_P99% }] max [${DIRECT_MAX% }]; 'sluice added' = sluice h2+TLS p99 minus direct h1 p99.
(e) bench/idle_conns: $IDLE_CONNS TLS connections (ALPN h2, preface + SETTINGS exchanged both ways, no stream) against a freshly started instance of each proxy warmed with 3 requests; (RSS after - RSS before) / established, RSS = VmRSS summed over the proxy's processes (nginx: master + worker; HAProxy: one process). Per round bytes/conn: $(per_round MEMB); PSS: $(per_round MEMPSS). Once more in round 1 with ALPN http/1.1 and no request (TLS and connection state without an HTTP/2 session): $(per_round MEMTLS). Kernel socket buffers are in none of the figures.
(f) bench/cancel_latency, $CANCEL_TRIALS trials per protocol per round: a generation (1 token every $CANCEL_DELAY_MS ms) cancelled after $CANCEL_AFTER chunks; sample = sim last_abort_us - client CLOCK_REALTIME just before sending RST_STREAM / closing. Per-round medians h2: $(per_round CAN_H2_R); h1: $(per_round CAN_H1_R).
Load average (1/5/15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER (the run itself keeps up to 2 busy); $T_TOTAL s of measuring; other processes share these CPUs.
ollama-sim /sim/stats at the end: $SIM_STATS. nginx stub_status at the end: $NGINX_STATUS"
if awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n) }'; then
  NOTES+=$'\n'"BUSY MACHINE: the 1-minute load average before the run ($LOAD_BEFORE) was above the CPU count; other work competed with the proxy on CPU 0 and with the clients on CPU 1, so rates and delays are contended (the per-core rows and the memory rows suffer least)."
fi
# Only the rows and notes of the measures run (--only).
only_run() {
  awk -v only="$ONLY" '{ l = $0; sub(/^\| /, "", l)
    if (l ~ /^\([a-f]\)/ && index(only, substr(l, 2, 1)) == 0) next; print }'
}
TABLE=$(only_run <<<"$TABLE")
NOTES=$(only_run <<<"$NOTES")
[[ -z "$PROBLEMS" ]] && PROBLEMS="none (no failed requests, non-2xx, socket errors, failed streams, missed aborts, or warnings in any log)"$'\n'

print_results "sluice against nginx and HAProxy (bench/compare_nginx.sh)" \
  "; sluice binary built $(date -u -r "$SLUICE" '+%Y-%m-%d %H:%M UTC') (the tree may have moved since)"
