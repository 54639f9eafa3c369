#!/usr/bin/env bash
# End-to-end comparison of sluice against talking to ollama-sim directly.
#
#   bash bench/e2e.sh [--record] [BUILD_DIR]      (or BUILD=dir bash bench/e2e.sh)
#   SLUICE_EXTRA_ARGS="--busy_poll=2ms" adds flags to the sluice command line.
#
# Builds nothing: it runs BUILD_DIR's core/sluice, tools/ollama-sim/ollama-sim
# and bench/relay_delay (default build dir: build-bench). Everything listens
# on 127.0.0.1, on ports the kernel picks. sluice runs with one worker pinned
# to CPU 0; the simulator and the load generators share CPU 1.
#
#  (a) throughput: wrk -t1 -c50 -d5s --latency GET /api/tags, direct and
#      through sluice, alternating A B A B A B; medians of req/s, p50, p99.
#  (b) per-chunk delay: relay_delay with 100 concurrent streams (NDJSON,
#      one token every 20 ms), direct and through sluice, alternating 3 times;
#      medians of p50/p99/max and the delay sluice adds (through - direct).
#
# Prints a markdown table; --record also appends it, dated, with the machine
# and the command, to bench/RESULTS.md. Takes about 75 s.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/e2e.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args e2e.sh 19 "$@"
[[ -n "${BUILD:-}" ]] && COMMAND="BUILD=$BUILD $COMMAND"
[[ -n "${SLUICE_EXTRA_ARGS:-}" ]] && COMMAND="SLUICE_EXTRA_ARGS='$SLUICE_EXTRA_ARGS' $COMMAND"
RELAY_DELAY="$BUILD_DIR/bench/relay_delay"
[[ -x "$RELAY_DELAY" ]] || { echo "e2e.sh: $RELAY_DELAY not built" >&2; exit 2; }
require_tools e2e.sh wrk

# Throughput and delay settings. Tokens * delay * streams_rounds keeps each
# delay run near 4 s: 2 rounds of 100 tokens at 20 ms.
WRK_CONNS=50
WRK_SECONDS=5
ROUNDS=3
STREAMS=100
TOKENS=100
TOKEN_DELAY_MS=20
STREAM_ROUNDS=2

# Pinning: sluice alone on CPU 0, everything else on CPU 1. Without a second
# CPU the comparison would mostly measure the scheduler; run unpinned then.
pin_cpus "sluice on CPU 0; ollama-sim, wrk and relay_delay on CPU 1"

make_work sluice-e2e
start_sim --threads=1 --tokens="$TOKENS" --token_delay_ms="$TOKEN_DELAY_MS"

# shellcheck disable=SC2086
start_sluice_http main --auth=none --rate_generation=off --rate_api=off ${SLUICE_EXTRA_ARGS:-}
SLUICE_PID=$STARTED_PID
SLUICE_PORT=$STARTED_PORT

# Sanity: one request each way must succeed before measuring anything.
for port in "$SIM_PORT" "$SLUICE_PORT"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 \
    "http://127.0.0.1:$port/api/tags" || true)
  if [[ "$code" != 200 ]]; then
    echo "e2e.sh: GET /api/tags on port $port answered '$code'" >&2
    cat "$WORK/sluice-main.log" >&2
    exit 1
  fi
done

declare -A RPS P50 P99 DP50 DP99 DMAX
WRK_PROBLEMS=""
STREAM_PROBLEMS=""

run_wrk() {  # run_wrk NAME PORT ROUND
  local name=$1 port=$2 round=$3 out
  out=$("${LOAD_CPU[@]}" wrk -t1 -c"$WRK_CONNS" -d"${WRK_SECONDS}s" --latency \
    "http://127.0.0.1:$port/api/tags" 2>&1) || true
  echo "$out" >"$WORK/wrk-$name-$round.txt"
  RPS[$name]+="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out") "
  P50[$name]+="$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")") "
  P99[$name]+="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")") "
  local bad
  bad=$(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | paste -sd';' || true)
  [[ -n "$bad" ]] && WRK_PROBLEMS+="wrk $name round $round: $bad"$'\n'
  printf '  wrk %-7s round %d: %s req/s\n' "$name" "$round" \
    "$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")" >&2
}

run_delay() {  # run_delay NAME PORT ROUND
  local name=$1 port=$2 round=$3 line rc=0
  line=$("${LOAD_CPU[@]}" "$RELAY_DELAY" --port="$port" --label="$name" \
    --connections="$STREAMS" --rounds="$STREAM_ROUNDS" --tokens="$TOKENS" \
    --token_delay_ms="$TOKEN_DELAY_MS" --duration_s=30 \
    2>"$WORK/delay-$name-$round.err") || rc=$?
  echo "$line" >"$WORK/delay-$name-$round.txt"
  DP50[$name]+="$(field p50_us "$line") "
  DP99[$name]+="$(field p99_us "$line") "
  DMAX[$name]+="$(field max_us "$line") "
  if (( rc != 0 )); then
    STREAM_PROBLEMS+="relay_delay $name round $round (exit $rc): $line"$'\n'
    STREAM_PROBLEMS+="$(head -5 "$WORK/delay-$name-$round.err")"$'\n'
  fi
  printf '  relay_delay %-7s round %d: %s\n' "$name" "$round" "$line" >&2
}

# The machine may be shared: record how busy it was around the run.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "e2e.sh: sim :$SIM_PORT, sluice :$SLUICE_PORT; $PINNING; load average $LOAD_BEFORE" >&2
# Warm both paths (upstream pool, page cache, CPU frequency) before timing.
"${LOAD_CPU[@]}" wrk -t1 -c"$WRK_CONNS" -d1s "http://127.0.0.1:$SIM_PORT/api/tags" >/dev/null
"${LOAD_CPU[@]}" wrk -t1 -c"$WRK_CONNS" -d1s "http://127.0.0.1:$SLUICE_PORT/api/tags" >/dev/null

for round in $(seq "$ROUNDS"); do
  run_wrk direct "$SIM_PORT" "$round"
  run_wrk sluice "$SLUICE_PORT" "$round"
done
for round in $(seq "$ROUNDS"); do
  run_delay direct "$SIM_PORT" "$round"
  run_delay sluice "$SLUICE_PORT" "$round"
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
SLUICE_ALIVE=yes
kill -0 "$SLUICE_PID" 2>/dev/null || SLUICE_ALIVE="NO (exited during the run)"
SIM_STATS=$(curl -s --max-time 2 "http://127.0.0.1:$SIM_PORT/sim/stats" || true)
LOG_PROBLEMS=$(grep -E '\[(warn|error)\]' "$WORK/sluice-main.log" | head -5 || true)

# shellcheck disable=SC2086
{
  rps_d=$(median ${RPS[direct]}); rps_s=$(median ${RPS[sluice]})
  p50_d=$(median ${P50[direct]}); p50_s=$(median ${P50[sluice]})
  p99_d=$(median ${P99[direct]}); p99_s=$(median ${P99[sluice]})
  dp50_d=$(median ${DP50[direct]}); dp50_s=$(median ${DP50[sluice]})
  dp99_d=$(median ${DP99[direct]}); dp99_s=$(median ${DP99[sluice]})
  dmax_d=$(median ${DMAX[direct]}); dmax_s=$(median ${DMAX[sluice]})
}
RPS_RATIO=$(ratio "$rps_s" "$rps_d")

TABLE=$(cat <<EOF
| Measure (median of $ROUNDS, alternating) | direct | through sluice | sluice vs direct | target |
|---|---:|---:|---:|---|
| GET /api/tags req/s (wrk -t1 -c$WRK_CONNS -d${WRK_SECONDS}s) | $(fmt "$rps_d") | $(fmt "$rps_s") | ratio $RPS_RATIO | >= 0.50: $(verdict "$RPS_RATIO" 0.5 ge) |
| GET /api/tags latency p50 (µs) | $(fmt "$p50_d") | $(fmt "$p50_s") | $(added "$p50_s" "$p50_d") | |
| GET /api/tags latency p99 (µs) | $(fmt "$p99_d") | $(fmt "$p99_s") | $(added "$p99_s" "$p99_d") | |
| per-chunk delay p50 (µs), $STREAMS streams | $dp50_d | $dp50_s | $(added "$dp50_s" "$dp50_d") | |
| per-chunk delay p99 (µs), $STREAMS streams | $dp99_d | $dp99_s | $(added "$dp99_s" "$dp99_d") | added < 200: $(verdict "$(added "$dp99_s" "$dp99_d")" 199 le) |
| per-chunk delay max (µs), $STREAMS streams | $dmax_d | $dmax_s | $(added "$dmax_s" "$dmax_d") | |
EOF
)

NOTES="Setup: $PINNING; sluice --threads=1 --auth=none, no rate limits (the relay alone; bench/policy_cost.sh measures the policy); ollama-sim --threads=1.
Delay runs: relay_delay --connections=$STREAMS --rounds=$STREAM_ROUNDS --tokens=$TOKENS --token_delay_ms=$TOKEN_DELAY_MS (each run $((STREAMS * STREAM_ROUNDS * (TOKENS + 1))) chunks).
Per round: req/s direct [${RPS[direct]% }] sluice [${RPS[sluice]% }]; chunk p99 µs direct [${DP99[direct]% }] sluice [${DP99[sluice]% }]; chunk max µs direct [${DMAX[direct]% }] sluice [${DMAX[sluice]% }].
Load average (1/5/15 min) before: $LOAD_BEFORE, after: $LOAD_AFTER (the run itself keeps about 2 busy); other processes share these CPUs.
sluice alive at the end: $SLUICE_ALIVE. ollama-sim /sim/stats: $SIM_STATS"
PROBLEMS="$WRK_PROBLEMS$STREAM_PROBLEMS"
[[ -n "$LOG_PROBLEMS" ]] && PROBLEMS+="sluice log: $LOG_PROBLEMS"$'\n'
[[ -z "$PROBLEMS" ]] && PROBLEMS="none (no non-2xx, socket errors, failed streams, or sluice warnings)"$'\n'

print_results "end to end (bench/e2e.sh)"
