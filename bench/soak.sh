#!/usr/bin/env bash
# Soak: a bounded mixed-traffic run of sluice with reloads and log reopens;
# errors must be 0 and RSS flat.
#
#   bash bench/soak.sh [--seconds N] [--record] [BUILD_DIR]
#        (N: default 300, at most 600; BUILD_DIR: default build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice, ollama-sim and
# bench/soak. One ollama-sim (2 threads) and one sluice (--threads=2, TLS on
# 127.0.0.1:0 with a certificate from tools/make-certs.sh, no plain
# listener, API-key auth from a keys file made by `sluice keys add`, rate
# limits off, JSON access log to a file, metrics on). bench/soak then runs
# for N seconds over TLS: 8 HTTP/1.1 keepalive connections and 4 HTTP/2
# connections of 8 streams each, requests drawn from a fixed seed (tags,
# version, streaming NDJSON generate, chat stream:false, OpenAI SSE), 10 %
# of the streams cancelled mid-stream; every response is checked (soak.cc
# says how). Meanwhile, every 10 s: the keys file changes (a spare key is
# added, the previous one revoked), the certificate is swapped for the
# other of two signed by the same CA, SIGHUP, and a GET /metrics; at 15 s
# and every 30 s after, the access log is renamed and SIGUSR1 sent
# (logrotate). sluice's VmRSS and open fds are sampled every second.
#
# Fails (exit 1) when: soak reports an error or exits non-zero; sluice
# dies; a reload or reopen is not logged by sluice; a /metrics scrape
# fails; the access log lines (all rotated files) differ from the requests
# made (soak's requests plus the scrapes) or one is not valid JSON; sluice
# counts dropped access-log lines; the RSS growth, a least-squares slope over
# the samples after the first 10 % of the run (warm-up), exceeds
# RSS_SLOPE_BOUND_MIB_PER_MIN (below); or sluice holds more fds after the
# run than before it plus its pooled upstream links (ollama-sim's open
# connections). Prints a summary; --record appends it to bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/soak.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
RECORD=0
SECONDS_RUN=300
BUILD_DIR=${BUILD:-build-bench}
while (( $# )); do
  case "$1" in
    --record) RECORD=1 ;;
    --seconds) SECONDS_RUN=${2:?--seconds needs a value}; shift ;;
    --seconds=*) SECONDS_RUN=${1#--seconds=} ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "soak.sh: unknown option $1" >&2; exit 2 ;;
    *) BUILD_DIR=$1 ;;
  esac
  shift
done
if ! [[ "$SECONDS_RUN" =~ ^[0-9]+$ ]] || (( SECONDS_RUN < 10 || SECONDS_RUN > 600 )); then
  echo "soak.sh: --seconds must be 10..600" >&2; exit 2
fi
use_build_dir soak.sh bench/soak
SOAK="$BUILD_DIR/bench/soak"
require_tools soak.sh curl openssl python3

# The RSS bound. sluice's memory is budgeted per connection and per stream
# (README "Memory per connection") and the load holds a constant number of
# both, so after warm-up nothing should grow: a positive slope is a leak.
# 1 MiB/min is well above the noise of a flat process (glibc arenas and
# trimming, page-granular RSS: 30 s runs on the 2-vCPU dev box fitted
# -0.02..+0.07 MiB/min) and below any leak per request or per connection
# at this load: at ~4000 requests/s it is ~4 bytes per request, less than
# the smallest heap block (32 bytes) a leaked object holds, and at ~45 new
# TLS connections/s (HTTP/1.1 cancels reconnect) ~390 bytes per connection.
RSS_SLOPE_BOUND_MIB_PER_MIN=1
H1_CONNS=8
H2_CONNS=4
STREAMS_PER_H2_CONN=8
CANCEL_PERCENT=10
HUP_EVERY=10
USR1_EVERY=30

make_work sluice-soak

# Two server certificates from one CA; reloads alternate between them.
bash "$ROOT/tools/make-certs.sh" "$WORK/certs" >/dev/null
mkdir "$WORK/certs2" "$WORK/tls"
cp "$WORK/certs/ca.pem" "$WORK/certs/ca.key" "$WORK/certs2/"
bash "$ROOT/tools/make-certs.sh" "$WORK/certs2" >/dev/null
cp "$WORK/certs/server.pem" "$WORK/certs/server.key" "$WORK/tls/"
KEY=$("$SLUICE" keys add soak --keys_file "$WORK/keys.txt")

start_sim --threads=2 --token_delay_ms=2

SLUICE_ARGS=(--threads=2 --listen_tls=127.0.0.1:0 --listen_http=
  --tls_cert="$WORK/tls/server.pem" --tls_key="$WORK/tls/server.key"
  --upstream="127.0.0.1:$SIM_PORT slots=0" --keys_file="$WORK/keys.txt"
  --rate_generation=off --rate_api=off
  --access_log="$WORK/access.log" --access_log_format=json --metrics=true)
"$SLUICE" "${SLUICE_ARGS[@]}" >"$WORK/sluice.log" 2>&1 &
SLUICE_PID=$!; PIDS+=("$SLUICE_PID")
PORT=$(wait_listening "$WORK/sluice.log" "$SLUICE_PID" '^sluice listening on https://127\.0\.0\.1:([0-9]+) .*')

now() { echo "${EPOCHREALTIME/[,.]/}"; }  # µs

SCRAPES=0
SCRAPE_FAILS=0
scrape() {  # GET /metrics over TLS into $WORK/metrics.txt
  local code
  code=$(curl -s -o "$WORK/metrics.txt" -w '%{http_code}' --max-time 5 \
    --cacert "$WORK/certs/ca.pem" "https://localhost:$PORT/metrics" || true)
  SCRAPES=$((SCRAPES + 1))
  [[ "$code" == 200 ]] || { SCRAPE_FAILS=$((SCRAPE_FAILS + 1)); echo "soak.sh: /metrics answered '$code'" >&2; }
}

FDS_BEFORE=$(fd_count "$SLUICE_PID")
RSS_BEFORE=$(rss_kb "$SLUICE_PID")
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
echo "soak.sh: sluice PID $SLUICE_PID on :$PORT, ollama-sim on :$SIM_PORT, ${SECONDS_RUN}s; work dir $WORK" >&2

"$SOAK" --port="$PORT" --seconds="$SECONDS_RUN" --key="$KEY" --h1_conns="$H1_CONNS" \
  --h2_conns="$H2_CONNS" --streams_per_h2_conn="$STREAMS_PER_H2_CONN" \
  --cancel_percent="$CANCEL_PERCENT" --seed=1 >"$WORK/soak.out" 2>"$WORK/soak.err" &
SOAK_PID=$!; PIDS+=("$SOAK_PID")

T0=$(now)
HUPS=0; USR1S=0; SPARE=0; SLUICE_DIED=0
next_hup=$HUP_EVERY; next_usr1=$(( USR1_EVERY / 2 )); next_sample=0
: >"$WORK/samples.txt"  # t_s rss_kb fds, while the soak runs
while kill -0 "$SOAK_PID" 2>/dev/null; do
  t_us=$(( $(now) - T0 ))
  t=$(( t_us / 1000000 ))
  if ! kill -0 "$SLUICE_PID" 2>/dev/null; then
    SLUICE_DIED=1
    echo "soak.sh: sluice died at ${t}s; the end of its log:" >&2
    tail -5 "$WORK/sluice.log" >&2
    kill -TERM "$SOAK_PID" 2>/dev/null || true
    break
  fi
  if (( t >= next_sample )); then
    echo "$(awk -v u="$t_us" 'BEGIN { printf "%.2f", u / 1e6 }') $(rss_kb "$SLUICE_PID") $(fd_count "$SLUICE_PID")" >>"$WORK/samples.txt"
    next_sample=$(( next_sample + 1 ))
  fi
  if (( t >= next_hup && t < SECONDS_RUN )); then
    # A real reload: the keys file and the certificate change every time.
    SPARE=$((SPARE + 1))
    src="$WORK/certs"; (( SPARE % 2 == 0 )) || src="$WORK/certs2"
    cp "$src/server.pem" "$src/server.key" "$WORK/tls/"
    "$SLUICE" keys add "spare$SPARE" --keys_file "$WORK/keys.txt" >/dev/null
    (( SPARE > 1 )) && "$SLUICE" keys revoke "spare$((SPARE - 1))" --keys_file "$WORK/keys.txt" >/dev/null
    kill -HUP "$SLUICE_PID"; HUPS=$((HUPS + 1))
    scrape
    next_hup=$(( next_hup + HUP_EVERY ))
    echo "soak.sh: t=${t}s rss=$(rss_kb "$SLUICE_PID")kB fds=$(fd_count "$SLUICE_PID") reloads=$HUPS reopens=$USR1S; $(tail -1 "$WORK/soak.err")" >&2
  fi
  if (( t >= next_usr1 && t < SECONDS_RUN )); then
    USR1S=$((USR1S + 1))
    mv "$WORK/access.log" "$WORK/access.log.$USR1S"
    kill -USR1 "$SLUICE_PID"
    next_usr1=$(( next_usr1 + USR1_EVERY ))
  fi
  sleep 0.2
done
SOAK_RC=0
wait "$SOAK_PID" || SOAK_RC=$?
kill -0 "$SLUICE_PID" 2>/dev/null || SLUICE_DIED=1
WALL=$(awk -v u="$(( $(now) - T0 ))" 'BEGIN { printf "%.0f", u / 1e6 }')

# Lingering closes end within 2 s, the access log flushes every 1 s.
sleep 3
FDS_AFTER=$(fd_count "$SLUICE_PID")
RSS_AFTER=$(rss_kb "$SLUICE_PID")
SIM_ACTIVE=$(curl -s --max-time 5 "http://127.0.0.1:$SIM_PORT/sim/stats" |
  sed -nE 's/.*"active":([0-9]+).*/\1/p')
UPSTREAM_LINKS=$(( ${SIM_ACTIVE:-1} - 1 ))  # less the stats request's own connection
LOG_CHECK=$(cat "$WORK"/access.log* | python3 -c '
import json, sys
lines = bad = 0
for line in sys.stdin:
    lines += 1
    try:
        json.loads(line)
    except ValueError:
        bad += 1
print(lines, bad)')
read -r LOG_LINES LOG_BAD <<<"$LOG_CHECK"
LOG_FILES=$(find "$WORK" -maxdepth 1 -name 'access.log*' | wc -l)
scrape  # the final figures (this request is not in the count above)
metric() { awk -v m="$1" '$1 == m { print $2 }' "$WORK/metrics.txt" 2>/dev/null || true; }
DROPPED=$(metric sluice_access_log_dropped_lines_total)
CANCELS_SEEN=$(metric sluice_client_cancellations_total)
TLS_FAILS=$(metric sluice_tls_handshake_failures_total)
UP_FAILS=$(metric sluice_upstream_connect_failures_total)
OTHER_CODES=$(grep -s '^sluice_http_requests_total{' "$WORK/metrics.txt" |
  grep -vE 'code="(200|499)"' | awk '{ printf "%s%s=%s", sep, $1, $2; sep = " " }' || true)
RELOADS_LOGGED=$(grep -c 'SIGHUP: reloaded policy' "$WORK/sluice.log" || true)
CERT_RELOADS_LOGGED=$(grep -c 'SIGHUP: reloaded certificate' "$WORK/sluice.log" || true)
REOPENS_LOGGED=$(grep -c 'SIGUSR1: reopened log files' "$WORK/sluice.log" || true)
WARNINGS=$(grep -cE '\[(warn|error|fatal)\]' "$WORK/sluice.log" || true)

SUMMARY=$(cat "$WORK/soak.out")
REQUESTS=$(field requests "$SUMMARY"); ERRORS=$(field errors "$SUMMARY")
EXPECTED_LINES=$(( ${REQUESTS:-0} + SCRAPES - 1 ))

# RSS: at 10 % of the run (end of warm-up), at the end of the load, the max,
# and the least-squares slope over [10 %, 100 %] of the run.
read -r RSS_10 RSS_END RSS_MAX SLOPE FD_MAX NSAMPLES < <(awk -v warm="$(( SECONDS_RUN / 10 ))" -v end="$SECONDS_RUN" '
  { if ($2 > max) max = $2; if ($3 > fdmax) fdmax = $3 }
  $1 >= warm && $1 <= end {
    if (r10 == "") r10 = $2
    rend = $2; n++; st += $1; sr += $2; stt += $1 * $1; str += $1 * $2
  }
  END {
    slope = (n > 1 && n * stt - st * st != 0) ? (n * str - st * sr) / (n * stt - st * st) : 0
    printf "%d %d %d %.3f %d %d\n", r10, rend, max, slope * 60 / 1024, fdmax, n
  }' "$WORK/samples.txt")

FAILS=()
[[ -n "$SUMMARY" ]] || FAILS+=("soak printed no summary (exit $SOAK_RC): $(tail -3 "$WORK/soak.err" | paste -sd';')")
(( SOAK_RC == 0 )) || FAILS+=("soak exited $SOAK_RC")
[[ "${ERRORS:-1}" == 0 ]] || FAILS+=("errors=$ERRORS")
(( SLUICE_DIED == 0 )) || FAILS+=("sluice died")
(( RELOADS_LOGGED == HUPS && CERT_RELOADS_LOGGED == HUPS )) ||
  FAILS+=("reloads: $HUPS sent, $RELOADS_LOGGED policy and $CERT_RELOADS_LOGGED certificate reloads logged")
(( REOPENS_LOGGED == USR1S )) || FAILS+=("log reopens: $USR1S sent, $REOPENS_LOGGED logged")
(( SCRAPE_FAILS == 0 )) || FAILS+=("$SCRAPE_FAILS /metrics scrapes failed")
(( LOG_LINES == EXPECTED_LINES )) || FAILS+=("access log: $LOG_LINES lines, $EXPECTED_LINES requests")
(( LOG_BAD == 0 )) || FAILS+=("access log: $LOG_BAD lines not JSON")
[[ "${DROPPED:-0}" == 0 ]] || FAILS+=("access log dropped $DROPPED lines")
(( FDS_AFTER <= FDS_BEFORE + UPSTREAM_LINKS )) ||
  FAILS+=("fds: $FDS_BEFORE before, $FDS_AFTER after with $UPSTREAM_LINKS upstream links")
awk -v s="$SLOPE" -v b="$RSS_SLOPE_BOUND_MIB_PER_MIN" 'BEGIN { exit !(s <= b) }' ||
  FAILS+=("RSS slope $SLOPE MiB/min above $RSS_SLOPE_BOUND_MIB_PER_MIN")
VERDICT=PASS
(( ${#FAILS[@]} == 0 )) || VERDICT="FAIL: $(IFS=';'; echo "${FAILS[*]}")"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
report() {
  echo
  echo "### Soak ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- machine: $(nproc) vCPU $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r); load average before the run $LOADAVG"
  echo "- command: \`$COMMAND\` (wall time ${WALL} s for the load and its drain)"
  echo "- sluice --threads=2, TLS only, API key auth, rate limits off, JSON access log, metrics on; ollama-sim --threads=2; soak: $H1_CONNS h1 + $H2_CONNS h2 connections x $STREAMS_PER_H2_CONN streams, cancel $CANCEL_PERCENT % of streams (h2 at most 25/s per connection, under nghttp2's rapid-reset limit), seed 1; every $HUP_EVERY s a changed keys file and certificate, SIGHUP and GET /metrics ($HUPS times); from 15 s every $USR1_EVERY s the access log renamed and SIGUSR1 ($USR1S times)"
  echo "- soak: \`$SUMMARY\`"
  echo "- result: **$VERDICT**"
  echo
  echo "| figure | value |"
  echo "|---|---|"
  echo "| requests (ok + cancelled + errors) | $REQUESTS ($(field ok "$SUMMARY") + $(field cancelled "$SUMMARY") + $ERRORS), $(awk -v r="$REQUESTS" -v s="$SECONDS_RUN" 'BEGIN { printf "%.0f", r / s }') req/s; h1 $(field h1 "$SUMMARY"), h2 $(field h2 "$SUMMARY") |"
  echo "| errors | $ERRORS ($(field error_kinds "$SUMMARY")) |"
  echo "| access log lines / requests + /metrics scrapes | $LOG_LINES / $EXPECTED_LINES in $LOG_FILES files, $LOG_BAD not JSON, $DROPPED dropped |"
  echo "| reloads logged (policy, certificate) / log reopens logged | $RELOADS_LOGGED, $CERT_RELOADS_LOGGED of $HUPS / $REOPENS_LOGGED of $USR1S |"
  echo "| sluice: cancellations seen; other status codes | $CANCELS_SEEN; ${OTHER_CODES:-none} |"
  echo "| RSS idle before / at 10 % / at end / max / idle after | $(mib "$RSS_BEFORE") / $(mib "$RSS_10") / $(mib "$RSS_END") / $(mib "$RSS_MAX") / $(mib "$RSS_AFTER") |"
  echo "| RSS slope after warm-up (least squares, $NSAMPLES samples) | $SLOPE MiB/min (bound $RSS_SLOPE_BOUND_MIB_PER_MIN) |"
  echo "| fds before / max / after (upstream links open after) | $FDS_BEFORE / $FD_MAX / $FDS_AFTER ($UPSTREAM_LINKS) |"
  echo "| TLS handshake failures, upstream connect failures, warn/error log lines | ${TLS_FAILS:-?}, ${UP_FAILS:-?}, $WARNINGS |"
}
report
if (( WARNINGS > 0 )); then
  echo; echo "sluice warn/error lines (first 5):"; grep -E '\[(warn|error|fatal)\]' "$WORK/sluice.log" | head -5
fi
grep '^soak: error' "$WORK/soak.err" | sed 's/^/  /' || true
if (( RECORD )); then report >>"$ROOT/bench/RESULTS.md"; fi
[[ "$VERDICT" == PASS ]]
