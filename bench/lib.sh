# Shell helpers shared by the end-to-end benchmark scripts (sourced).
# The script sets WORK (its temp dir) and appends every PID it starts to
# PIDS; cleanup stops them (TERM, then KILL after 5 s) and removes WORK.

PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}

# wait_listening LOGFILE PID REGEX: prints the port from the line that
# matches REGEX (port in the first group), waiting up to 5 s.
wait_listening() {
  local log=$1 pid=$2 regex=$3 port
  for _ in $(seq 100); do
    port=$(sed -nE "s#${regex}#\\1#p" "$log" | head -1)
    if [[ -n "$port" ]]; then echo "$port"; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$(basename "$0"): no listening line from PID $pid; log:" >&2
  cat "$log" >&2
  return 1
}

# µs from a wrk latency figure ("812.00us", "1.23ms", "1.02s").
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /m$/) print n * 60e6; else if (v ~ /s$/) print n * 1e6;
    else print -1 }'
}

# The median of the numeric arguments.
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
