#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in build-fuzz and
# runs them: first once over every committed corpus input (regression
# inputs stay fixed), then each target for SECONDS over a scratch copy of
# its corpus, two at a time. The committed corpus is never written to.
#
# Usage: tools/fuzz.sh [SECONDS_PER_TARGET (default 60)] [TARGET...]
#
# Prints one line per target (runs, coverage, result) and exits non-zero
# when a target crashed, timed out or ran out of memory, naming the input
# that did it. Output, scratch corpora (with the new inputs found) and crash
# files are under build-fuzz/fuzz-out/TARGET/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${1:-60}
shift || true
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds == 0)); then
  echo "usage: tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
all_targets=(fuzz_h1_request fuzz_h2_server fuzz_h1_response fuzz_usage_scanner
             fuzz_request_body fuzz_path fuzz_keys_file fuzz_htpasswd fuzz_flag_values)
targets=("$@")
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  if [[ ! -f tests/fuzz/$t.cc ]]; then
    echo "tools/fuzz.sh: unknown target $t (one of: ${all_targets[*]})" >&2
    exit 2
  fi
done

if [[ -x tools/install-deps.sh ]]; then
  tools/install-deps.sh --test
fi

build=build-fuzz
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DSLUICE_FUZZ=ON \
  -DSLUICE_BUILD_TESTS=OFF -DSLUICE_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build" -j2 "${targets[@]}"

out=$build/fuzz-out
bin=$build/tests/fuzz

# Regression: every committed input once, as files (read-only use).
failed=0
for t in "${targets[@]}"; do
  mkdir -p "$out/$t"
  inputs=(tests/fuzz/corpus/"$t"/*)
  if ! "$bin/$t" -timeout=10 -rss_limit_mb=2048 "${inputs[@]}" >"$out/$t/regression.log" 2>&1; then
    echo "$t: REGRESSION a committed input fails; see $out/$t/regression.log"
    grep -m1 -E "^Running: " <(tac "$out/$t/regression.log") || true
    failed=1
  fi
done
if ((failed)); then
  exit 1
fi
echo "regression: every committed input of ${#targets[@]} target(s) passes"

run_one() {
  local t=$1 dir=$out/$1
  rm -rf "$dir/corpus" "$dir/artifacts"
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp tests/fuzz/corpus/"$t"/* "$dir/corpus/"
  local dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  local rc=0
  "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/artifacts/" "${dict[@]}" "$dir/corpus" >"$dir/fuzz.log" 2>&1 || rc=$?
  echo "$rc" >"$dir/rc"
}

# Two at a time (this machine has 2 CPUs; each fuzzer is one process).
running=0
for t in "${targets[@]}"; do
  if ((running >= 2)); then
    wait -n
    running=$((running - 1))
  fi
  run_one "$t" &
  running=$((running + 1))
done
wait

status=0
for t in "${targets[@]}"; do
  dir=$out/$t
  log=$dir/fuzz.log
  rc=$(cat "$dir/rc" 2>/dev/null || echo 1)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
  if [[ "$rc" == 0 ]]; then
    result=ok
  else
    result="FAILED (exit $rc)"
    status=1
  fi
  printf '%-20s %-16s runs=%-9s cov=%-6s ft=%-6s corpus=%s\n' "$t" "$result" \
    "${runs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}"
  if [[ "$rc" != 0 ]]; then
    found=0
    for f in "$dir"/artifacts/*; do
      [[ -e "$f" ]] || continue
      echo "  input: $f"
      found=1
    done
    ((found)) || echo "  no input saved; see $log"
    grep -m3 -E 'FUZZ_CHECK|ERROR: |runtime error' "$log" | sed 's/^/  /' || true
  fi
done
exit "$status"
