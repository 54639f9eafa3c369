# Shell helpers shared by the end-to-end benchmark scripts (sourced, after
# the script set ROOT). The script sets WORK (its temp dir) and appends
# every PID it starts to PIDS; cleanup stops them (TERM, then KILL after
# 5 s) and removes WORK.

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

# cost_args NAME HELP_END "$@": the arguments of a cost script,
# [--record] [BUILD_DIR] (default: $BUILD or build-bench); --help prints
# lines 2..HELP_END of the script. Sets RECORD, BUILD_DIR, SLUICE and SIM,
# and exits 2 naming what is wrong when a binary is not built.
cost_args() {
  local name=$1 help_end=$2 arg bin
  shift 2
  RECORD=0
  BUILD_DIR=${BUILD:-build-bench}
  for arg in "$@"; do
    case "$arg" in
      --record) RECORD=1 ;;
      -h|--help) sed -n "2,${help_end}p" "${BASH_SOURCE[-1]}"; exit 0 ;;
      -*) echo "$name: unknown option $arg" >&2; exit 2 ;;
      *) BUILD_DIR=$arg ;;
    esac
  done
  [[ "$BUILD_DIR" = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
  SLUICE="$BUILD_DIR/core/sluice"
  SIM="$BUILD_DIR/tools/ollama-sim/ollama-sim"
  for bin in "$SLUICE" "$SIM"; do
    [[ -x "$bin" ]] || { echo "$name: $bin not built" >&2; exit 2; }
  done
}

# require_tools NAME TOOL...: exits 2 naming the first tool not installed.
require_tools() {
  local name=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$name: $tool not installed" >&2; exit 2; }
  done
}

# pin_cpus WHAT: the proxy on CPU 0 and the load on CPU 1 when there are
# two CPUs and taskset (PROXY_CPU, LOAD_CPU: command prefixes); PINNING
# says which, WHAT describing the pinned case.
pin_cpus() {
  if command -v taskset >/dev/null && (( $(nproc) >= 2 )); then
    PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1)
    PINNING=$1
  else
    PROXY_CPU=(); LOAD_CPU=(); PINNING="unpinned (fewer than 2 CPUs or no taskset)"
  fi
}
