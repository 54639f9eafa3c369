#!/usr/bin/env bash
# Model loads and time to first token with several Ollama backends:
# model-aware routing (--balance=model) against round-robin
# (--balance=round_robin).
#
#   bash bench/routing.sh [--record] [BUILD_DIR]   (default: build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice and ollama-sim. Each round
# starts two fresh simulators in model mode (models m1..m4,
# --max_loaded_models=1 --load_ms=2000 --num_parallel=4: nothing loaded at
# the start) and a fresh sluice (one worker, no auth, no rate limits,
# access log off, --health_interval=1s) in front of both with
# `slots=4 max_loaded=1` per backend, then bench/routing_load.py: CLIENTS
# (8) concurrent clients, each sending REQUESTS (15) sequential streamed
# POST /api/generate, model drawn 50% m1, 30% m2, 15% m3, 5% m4 (fixed
# seed: every round sends the same sequence), 20 tokens 20 ms apart,
# capped at MAX_SECONDS (90) per round; only completed requests count.
# Rounds alternate model, round_robin for ROUNDS (2) rounds each.
# Reports per mode (all rounds pooled): requests completed, non-200
# answers, model loads (summed over both simulators' /sim/stats), loads per
# 100 requests, TTFT p50 and p99; and per round the routing decisions
# (sluice_route_decisions_total) and where each model's requests went.
# Target (issue: model-aware routing): at least 5x fewer loads per request
# and lower TTFT p50 and p99 than round-robin. Prints a markdown table;
# --record appends it to bench/RESULTS.md. About 4 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/routing.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args routing.sh 25 "$@"
require_tools routing.sh curl python3

ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-8}
REQUESTS=${REQUESTS:-15}
MAX_SECONDS=${MAX_SECONDS:-90}
MIX=${MIX:-m1:50,m2:30,m3:15,m4:5}
SEED=${SEED:-1}
LOAD_MS=2000
pin_cpus "sluice worker on CPU 0; both simulators and the load client on CPU 1"
make_work sluice-routing

# start_backend NAME: a fresh simulator in model mode; sets SIM_PORT.
start_backend() {
  local log="$WORK/sim-$1.log"
  "${LOAD_CPU[@]}" "$SIM" --listen=127.0.0.1:0 --models=m1,m2,m3,m4 --max_loaded_models=1 \
    --load_ms="$LOAD_MS" --num_parallel=4 >"$log" 2>&1 &
  PIDS+=("$!")
  SIM_PORT=$(wait_listening "$log" "$!" '^ollama-sim listening on http://127\.0\.0\.1:([0-9]+)$')
}

# start_router MODE PORT_A PORT_B: a fresh sluice; sets ROUTER_PORT.
start_router() {
  local log="$WORK/sluice-$1.log"
  "${PROXY_CPU[@]}" "$SLUICE" --threads=1 --listen_http=127.0.0.1:0 --listen_tls= \
    --http_mode=serve --auth=none --rate_generation=off --rate_api=off --access_log=off \
    --health_interval=1s --balance="$1" \
    --upstream="127.0.0.1:$2 name=a slots=4 max_loaded=1,127.0.0.1:$3 name=b slots=4 max_loaded=1" \
    >"$log" 2>&1 &
  PIDS+=("$!")
  ROUTER_PORT=$(wait_listening "$log" "$!" '^sluice listening on http://127\.0\.0\.1:([0-9]+) .*')
}

# stop_all: ends this round's processes (cleanup still covers them).
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# sim_models PORT: "model requests loads" per line from /sim/stats.
sim_models() {
  curl -s --max-time 5 "http://127.0.0.1:$1/sim/stats" | python3 -c '
import json, sys
for name, m in sorted(json.load(sys.stdin).get("models", {}).items()):
    print(name.removesuffix(":latest"), m["requests"], m["loads"])'
}

# decisions: sluice_route_decisions_total as "kind=N" per line.
decisions() {
  curl -s --max-time 5 "http://127.0.0.1:$ROUTER_PORT/metrics" |
    sed -nE 's/^sluice_route_decisions_total\{kind="([a-z_]+)"\} ([0-9]+)$/\1=\2/p'
}

# wait_probed MODE: with model routing, until sluice's prober has read both
# backends' model lists (asked for a model neither has, sluice itself
# answers 404: a not_found decision), up to 10 s, then one more health
# interval for /api/ps; round-robin reads no lists: 2 s, the same wait.
wait_probed() {
  if [[ "$1" == model ]]; then
    for _ in $(seq 100); do
      curl -s --max-time 2 -X POST -d '{"model":"absent"}' -o /dev/null \
        "http://127.0.0.1:$ROUTER_PORT/api/show" || true
      grep -qE '^not_found=[1-9]' <<<"$(decisions)" && { sleep 1.2; return 0; }
      sleep 0.1
    done
    PROBLEMS+="sluice never knew both backends' models; "
  else
    sleep 2
  fi
}

declare -A COMPLETED ERRORS INCOMPLETE LOADS
PROBLEMS=""
DETAILS=""
run() {  # MODE ROUND
  local mode=$1 round=$2 port_a port_b out loads a_stats b_stats before after
  start_backend a; port_a=$SIM_PORT
  start_backend b; port_b=$SIM_PORT
  start_router "$mode" "$port_a" "$port_b"
  wait_probed "$mode"
  before=$(decisions)
  # /api/show loads nothing; count from zero anyway.
  curl -s --max-time 5 -X POST "http://127.0.0.1:$port_a/sim/reset" >/dev/null
  curl -s --max-time 5 -X POST "http://127.0.0.1:$port_b/sim/reset" >/dev/null
  out=$("${LOAD_CPU[@]}" python3 "$ROOT/bench/routing_load.py" --port="$ROUTER_PORT" \
    --clients="$CLIENTS" --requests="$REQUESTS" --mix="$MIX" --seed="$SEED" \
    --tokens=20 --delay_ms=20 --max_seconds="$MAX_SECONDS" --ttft_out="$WORK/ttft-$mode")
  a_stats=$(sim_models "$port_a"); b_stats=$(sim_models "$port_b")
  loads=$(awk '{ s += $3 } END { print s + 0 }' <<<"$a_stats
$b_stats")
  after=$(decisions)
  # The round's decisions: after minus before, per kind.
  after=$(awk -F= 'NR == FNR { b[$1] = $2; next } { printf "%s%s=%d", (n++ ? " " : ""), $1, $2 - b[$1] }' \
    <(printf '%s\n' "$before") <(printf '%s\n' "$after"))
  stop_all
  COMPLETED[$mode]=$((${COMPLETED[$mode]:-0} + $(field completed "$out")))
  ERRORS[$mode]=$((${ERRORS[$mode]:-0} + $(field errors "$out")))
  INCOMPLETE[$mode]=$((${INCOMPLETE[$mode]:-0} + $(field incomplete "$out")))
  LOADS[$mode]=$((${LOADS[$mode]:-0} + loads))
  (( $(field errors "$out") == 0 )) || PROBLEMS+="$mode round $round: $(field errors "$out") non-200 answers; "
  (( $(field incomplete "$out") == 0 )) ||
    PROBLEMS+="$mode round $round: $(field incomplete "$out") requests cut off by the ${MAX_SECONDS}s cap or a failure; "
  local line
  line="$mode round $round: $(field completed "$out") completed in $(field wall_s "$out") s, $loads loads, TTFT p50 $(field ttft_p50_ms "$out") ms p99 $(field ttft_p99_ms "$out") ms; decisions: ${after:-none}; requests/loads per model: a {$(awk '{ printf "%s%s %s/%s", (NR > 1 ? ", " : ""), $1, $2, $3 }' <<<"$a_stats")} b {$(awk '{ printf "%s%s %s/%s", (NR > 1 ? ", " : ""), $1, $2, $3 }' <<<"$b_stats")}"
  echo "  $line" >&2
  DETAILS+="$line"$'\n'
}

for round in $(seq "$ROUNDS"); do
  run model "$round"
  run round_robin "$round"
done

# pooled_ttft MODE P: the P-th percentile (nearest rank) of every round's
# TTFTs in ms; n/a when none completed.
pooled_ttft() {
  [[ -s "$WORK/ttft-$1" ]] || { echo n/a; return; }
  sort -g "$WORK/ttft-$1" | awk -v p="$2" '{ a[NR] = $1 } END {
    r = int((NR * p + 99) / 100); if (r < 1) r = 1; printf "%.0f", a[r] }'
}
below_one() { awk -v v="$1" 'BEGIN { if (v == "n/a") print "n/a"; else print (v + 0 < 1) ? "met" : "NOT met" }'; }
per100() { awk -v l="$1" -v n="$2" 'BEGIN { if (n + 0 == 0) print "n/a"; else printf "%.1f", 100 * l / n }'; }

declare -A P50 P99 PER
TABLE="| --balance | requests completed | non-200 | cut off | model loads | loads per 100 requests | TTFT p50 ms | TTFT p99 ms |
|---|---|---|---|---|---|---|---|"
for mode in model round_robin; do
  P50[$mode]=$(pooled_ttft "$mode" 50); P99[$mode]=$(pooled_ttft "$mode" 99)
  PER[$mode]=$(per100 "${LOADS[$mode]}" "${COMPLETED[$mode]}")
  TABLE+="
| $mode | ${COMPLETED[$mode]} | ${ERRORS[$mode]} | ${INCOMPLETE[$mode]} | ${LOADS[$mode]} | ${PER[$mode]} | ${P50[$mode]} | ${P99[$mode]} |"
done

loads_ratio=$(ratio "${PER[round_robin]}" "${PER[model]}")
p50_ratio=$(ratio "${P50[model]}" "${P50[round_robin]}")
p99_ratio=$(ratio "${P99[model]}" "${P99[round_robin]}")
NOTES="2 ollama-sim (--models=m1,m2,m3,m4 --max_loaded_models=1 --load_ms=$LOAD_MS --num_parallel=4), fresh simulators and sluice each round (--threads=1, --access_log=off, --health_interval=1s, backends slots=4 max_loaded=1); $PINNING
Load: $CLIENTS clients x $REQUESTS sequential streamed /api/generate (mix $MIX, seed $SEED, 20 tokens 20 ms apart), cap ${MAX_SECONDS}s per round; $ROUNDS rounds per mode, alternating, figures pooled over the rounds
TTFT: request sent to first NDJSON line with a non-empty \"response\", completed requests only
Loads per request, round_robin/model: $loads_ratio (target at least 5: $(verdict "$loads_ratio" 5 ge))
TTFT model/round_robin: p50 $p50_ratio ($(below_one "$p50_ratio")), p99 $p99_ratio ($(below_one "$p99_ratio")) (target: below 1)
Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
${DETAILS%$'\n'}"
print_results "Model-aware routing against round-robin: model loads and time to first token"
