#!/usr/bin/env bash
# Fair sharing of a backend's generation slots: a greedy key against polite
# keys through sluice (slots=2, per-key fair queue), straight to the
# simulator (Ollama's first-come-first-served queue) and through nginx (a
# plain proxy).
#
#   bash bench/fairness.sh [--record] [BUILD_DIR]   (default: build-bench)
#
# Builds nothing: it runs BUILD_DIR's core/sluice and ollama-sim, and
# Debian's /usr/sbin/nginx (the nginx setup is skipped, and said so, when it
# is not installed). One run per setup and variant, each with a fresh
# ollama-sim (--models=llama3 --num_parallel=2: 2 slots, more wait in its
# FIFO as in Ollama) and a fresh proxy:
#   sluice  --threads=1, --upstream="127.0.0.1:PORT slots=2", API keys from
#           a keys file made by `sluice keys add`, rate limits and access
#           log off, the queue flags at their defaults
#   direct  the load straight to the simulator
#   nginx   worker_processes 1, plain HTTP, proxy_buffering off, upstream
#           keepalive; it passes the Authorization header and queues nothing
# The load, bench/fairness_load.py (Python 3 standard library): a greedy
# key keeping GREEDY_STREAMS (20) streamed /api/generate in flight and 4
# polite keys each sending one request at a time, every generation TOKENS
# (40) tokens DELAY_MS (50) ms apart (a 2 s generation), for RUN_SECONDS
# (55) per run, the first WARMUP_SECONDS (10) not measured. Two variants:
#   busy   polite keys send their next request as soon as an answer ends
#   think  polite keys pause POLITE_THINK_MS (5000, drawn 0.5x..1.5x) after
#          each answer, like a chat user reading it
# VARIANTS and SETUPS (env) pick a subset.
#
# Wait = time to first token minus the unqueued time to first token (the
# median of 5 lone 2-token requests through the same path before the load):
# the time the request was held, wherever it was queued (sluice holds the
# response head until a slot is granted; the simulator and nginx send it
# with the first token), so the three setups compare. Wait samples are the
# requests sent in the window but not in its last TAIL_SECONDS (15); one
# still queued at the end counts with its wait so far (a lower bound,
# "censored"). Slot-seconds = first token to the final "done" line, summed
# per key and clipped to the window. A key is backlogged when it had a
# request outstanding at >= 95 % of the 50 ms samples; Jain's index is over
# the backlogged keys' slot-seconds. Utilisation = the simulator's busy_ms
# (/sim/stats) gained in the window / (2 slots x window): the greedy key
# alone keeps both slots wanted all the time, so anything under 1 is a slot
# idle while requests wait; also the longest stretch of samples with a free
# slot while a request of the load had no first token.
#
# Targets (issue: fair sharing of GPU generation slots): polite wait p99
# <= 1 generation (TOKENS x DELAY_MS); Jain's index over backlogged keys
# >= 0.95; slots never idle while requests wait. The first two cannot both
# hold in the busy variant: with 2 slots and 5 keys that always want one,
# a fair share is 0.4 slot each, so a polite key whose one request just
# ended waits for 3 of the other keys' generations to start before its next
# (about 1.5 generations): fairness there costs the 1-generation wait. In
# the think variant the polite keys ask for less than their share and are
# not backlogged (only the greedy key is, so Jain's index is n/a), and the
# wait target is the one that applies. About 6 minutes with the defaults;
# prints markdown tables; --record appends them to bench/RESULTS.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMMAND="bash bench/fairness.sh $*"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
cost_args fairness.sh 56 "$@"
require_tools fairness.sh curl python3 ss

RUN_SECONDS=${RUN_SECONDS:-55}
WARMUP_SECONDS=${WARMUP_SECONDS:-10}
TAIL_SECONDS=${TAIL_SECONDS:-15}
GREEDY_STREAMS=${GREEDY_STREAMS:-20}
TOKENS=${TOKENS:-40}
DELAY_MS=${DELAY_MS:-50}
POLITE_THINK_MS=${POLITE_THINK_MS:-5000}
VARIANTS=${VARIANTS:-busy think}
SETUPS=${SETUPS:-sluice direct nginx}
NGINX=${NGINX:-/usr/sbin/nginx}
for v in RUN_SECONDS WARMUP_SECONDS TAIL_SECONDS GREEDY_STREAMS TOKENS DELAY_MS POLITE_THINK_MS; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || { echo "fairness.sh: $v must be a whole number" >&2; exit 2; }
done
(( RUN_SECONDS > WARMUP_SECONDS + TAIL_SECONDS )) ||
  { echo "fairness.sh: RUN_SECONDS must exceed WARMUP_SECONDS + TAIL_SECONDS" >&2; exit 2; }
ENV_NOTE=""
for v in RUN_SECONDS WARMUP_SECONDS TAIL_SECONDS GREEDY_STREAMS TOKENS DELAY_MS POLITE_THINK_MS VARIANTS SETUPS; do
  [[ -n "$(printenv "$v" || true)" ]] && ENV_NOTE+="$v='${!v}' "
done
COMMAND="$ENV_NOTE$COMMAND"
pin_cpus "sluice or nginx on CPU 0; the simulator and the load client on CPU 1"
make_work sluice-fairness
PROBLEMS=""

# Keys: the same five secrets go to every setup (the simulator and nginx
# ignore them; sluice queues by them).
GREEDY_KEY=$("$SLUICE" keys add greedy --keys_file "$WORK/keys.txt")
POLITE=""
for i in 1 2 3 4; do
  POLITE+="${POLITE:+,}polite$i=$("$SLUICE" keys add "polite$i" --keys_file "$WORK/keys.txt")"
done

# free_port: a loopback TCP port nobody listens on (nginx needs one named).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  (( low > 12000 )) || low=32768
  for _ in $(seq 200); do
    port=$((10000 + RANDOM % (low - 11000)))
    if [[ -z "$(ss -Htan "sport = :$port")" ]]; then echo "$port"; return 0; fi
  done
  echo "fairness.sh: no free port found" >&2
  return 1
}

# start_nginx: a plain proxy to the simulator; sets TARGET_PORT.
start_nginx() {
  local dir="$WORK/nginx" port user=""
  port=$(free_port)
  mkdir -p "$dir/tmp"
  (( $(id -u) == 0 )) && user="user root;"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
$user
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    access_log off;
    keepalive_requests 1000000;
    upstream ollama {
        server 127.0.0.1:$SIM_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Host \$host;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }
    }
}
EOF
  "${PROXY_CPU[@]}" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" \
    >"$dir/stdout.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do
    curl -sf --max-time 1 -o /dev/null "http://127.0.0.1:$port/api/tags" && { TARGET_PORT=$port; return 0; }
    sleep 0.05
  done
  echo "fairness.sh: nginx did not come up on :$port" >&2
  cat "$dir/error.log" >&2
  return 1
}

# start_setup SETUP: a fresh simulator and, for sluice and nginx, a fresh
# proxy in front of it; sets TARGET_PORT.
start_setup() {
  start_sim --models=llama3 --num_parallel=2
  case "$1" in
    direct) TARGET_PORT=$SIM_PORT ;;
    nginx) start_nginx ;;
    sluice)
      local log="$WORK/sluice.log"
      "${PROXY_CPU[@]}" "$SLUICE" --threads=1 --listen_http=127.0.0.1:0 --listen_tls= \
        --http_mode=serve --keys_file="$WORK/keys.txt" --rate_generation=off --rate_api=off \
        --access_log=off --upstream="127.0.0.1:$SIM_PORT slots=2" >"$log" 2>&1 &
      PIDS+=("$!")
      TARGET_PORT=$(wait_listening "$log" "$!" '^sluice listening on http://127\.0\.0\.1:([0-9]+) .*')
      ;;
  esac
}

# stop_all: ends this run's processes (cleanup still covers them).
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}

# run_one VARIANT SETUP: one run; its JSON result in $WORK/VARIANT-SETUP.json.
run_one() {
  local variant=$1 setup=$2 think=0
  [[ "$variant" == think ]] && think=$POLITE_THINK_MS
  start_setup "$setup"
  echo "fairness.sh: $variant $setup (${RUN_SECONDS}s)" >&2
  "${LOAD_CPU[@]}" python3 "$ROOT/bench/fairness_load.py" --port="$TARGET_PORT" \
    --sim_port="$SIM_PORT" --greedy_key="$GREEDY_KEY" --polite_keys="$POLITE" \
    --greedy_streams="$GREEDY_STREAMS" --tokens="$TOKENS" --delay_ms="$DELAY_MS" \
    --think_ms="$think" --seconds="$RUN_SECONDS" --warmup="$WARMUP_SECONDS" \
    --tail="$TAIL_SECONDS" >"$WORK/$variant-$setup.json" ||
    PROBLEMS+="$variant $setup: the load client failed; "
  # Anything sluice logged at warning level or worse.
  if [[ "$setup" == sluice ]] && grep -qE '\[(warn|error|crit|alert|emerg)\]' "$WORK/sluice.log"; then
    PROBLEMS+="$variant sluice log: $(grep -E '\[(warn|error|crit|alert|emerg)\]' "$WORK/sluice.log" | head -3 | tr '\n' ' '); "
  fi
  stop_all
}

for variant in $VARIANTS; do
  for setup in $SETUPS; do
    if [[ "$setup" == nginx && ! -x "$NGINX" ]]; then
      PROBLEMS+="nginx not installed ($NGINX): its setup skipped; "
      continue
    fi
    run_one "$variant" "$setup"
  done
done

# The tables, from the runs' JSON (python: the JSON module).
eval "$(python3 - "$WORK" "$VARIANTS" "$SETUPS" "$TOKENS" "$DELAY_MS" <<'EOF'
import json, os, shlex, sys
work, variants, setups, tokens, delay = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), float(sys.argv[5])
gen_ms = tokens * delay
fmt = lambda v, d=0: "n/a" if v is None else ("%.*f" % (d, v))
summary = ["| variant | setup | polite wait p50 ms | polite wait p99 ms (target <= %.0f) | Jain, backlogged keys (target >= 0.95) | Jain, all keys | slot utilisation (target 1) | longest free slot while waiting, ms | non-200 or failed |" % gen_ms,
           "|---|---|---|---|---|---|---|---|---|"]
per_key = ["| variant | setup | key | busy % | completed | slot-s | share % | wait p50 ms | wait p99 ms | waits (censored) | X-Queue-Wait-Ms p99 |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
problems, details = [], []
for v in variants:
    for s in setups:
        path = os.path.join(work, "%s-%s.json" % (v, s))
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            continue
        r = json.load(open(path))
        errors = sum(k["errors"] for k in r["keys"])
        nb = len(r["backlogged"])
        jb = "n/a (%d backlogged)" % nb if nb < 2 else "%s (%d keys)" % (fmt(r["jain_backlogged"], 3), nb)
        summary.append("| %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
            v, s, fmt(r["polite_wait_p50_ms"]), fmt(r["polite_wait_p99_ms"]), jb,
            fmt(r["jain_all"], 3), fmt(r["utilisation"], 3),
            fmt(r["free_slot_while_waiting_longest_ms"]), errors))
        total = sum(k["slot_s"] for k in r["keys"]) or 1
        for k in r["keys"]:
            per_key.append("| %s | %s | %s | %.0f | %d | %.1f | %.1f | %s | %s | %d (%d) | %s |" % (
                v, s, k["key"], 100 * k["busy"], k["completed"], k["slot_s"], 100 * k["slot_s"] / total,
                fmt(k["wait_p50_ms"]), fmt(k["wait_p99_ms"]), k["waits"], k["censored"],
                fmt(k["queue_wait_p99_ms"])))
        if errors:
            problems.append("%s %s: %d non-200 or failed requests (first: %s)" % (v, s, errors, r["first_error"]))
        if r["polite_censored"]:
            problems.append("%s %s: %d polite requests still queued at the end (their waits are lower bounds)" % (v, s, r["polite_censored"]))
        details.append("%s %s: unqueued TTFT %.1f ms; polite waits %d; %d samples, %d with a free slot while a request waited; generation (first token to done) median %s ms" % (
            v, s, r["unqueued_ttft_ms"], r["polite_waits"], r["samples"],
            r["free_slot_while_waiting_samples"], fmt(r["keys"][0]["gen_median_ms"])))
        if s == "sluice":
            p99 = r["polite_wait_p99_ms"]
            details.append("%s sluice against the targets: polite wait p99 %s ms <= %.0f: %s; Jain over backlogged keys %s; utilisation %s" % (
                v, fmt(p99), gen_ms, "n/a" if p99 is None else ("met" if p99 <= gen_ms else "NOT met"),
                "n/a (fewer than 2 backlogged keys)" if nb < 2 else "%s >= 0.95: %s" % (fmt(r["jain_backlogged"], 3), "met" if r["jain_backlogged"] >= 0.95 else "NOT met"),
                fmt(r["utilisation"], 3)))
print("TABLE=%s" % shlex.quote("\n".join(summary) + "\n\n" + "\n".join(per_key)))
print("DETAILS=%s" % shlex.quote("\n".join(details)))
print("PROBLEMS+=%s" % shlex.quote("".join(p + "; " for p in problems)))
EOF
)"

NOTES="1 ollama-sim (--models=llama3 --num_parallel=2), fresh for each run, with sluice (--threads=1, slots=2, keys file, rate limits and access log off, queue flags at their defaults), straight (direct) or nginx $("$NGINX" -v 2>&1 | sed 's/.*\///') (plain HTTP proxy, proxy_buffering off, upstream keepalive 64) in front; $PINNING
Load: greedy key with $GREEDY_STREAMS streams in flight, 4 polite keys with one request at a time (think variant: a pause of $POLITE_THINK_MS ms, 0.5x..1.5x, after each answer); streamed /api/generate of $TOKENS tokens $DELAY_MS ms apart; ${RUN_SECONDS}s per run, the first ${WARMUP_SECONDS}s not measured; wait samples from requests sent before the last ${TAIL_SECONDS}s
Wait = time to first token minus the unqueued time to first token (median of 5 lone requests through the same path); slot-s = first token to done, clipped to the window; busy % = samples at which the key had a request outstanding (backlogged: >= 95); utilisation = simulator busy_ms / (2 x window)
Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)
$DETAILS"
print_results "Fair sharing of 2 generation slots: a greedy key and 4 polite keys, sluice against the simulator's FIFO and nginx"
