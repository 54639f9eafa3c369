#!/usr/bin/env bash
# How often sluice opens an upstream connection under a steady load, with
# the adaptive keepalive pool (--upstream_keepalive=auto, the default)
# against nginx's fixed size (--upstream_keepalive=32).
#
#   bash bench/pool_connects.sh [--record] [BUILD_DIR]   (default: build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice and ollama-sim. Two sluice
# processes (one worker each, pinned to CPU 0, run one at a time, no auth
# and no rate limits) in front of one ollama-sim; h2load on CPU 1 sends
# GET /api/tags over h2c, 64 clients x 10 streams (640 in flight):
# 20 000 requests to warm up, then 100 000 counted, alternating auto and 32
# for ROUNDS rounds. Reports the upstream connects per request of the
# counted part (sluice_upstream_connects_total) and the req/s ratio.
# Target (issue: adaptive pools): at most 0.1% connects per request with
# auto. Prints a markdown table; --record appends it to bench/RESULTS.md.
# About 2 minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/pool_connects.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args pool_connects.sh 17 "$@"
require_tools pool_connects.sh h2load curl

ROUNDS=${ROUNDS:-2}
pin_cpus "sluice worker on CPU 0; ollama-sim and h2load on CPU 1"
make_work sluice-pool
start_sim --threads=1

declare -A PORT
for name in auto 32; do
  start_sluice_http "$name" --auth=none --rate_generation=off --rate_api=off \
    --access_log=off --upstream_keepalive="$name"
  PORT[$name]=$STARTED_PORT
done

connects() {  # NAME
  curl -s --max-time 5 "http://127.0.0.1:${PORT[$1]}/metrics" |
    awk '/^sluice_upstream_connects_total /{ print $2 }'
}

declare -A RPS PER
PROBLEMS=""
run() {  # NAME ROUND
  local before after out rps ok
  "${LOAD_CPU[@]}" h2load -n 20000 -c64 -m10 "http://127.0.0.1:${PORT[$1]}/api/tags" >/dev/null 2>&1 || true
  before=$(connects "$1")
  out=$("${LOAD_CPU[@]}" h2load -n 100000 -c64 -m10 "http://127.0.0.1:${PORT[$1]}/api/tags" 2>&1) || true
  after=$(connects "$1")
  ok=$(sed -nE 's/^requests: .* ([0-9]+) succeeded.*/\1/p' <<<"$out")
  [[ "$ok" == 100000 ]] || PROBLEMS+="$1 round $2: $(grep '^requests:' <<<"$out"); "
  rps=$(sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p' <<<"$out")
  RPS[$1]+="$rps "
  PER[$1]+="$(awk -v a="$before" -v b="$after" 'BEGIN { printf "%.4f", (b - a) / 100000 }') "
  printf '  %-4s round %d: %s req/s, %d upstream connects for 100000 requests\n' \
    "$1" "$2" "$rps" "$((after - before))" >&2
}
for round in $(seq "$ROUNDS"); do
  run auto "$round"
  run 32 "$round"
done

auto_rps=$(median ${RPS[auto]}); fixed_rps=$(median ${RPS[32]})
TABLE="| --upstream_keepalive | upstream connects per request (each round) | req/s (median) |
|---|---|---|
| auto | ${PER[auto]}| $(fmt "$auto_rps") |
| 32 | ${PER[32]}| $(fmt "$fixed_rps") |"
NOTES="h2load -c64 -m10 h2c GET /api/tags, 100 000 requests counted after 20 000 of warm-up, $ROUNDS rounds alternating; $PINNING
req/s ratio auto/32: $(ratio "$auto_rps" "$fixed_rps")
Target: at most 0.001 connects per request with auto"
print_results "Adaptive upstream keepalive pool: connects per request"
