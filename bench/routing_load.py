#!/usr/bin/env python3
"""A team's mixed generation load for bench/routing.sh.

CLIENTS threads, each on its own keepalive HTTP/1.1 connection, send
sequential streamed POST /api/generate requests to 127.0.0.1:PORT, each
naming a model drawn from a skewed mix with a fixed seed (the same
sequence for every run with the same seed). The simulator is asked for
TOKENS tokens DELAY_MS apart per generation (X-Sim-Tokens,
X-Sim-Token-Delay-Ms).

Time to first token (TTFT): from sending the request to reading the first
NDJSON line with a non-empty "response". A request counts as completed
when its final "done" line arrived with status 200; a non-200 answer is an
error; a request cut off by the wall-clock cap (--max_seconds) or a socket
failure counts as incomplete. No request starts after the cap, so a run
ends within about --max_seconds.

Prints one line of key=value pairs:
  completed= errors= incomplete= ttft_p50_ms= ttft_p99_ms= ttft_max_ms=
  wall_s= per_model=m1:N,m2:N,...   (completed requests per model)
"""

import argparse
import http.client
import json
import random
import socket
import threading
import time


def parse_mix(text):
    """'m1:50,m2:30' -> ([m1, m2], [50.0, 30.0])."""
    models, weights = [], []
    for part in text.split(","):
        name, _, weight = part.partition(":")
        models.append(name)
        weights.append(float(weight or 1))
    return models, weights


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.completed = 0
        self.errors = 0
        self.incomplete = 0
        self.ttft_s = []
        self.per_model = {}


def one_request(conn, model, args, deadline):
    """Sends one generation; returns (outcome, ttft_s)."""
    body = json.dumps({"model": model, "prompt": "Why is the sky blue?", "stream": True})
    headers = {
        "Content-Type": "application/json",
        "X-Sim-Tokens": str(args.tokens),
        "X-Sim-Token-Delay-Ms": str(args.delay_ms),
    }
    start = time.monotonic()
    conn.timeout = max(0.05, deadline - start)
    if conn.sock is not None:
        conn.sock.settimeout(conn.timeout)
    conn.request("POST", "/api/generate", body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        return "error", None
    ttft = None
    done = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("wall-clock cap")
        conn.sock.settimeout(remaining)
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        obj = json.loads(line)
        if ttft is None and obj.get("response"):
            ttft = time.monotonic() - start
        if obj.get("done"):
            done = True
    resp.read()
    if not done or ttft is None:
        return "incomplete", None
    return "completed", ttft


def client(index, args, models, weights, deadline, totals):
    rng = random.Random(args.seed * 1000 + index)
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.max_seconds)
    for _ in range(args.requests):
        if time.monotonic() >= deadline:
            break
        model = rng.choices(models, weights)[0]
        try:
            outcome, ttft = one_request(conn, model, args, deadline)
        except (OSError, http.client.HTTPException, ValueError):
            outcome, ttft = "incomplete", None
            conn.close()
        with totals.lock:
            if outcome == "completed":
                totals.completed += 1
                totals.ttft_s.append(ttft)
                totals.per_model[model] = totals.per_model.get(model, 0) + 1
            elif outcome == "error":
                totals.errors += 1
            else:
                totals.incomplete += 1
        if args.think_ms > 0:
            time.sleep(rng.uniform(0, args.think_ms) / 1000)
    conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="per client")
    parser.add_argument("--mix", default="m1:50,m2:30,m3:15,m4:5")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--delay_ms", type=float, default=20)
    parser.add_argument("--think_ms", type=float, default=0,
                        help="random pause 0..think_ms after each request")
    parser.add_argument("--max_seconds", type=float, default=75)
    parser.add_argument("--ttft_out", help="append each completed request's TTFT (ms) here")
    args = parser.parse_args()

    models, weights = parse_mix(args.mix)
    totals = Totals()
    start = time.monotonic()
    deadline = start + args.max_seconds
    threads = [
        threading.Thread(target=client, args=(i, args, models, weights, deadline, totals))
        for i in range(args.clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start

    ttft = sorted(totals.ttft_s)
    if args.ttft_out:
        with open(args.ttft_out, "a") as out:
            out.writelines("%.3f\n" % (v * 1000) for v in totals.ttft_s)

    def ms(v):
        return "n/a" if v is None else "%.1f" % (v * 1000)

    per_model = ",".join("%s:%d" % (m, totals.per_model.get(m, 0)) for m in models)
    print("completed=%d errors=%d incomplete=%d ttft_p50_ms=%s ttft_p99_ms=%s ttft_max_ms=%s "
          "wall_s=%.1f per_model=%s" %
          (totals.completed, totals.errors, totals.incomplete, ms(percentile(ttft, 50)),
           ms(percentile(ttft, 99)), ms(ttft[-1] if ttft else None), wall, per_model))


if __name__ == "__main__":
    main()
