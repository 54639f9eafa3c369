#!/usr/bin/env bash
# Runs the attack tests (tests/integration/h2_attack_test.cc and
# attack_suite_test.cc) through ctest and prints their figures as a
# markdown table: the one command that reproduces the attack figures of
# RELIABILITY.md.
#
#   tools/attack.sh [BUILD_DIR]      # default: build
#
# BUILD_DIR must be configured and built (cmake --build BUILD_DIR). Each
# attack prints one "[ attack   ] name=... answer=... ..." line
# (tests/integration/attack_probe.h, AttackLine); the table has one row per
# line:
#   answer        what the attack was answered (each test checks it)
#   idle p99      the probes' p99 over 2 s before the attack
#   control p99   the p99 of the same probes sent during the attack to an
#                 unattacked copy of the stack (what the machine's load
#                 does to a probe at that moment)
#   attack p99    the probes' p99 during the attack, net of the time the
#                 probe's thread, sluice and the simulator were runnable
#                 but not running, the slowest probe left out (one in ~700
#                 meets a stall of the virtual machine even when idle:
#                 attack_probe.h); max: that slowest one; raw: the p99 as
#                 the client saw it
#   bound         max(2 x idle, idle + 5 ms), idle being the larger of the
#                 idle and control p99s (attack_probe.h, P99Bound)
#   CPU s         sluice's utime + stime during the attack
#   RSS +MiB      sluice's peak VmRSS over its baseline (receive ring warm)
#   fds           sluice's descriptors: baseline -> peak
# The latencies are in ms and depend on the machine and on what else runs
# on it: the header says which machine and its load average.
#
# Exit status: ctest's (non-zero when a test failed). Skipped tests are
# listed under the table.
set -u

build="${1:-build}"
if [[ ! -f "$build/CTestTestfile.cmake" ]]; then
  echo "attack.sh: $build is not a configured build directory" >&2
  exit 2
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

start=$(date -u +%s)
ctest --test-dir "$build" -R 'H2Attack|H2RapidReset|H2AckFlood|AttackSuite' \
  --output-on-failure -V >"$log" 2>&1
rc=$?
took=$(( $(date -u +%s) - start ))

echo "## Attack figures"
echo
echo "- Date: $(date -u '+%Y-%m-%d %H:%M UTC'); build: $build; ctest exit status $rc; ${took} s"
echo "- Machine: nproc=$(nproc), $(uname -sr), load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- Command: \`tools/attack.sh $build\`"
echo
echo "| Attack | Answer | idle p99 | control p99 | attack p99 (max, raw) | bound | CPU s | RSS +MiB | fds |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---|"
# ctest -V prefixes each line of a test's output with "N: ".
sed -n 's/^[0-9]*: //; s/^\[ attack   \] //p' "$log" | awk '
  {
    delete f
    for (i = 1; i <= NF; i++) {
      eq = index($i, "=")
      if (eq > 0) f[substr($i, 1, eq - 1)] = substr($i, eq + 1)
    }
    name = f["name"]; gsub("_", " ", name)
    answer = f["answer"]; gsub(",", ", ", answer); gsub(/\|/, "\\|", answer)
    rss = "-"
    if (f["rss_peak_kib"] != "" && f["rss_base_kib"] != "" && f["rss_base_kib"] >= 0) {
      rss = sprintf("%.1f", (f["rss_peak_kib"] - f["rss_base_kib"]) / 1024)
    }
    printf "| %s | %s | %s | %s | %s (%s, %s) | %s | %s | %s | %s -> %s |\n",
      name, answer, f["idle_p99_ms"], f["control_p99_ms"], f["attack_p99_ms"],
      f["attack_max_ms"], f["attack_raw_p99_ms"], f["bound_ms"], f["cpu_s"], rss,
      f["fds_base"], f["fds_peak"]
  }'
echo

# A skip's reason is the line after gtest's "...: Skipped" in the same
# test's output (ctest numbers each test's lines).
skipped="$(awk '
  match($0, /^[0-9]+: /) {
    n = substr($0, 1, RLENGTH - 2); line = substr($0, RLENGTH + 1)
    if (want[n]) { reason[n] = line; want[n] = 0 }
    if (line ~ /: Skipped$/) want[n] = 1
    if (line ~ /^\[  SKIPPED \] [A-Za-z0-9_.\/]+ \(/) {
      split(line, w, " "); name[n] = w[4]
    }
  }
  END { for (n in name) printf "- %s: %s\n", name[n], reason[n] }' "$log" | sort)"
if [[ -n "$skipped" ]]; then
  echo "Skipped:"
  echo
  echo "$skipped"
  echo
fi

failed="$(sed -n 's/^[0-9]*: //; s/^\[  FAILED  \] \([A-Za-z0-9_.]*\) (.*/\1/p' "$log" | sort -u)"
if [[ -n "$failed" ]]; then
  echo "Failed:"
  echo
  while read -r t; do echo "- $t"; done <<<"$failed"
  echo
  echo "(ctest output: rerun with the same command and read its log, or run"
  echo "\`ctest --test-dir $build -R '<name>' --output-on-failure\`.)"
fi
exit "$rc"
