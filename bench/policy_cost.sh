#!/usr/bin/env bash
# What the access policy costs, end to end, and whether a flood of wrong
# bcrypt passwords slows other clients.
#
#   bash bench/policy_cost.sh [--record] [BUILD_DIR]   (default: build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice and ollama-sim. Two sluice
# processes in front of one ollama-sim, each with one worker pinned to CPU 0
# (run one at a time), load on CPU 1:
#
#  off: --auth=none, no rate limits (the relay alone)
#  on:  API key auth (keys file of 1000 keys), htpasswd users, the default
#       route rules, both rate zones (rates set so high they never refuse,
#       but every request is counted), a concurrency cap per key, CORS
#       origins: everything a request passes through.
#
#  (a) wrk -t1 -c50 -d5s GET /api/tags with a valid key, off and on
#      alternating A B A B A B: median req/s and the ratio on/off.
#  (b) a probe (wrk -t1 -c4 -d5s, key auth, GET /api/version) on "on",
#      alone and while wrk -c16 sends Basic credentials of a bcrypt
#      (cost 10) user with a different wrong password each time, alternating
#      3 times: median probe p50/p99 and what the flood got back. The
#      login-attempt limit is off on "on" (--auth_attempts=off), so every
#      guess is checked: (b) measures whether bcrypt checks stall others.
#
# Prints a markdown table; --record appends it to bench/RESULTS.md. About 90 s.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/policy_cost.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args policy_cost.sh 26 "$@"
require_tools policy_cost.sh wrk htpasswd curl

ROUNDS=3
WRK_SECONDS=5
pin_cpus "sluice worker on CPU 0; ollama-sim and wrk on CPU 1 (bcrypt helper threads unpinned, SCHED_IDLE)"

make_work sluice-policy

# Credentials: 1000 keys (the probe uses the last), one bcrypt user.
KEY=""
for i in $(seq 1000); do
  KEY=$("$SLUICE" keys add "client$i" --keys_file "$WORK/keys.txt")
done
htpasswd -cbB -C 10 "$WORK/users" slow right 2>/dev/null

start_sim --threads=1

declare -A PORT
start() {  # NAME ARGS...
  start_sluice_http "$@"
  PORT[$1]=$STARTED_PORT
}
start off --auth=none --rate_generation=off --rate_api=off
start on --keys_file="$WORK/keys.txt" --htpasswd="$WORK/users" \
  --rate_generation='1000000r/s burst=1000000 nodelay' \
  --rate_api='1000000r/s burst=1000000 nodelay' \
  --max_streams_per_key=1000 --cors_origins=https://app.example --auth_attempts=off

for name in off on; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:${PORT[$name]}/api/tags" || true)
  [[ "$code" == 200 ]] || { echo "policy_cost.sh: $name answered $code" >&2; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:${PORT[on]}/api/tags")
[[ "$code" == 401 ]] || { echo "policy_cost.sh: 'on' without a key answered $code" >&2; exit 1; }

declare -A RPS
run_wrk() {  # NAME ROUND
  local out
  out=$("${LOAD_CPU[@]}" wrk -t1 -c50 -d"${WRK_SECONDS}s" -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:${PORT[$1]}/api/tags" 2>&1) || true
  echo "$out" >"$WORK/wrk-$1-$2.txt"
  grep -qE 'Non-2xx|Socket errors' <<<"$out" && echo "  problem: $1: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2
  RPS[$1]+="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out") "
  printf '  wrk %-3s round %d: %s req/s\n' "$1" "$2" "$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")" >&2
}
"${LOAD_CPU[@]}" wrk -t1 -c50 -d1s -H "Authorization: Bearer $KEY" "http://127.0.0.1:${PORT[off]}/api/tags" >/dev/null
"${LOAD_CPU[@]}" wrk -t1 -c50 -d1s -H "Authorization: Bearer $KEY" "http://127.0.0.1:${PORT[on]}/api/tags" >/dev/null
for round in $(seq "$ROUNDS"); do
  run_wrk off "$round"
  run_wrk on "$round"
done

# (b) The flood: a new wrong password per request, so the cache never helps.
cat >"$WORK/flood.lua" <<'LUA'
local b64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
local function enc(data)
  return ((data:gsub('.', function(x)
    local r, b = '', x:byte()
    for i = 8, 1, -1 do r = r .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and '1' or '0') end
    return r
  end) .. '0000'):gsub('%d%d%d?%d?%d?%d?', function(x)
    if #x < 6 then return '' end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == '1' and 2 ^ (6 - i) or 0) end
    return b64:sub(c + 1, c + 1)
  end) .. ({ '', '==', '=' })[#data % 3 + 1])
end
local threads = {}
function setup(thread) table.insert(threads, thread) end
local n = 0
request = function()
  n = n + 1
  return wrk.format('GET', '/api/tags',
    { Authorization = 'Basic ' .. enc('slow:wrong-' .. n .. '-' .. math.random(1, 1e9)) })
end
codes = {}
response = function(status) codes[status] = (codes[status] or 0) + 1 end
done = function()
  local total = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get('codes')) do total[k] = (total[k] or 0) + v end
  end
  local s = ''
  for k, v in pairs(total) do s = s .. k .. '=' .. v .. ' ' end
  io.write('flood statuses: ' .. s .. '\n')
end
LUA
declare -A PP50 PP90 PP99
FLOOD=""
probe() {  # LABEL ROUND
  local out
  out=$("${LOAD_CPU[@]}" wrk -t1 -c4 -d"${WRK_SECONDS}s" --latency -H "Authorization: Bearer $KEY" \
    "http://127.0.0.1:${PORT[on]}/api/version" 2>&1) || true
  echo "$out" >"$WORK/probe-$1-$2.txt"
  PP50[$1]+="$(to_us "$(awk '$1 == "50%" { print $2 }' <<<"$out")") "
  PP90[$1]+="$(to_us "$(awk '$1 == "90%" { print $2 }' <<<"$out")") "
  PP99[$1]+="$(to_us "$(awk '$1 == "99%" { print $2 }' <<<"$out")") "
  printf '  probe %-5s round %d: p50 %s p99 %s\n' "$1" "$2" \
    "$(awk '$1 == "50%" { print $2 }' <<<"$out")" "$(awk '$1 == "99%" { print $2 }' <<<"$out")" >&2
}
for round in $(seq "$ROUNDS"); do
  probe idle "$round"
  "${LOAD_CPU[@]}" wrk -t1 -c16 -d"$((WRK_SECONDS + 2))s" -s "$WORK/flood.lua" \
    "http://127.0.0.1:${PORT[on]}/api/tags" >"$WORK/flood-$round.txt" 2>&1 &
  flood_pid=$!
  sleep 1
  probe flood "$round"
  wait "$flood_pid" || true
  FLOOD+="[$(grep -h 'flood statuses' "$WORK/flood-$round.txt" | sed 's/flood statuses: //; s/ *$//')] "
done

# shellcheck disable=SC2086
{
  r_off=$(median ${RPS[off]}); r_on=$(median ${RPS[on]})
  i50=$(median ${PP50[idle]}); i90=$(median ${PP90[idle]}); i99=$(median ${PP99[idle]})
  f50=$(median ${PP50[flood]}); f90=$(median ${PP90[flood]}); f99=$(median ${PP99[flood]})
}
ratio=$(awk -v a="$r_on" -v b="$r_off" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }')
cost=$(awk -v r="$ratio" 'BEGIN { printf "%.1f", (1 - r) * 100 }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.95) ? "met" : "NOT met" }')
pr=$(awk -v a="$f99" -v b="$i99" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }')
TABLE=$(cat <<EOF
| Measure (median of $ROUNDS, alternating) | policy off | policy on | on / off | target |
|---|---:|---:|---:|---|
| GET /api/tags req/s (wrk -t1 -c50 -d${WRK_SECONDS}s, key auth) | ${r_off%.*} | ${r_on%.*} | $ratio (cost $cost %) | cost <= 5 %: $verdict |

| Probe on "on" (wrk -t1 -c4, key auth, /api/version) | alone | during a wrong-password bcrypt flood | flood / alone |
|---|---:|---:|---:|
| latency p50 (µs) | ${i50%.*} | ${f50%.*} | $(awk -v a="$f50" -v b="$i50" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }') |
| latency p90 (µs) | ${i90%.*} | ${f90%.*} | $(awk -v a="$f90" -v b="$i90" 'BEGIN { printf "%.2f", (b > 0) ? a / b : 0 }') |
| latency p99 (µs) | ${i99%.*} | ${f99%.*} | $pr |
EOF
)
NOTES="Setup: $PINNING; ollama-sim --threads=1. Policy on: 1000 keys, 1 bcrypt user (cost 10), default routes, gen/api zones at 1000000r/s burst=1000000, --max_streams_per_key=1000, --cors_origins.
Per round req/s: off [${RPS[off]% }] on [${RPS[on]% }]; probe p99 µs alone [${PP99[idle]% }] during flood [${PP99[flood]% }].
Flood (wrk -t1 -c16, a new wrong password per request): statuses per round ${FLOOD% }(401: checked and refused; 503: the bounded queue of password checks was full).
Load average after: $(cut -d' ' -f1-3 /proc/loadavg)."

echo; echo "$TABLE"; echo; echo "$NOTES"
if (( RECORD )); then
  {
    results_head "policy cost (bench/policy_cost.sh)"
    echo "$TABLE"
    echo
    as_list "$NOTES"
  } >>"$ROOT/bench/RESULTS.md"
  echo "policy_cost.sh: appended to bench/RESULTS.md" >&2
fi
