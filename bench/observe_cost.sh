#!/usr/bin/env bash
# What access logging and metrics cost, end to end.
#
#   bash bench/observe_cost.sh [--record] [BUILD_DIR]   (default: build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice and ollama-sim. Three
# sluice processes in front of one ollama-sim, each with one worker pinned
# to CPU 0 (run one at a time), load on CPU 1:
#
#  off:   --access_log=off --metrics=false (no per-request accounting)
#  nginx: access log in the nginx format to a file, metrics on
#  json:  access log in the JSON format to a file, metrics on (token
#         streams are read for the token fields)
#
#  (a) wrk -t1 -c50 -d5s GET /api/tags: the per-request cost.
#  (b) wrk -t1 -c50 -d5s POST /api/generate, 20 tokens without delay
#      (NDJSON, chunked): the per-token cost of reading the stream.
#  off, nginx and json alternate, 3 rounds; the median req/s of each and
#  the ratios to off. Target: each ratio >= 0.97 (bench/README.md).
#
# Prints a markdown table; --record appends it to bench/RESULTS.md. About 100 s.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/observe_cost.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args observe_cost.sh 22 "$@"
require_tools observe_cost.sh wrk curl

ROUNDS=3
WRK_SECONDS=5
pin_cpus "sluice worker on CPU 0 (log writer thread unpinned); ollama-sim and wrk on CPU 1"

make_work sluice-observe
start_sim --threads=1 --tokens=20 --token_delay_ms=0

declare -A PORT
start() {  # NAME ARGS...
  start_sluice_http "$1" --auth=none --rate_generation=off --rate_api=off "${@:2}"
  PORT[$1]=$STARTED_PORT
}
start off --access_log=off --metrics=false
start nginx --access_log="$WORK/nginx.log" --access_log_format=nginx --metrics=true
start json --access_log="$WORK/json.log" --access_log_format=json --metrics=true
VARIANTS=(off nginx json)

for name in "${VARIANTS[@]}"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:${PORT[$name]}/api/tags" || true)
  [[ "$code" == 200 ]] || { echo "observe_cost.sh: $name answered $code" >&2; exit 1; }
done

cat >"$WORK/generate.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"llama3","prompt":"Why is the sky blue?"}'
wrk.headers["Content-Type"] = "application/json"
LUA

declare -A RPS
run_wrk() {  # WORKLOAD NAME ROUND
  local workload=$1 name=$2 round=$3 out args
  if [[ "$workload" == tags ]]; then
    args=("http://127.0.0.1:${PORT[$name]}/api/tags")
  else
    args=(-s "$WORK/generate.lua" "http://127.0.0.1:${PORT[$name]}/api/generate")
  fi
  out=$("${LOAD_CPU[@]}" wrk -t1 -c50 -d"${WRK_SECONDS}s" "${args[@]}" 2>&1) || true
  echo "$out" >"$WORK/wrk-$workload-$name-$round.txt"
  grep -qE 'Non-2xx|Socket errors' <<<"$out" && echo "  problem: $workload $name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2
  local rps
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  RPS[$workload-$name]+="$rps "
  printf '  %-8s %-5s round %d: %s req/s\n' "$workload" "$name" "$round" "$rps" >&2
}
for workload in tags generate; do
  for name in "${VARIANTS[@]}"; do  # warm-up
    WRK_SECONDS=1 run_wrk "$workload" "$name" 0 2>/dev/null
  done
  for name in "${VARIANTS[@]}"; do RPS[$workload-$name]=""; done
  for round in $(seq "$ROUNDS"); do
    for name in "${VARIANTS[@]}"; do run_wrk "$workload" "$name" "$round"; done
  done
done

# The logs hold one line per request.
sleep 1.5
lines_nginx=$(wc -l <"$WORK/nginx.log")
lines_json=$(wc -l <"$WORK/json.log")
sample_json=$(grep -m1 '/api/generate' "$WORK/json.log" || true)

table() {
  echo
  echo "### Logging and metrics cost ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "- machine: $(nproc) vCPU, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r); $PINNING"
  echo "- command: \`$COMMAND\`"
  echo "- wrk -t1 -c50 -d${WRK_SECONDS}s per round, $ROUNDS rounds alternating off/nginx/json; median req/s"
  echo "- lines written: nginx format $lines_nginx, JSON $lines_json"
  echo
  echo "| workload | off req/s | nginx log + metrics req/s | ratio | JSON log + metrics req/s | ratio |"
  echo "|---|---|---|---|---|---|"
  local w off ng js
  for w in tags generate; do
    # shellcheck disable=SC2086
    off=$(median ${RPS[$w-off]}); ng=$(median ${RPS[$w-nginx]}); js=$(median ${RPS[$w-json]})
    printf '| %s | %s | %s | %.3f | %s | %.3f |\n' \
      "$([[ $w == tags ]] && echo 'GET /api/tags' || echo 'POST /api/generate, 20 tokens')" \
      "$off" "$ng" "$(awk -v a="$ng" -v b="$off" 'BEGIN { print a / b }')" \
      "$js" "$(awk -v a="$js" -v b="$off" 'BEGIN { print a / b }')"
  done
  echo
  echo "A JSON line of the generate run: \`$sample_json\`"
}
table
if (( RECORD )); then table >>"$ROOT/bench/RESULTS.md"; fi
