# shellcheck shell=bash disable=SC2034  # sets variables its scripts read
# Shell helpers shared by the end-to-end benchmark scripts (sourced, after
# the script set ROOT). The script makes its temp dir with make_work and
# appends every PID it starts to PIDS; cleanup stops them at exit (TERM,
# then KILL after 5 s) and removes the temp dir (unless KEEP=1).

# Loopback only: never let a proxy variable reroute a client.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY

PIDS=()
PROXY_CPU=(); LOAD_CPU=(); PINNING="unpinned"  # pin_cpus sets them
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if (( ${KEEP:-0} )); then echo "$(basename "$0"): kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# make_work PREFIX: WORK, a new temporary directory; cleanup runs at exit.
make_work() {
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
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

# start_sim ARGS...: ollama-sim with ARGS on 127.0.0.1, a port the kernel
# picks, on the load CPU; its log is $WORK/sim.log. Sets SIM_PID and SIM_PORT.
start_sim() {
  "${LOAD_CPU[@]}" "$SIM" --listen=127.0.0.1:0 "$@" >"$WORK/sim.log" 2>&1 &
  SIM_PID=$!
  PIDS+=("$SIM_PID")
  SIM_PORT=$(wait_listening "$WORK/sim.log" "$SIM_PID" \
    '^ollama-sim listening on http://127\.0\.0\.1:([0-9]+)$')
}

# start_sluice_http NAME ARGS...: sluice --threads=1 with ARGS in front of
# the simulator, serving plain HTTP on 127.0.0.1 (a port the kernel picks),
# on the proxy CPU; its log is $WORK/sluice-NAME.log. Sets STARTED_PID and
# STARTED_PORT. slots=0: generations go to the simulator at once, as
# through nginx and HAProxy (the fair queue has its own bench/fairness.sh).
start_sluice_http() {
  local log="$WORK/sluice-$1.log"
  shift
  "${PROXY_CPU[@]}" "$SLUICE" --threads=1 --listen_http=127.0.0.1:0 --listen_tls= \
    --http_mode=serve --upstream="127.0.0.1:$SIM_PORT slots=0" "$@" >"$log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  STARTED_PORT=$(wait_listening "$log" "$STARTED_PID" \
    '^sluice listening on http://127\.0\.0\.1:([0-9]+) .*')
}

# µs from a wrk latency figure ("812.00us", "1.23ms", "1.02s").
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000;
    else if (v ~ /m$/) print n * 60e6; else if (v ~ /s$/) print n * 1e6;
    else print -1 }'
}

# field KEY LINE: the value of KEY=... in a line of key=value pairs (the
# bench tools' output).
field() { sed -nE "s/.*(^| )$1=([^ ]*).*/\\2/p" <<<"$2"; }

# The median of the numeric arguments; n/a when there are none.
median() {
  printf '%s\n' "$@" | awk '/^-?[0-9.]+([eE][-+]?[0-9]+)?$/' | sort -g |
    awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "n/a" }'
}

# Table cells from medians, n/a where a figure is missing: ratio A B (A/B),
# added A B (A-B, signed), fmt V (rounded), verdict V LIMIT le|ge.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a" || b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "n/a" || b == "n/a") print "n/a"; else printf "%+d", a - b }'; }
fmt() { awk -v v="$1" 'BEGIN { if (v == "n/a" || v == "") print "n/a"; else printf "%.0f", v }'; }
verdict() { awk -v v="$1" -v lim="$2" -v dir="$3" 'BEGIN {
  if (v == "n/a") { print "n/a"; exit }
  ok = (dir == "le") ? (v + 0 <= lim) : (v + 0 >= lim); print ok ? "met" : "NOT met" }'; }

# rss_kb PID..., pss_kb PID...: VmRSS (status) or Pss (smaps_rollup) in kB,
# summed over the PIDs; a process gone counts 0. fd_count PID: its open fds.
proc_kb() {
  local key=$1 file=$2 pid sum=0 v
  shift 2
  for pid in "$@"; do
    v=$(awk -v k="$key:" '$1 == k { print $2 }' "/proc/$pid/$file" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
rss_kb() { proc_kb VmRSS status "$@"; }
pss_kb() { proc_kb Pss smaps_rollup "$@"; }
fd_count() { { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null || true; } | wc -l; }

# use_build_dir NAME [BIN...]: BUILD_DIR made absolute (relative to ROOT);
# SLUICE and SIM in it. Exits 2 naming the first of them and BINs (paths
# under BUILD_DIR) that is not built.
use_build_dir() {
  local name=$1 bin
  shift
  [[ "$BUILD_DIR" = /* ]] || BUILD_DIR="$ROOT/$BUILD_DIR"
  SLUICE="$BUILD_DIR/core/sluice"
  SIM="$BUILD_DIR/tools/ollama-sim/ollama-sim"
  for bin in "$SLUICE" "$SIM" "${@/#/$BUILD_DIR/}"; do
    [[ -x "$bin" ]] || { echo "$name: $bin not built (cmake --build $BUILD_DIR)" >&2; exit 2; }
  done
}

# cost_args NAME HELP_END "$@": the arguments of a cost script,
# [--record] [BUILD_DIR] (default: $BUILD or build-bench); --help prints
# lines 2..HELP_END of the script. Sets RECORD, BUILD_DIR, SLUICE and SIM,
# and exits 2 naming what is wrong when a binary is not built.
cost_args() {
  local name=$1 help_end=$2 arg
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
  use_build_dir "$name"
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

# results_head TITLE [SOURCE_NOTE]: the head of a bench/RESULTS.md section:
# the date and TITLE, the machine, the commit (and whether the tree had
# uncommitted changes) followed by SOURCE_NOTE, and $COMMAND.
results_head() {
  local commit
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
  git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || commit+=" + uncommitted changes"
  echo
  echo "## $(date -u '+%Y-%m-%d %H:%M UTC'): $1"
  echo
  echo "- Machine: nproc=$(nproc), CPU: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1), kernel $(uname -r)"
  echo "- Source: $commit${2:-}"
  echo "- Command: \`$COMMAND\`"
  echo
}

# as_list TEXT: each line of TEXT as a markdown list item.
as_list() {
  local l
  while IFS= read -r l; do echo "- $l"; done <<<"$1"
}

# print_results TITLE [SOURCE_NOTE]: prints TABLE, NOTES and PROBLEMS (the
# script's); with RECORD=1 also appends them to bench/RESULTS.md under
# results_head TITLE [SOURCE_NOTE].
print_results() {
  local results="$ROOT/bench/RESULTS.md"
  echo
  echo "$TABLE"
  echo
  echo "$NOTES"
  echo
  echo "Problems seen: $PROBLEMS"
  (( RECORD )) || return 0
  [[ -f "$results" ]] || printf '# sluice benchmark results\n\nNewest last. Each section: date, machine, exact command, figures.\n' >"$results"
  {
    results_head "$@"
    echo "$TABLE"
    echo
    as_list "$NOTES"
    echo "- Problems seen: $(printf '%s' "$PROBLEMS" | paste -sd';')"
  } >>"$results"
  echo "$(basename "$0"): appended to $results" >&2
}
