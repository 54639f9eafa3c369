#!/usr/bin/env python3
"""A greedy key and polite keys sharing one backend's slots, for bench/fairness.sh.

One greedy key keeps --greedy_streams (20) streamed POST /api/generate in
flight, each on its own keepalive HTTP/1.1 connection that sends the next
request as soon as the previous one ends. Each of the polite keys (one per
--polite_keys entry) sends one request at a time on its own connection,
pausing --think_ms (uniform 0.5x..1.5x, fixed seed) between the end of one
answer and the next request when it is above 0. Every request carries its
key as "Authorization: Bearer KEY" and asks the simulator for --tokens
tokens --delay_ms apart (X-Sim-Tokens, X-Sim-Token-Delay-Ms).

Times (seconds from the start of the load, t0):
  sent      the request was written
  first     the first NDJSON line with a non-empty "response" was read
  end       the final "done" line was read
Before the load, --probes requests of 2 tokens are sent one at a time with
nothing else running (polite key 1): their median time to first token is
the unqueued TTFT, what a request pays when a slot is free.

Per key, over the measured window [--warmup, --seconds]:
  completed   generations whose "done" line arrived in the window
  slot_s      sum over the key's generations of [first, end] clipped to the
              window: the slot time the key got (a generation still
              running at the end counts up to the end)
  wait        time to first token minus the unqueued TTFT, for requests
              sent in [--warmup, --seconds - --tail]; the time a request
              spent queued (in sluice, in nginx or in the simulator's FIFO,
              whichever holds it). A request with no first token by
              --seconds counts with its wait so far (a lower bound) and is
              reported as censored
  busy        the fraction of --sample_ms samples in the window at which the
              key had a request sent and not yet ended
A key is backlogged when busy >= 0.95. Jain's index J = (sum x)^2 / (n sum
x^2) is taken over the slot_s of the backlogged keys (and, for reference,
over all keys).

A sampler reads the simulator's GET /sim/stats every --sample_ms: the
model's running count and busy_ms. Utilisation = busy_ms gained in the
window / (--slots x window). A sample where fewer than --slots generations
run while some request of the load has been sent and has no first token yet
is a "free slot while waiting" sample; the longest run of consecutive such
samples is reported in ms (a slot handed over takes well under a sample,
so a run of one sample is a handover caught in the act).

Non-200 answers are errors; the status and body head of the first one are
printed on stderr. At --seconds every connection is closed (requests still
queued are cancelled). Prints one JSON object on stdout.
"""

import argparse
import http.client
import json
import random
import socket
import statistics
import sys
import threading
import time


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[int(rank) - 1]


def jain(values):
    if not values or sum(v * v for v in values) == 0:
        return None
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values))


class Record:
    __slots__ = ("key", "sent", "first", "end", "status", "queue_wait_ms")

    def __init__(self, key, sent):
        self.key = key
        self.sent = sent
        self.first = None
        self.end = None
        self.status = None
        self.queue_wait_ms = None


class Load:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.records = []
        self.t0 = None
        self.stop_at = None
        self.first_error = None

    def now(self):
        return time.monotonic() - self.t0

    def waiting_count(self):
        """Requests sent that have no first token yet and no answer."""
        with self.lock:
            return sum(1 for r in self.records
                       if r.first is None and r.end is None and r.status in (None, 200))


def one_request(conn, key, args, load, rec, tokens, deadline):
    """Sends one generation, filling rec; raises on a socket failure."""
    body = json.dumps({"model": args.model, "prompt": "Why is the sky blue?", "stream": True})
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer " + key,
        "X-Sim-Tokens": str(tokens),
        "X-Sim-Token-Delay-Ms": str(args.delay_ms),
    }
    remaining = max(0.05, deadline - time.monotonic())
    conn.timeout = remaining
    if conn.sock is not None:
        conn.sock.settimeout(remaining)
    conn.request("POST", "/api/generate", body=body, headers=headers)
    resp = conn.getresponse()
    rec.status = resp.status
    wait_header = resp.getheader("X-Queue-Wait-Ms")
    if wait_header is not None:
        rec.queue_wait_ms = float(wait_header)
    if resp.status != 200:
        head = resp.read()[:200]
        with load.lock:
            if load.first_error is None:
                load.first_error = "%d %r" % (resp.status, head)
        rec.end = load.now()
        return
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
        if rec.first is None and obj.get("response"):
            rec.first = load.now()
        if obj.get("done"):
            rec.end = load.now()
    resp.read()


def client(load, key, think_ms, seed):
    args = load.args
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=args.seconds)
    deadline = load.stop_at
    while time.monotonic() < deadline:
        rec = Record(key, load.now())
        with load.lock:
            load.records.append(rec)
        try:
            one_request(conn, key, args, load, rec, args.tokens, deadline)
        except (OSError, http.client.HTTPException, ValueError) as e:
            conn.close()
            if time.monotonic() >= deadline:
                break
            # A failure before the cap: an error; reconnect.
            rec.status, rec.end = -1, load.now()
            with load.lock:
                if load.first_error is None:
                    load.first_error = "socket: %r" % e
            time.sleep(0.05)
        if think_ms > 0:
            pause = rng.uniform(0.5 * think_ms, 1.5 * think_ms) / 1000
            time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
    conn.close()


def sim_model_stats(conn, model):
    conn.request("GET", "/sim/stats")
    resp = conn.getresponse()
    stats = json.loads(resp.read())
    models = stats.get("models", {})
    m = models.get(model) or models.get(model + ":latest") or {}
    return m.get("running", 0), m.get("busy_ms", 0)


def sampler(load, samples):
    args = load.args
    conn = http.client.HTTPConnection("127.0.0.1", args.sim_port, timeout=5)
    while time.monotonic() < load.stop_at:
        t = load.now()
        try:
            running, busy_ms = sim_model_stats(conn, args.model)
        except (OSError, http.client.HTTPException, ValueError):
            conn.close()
            time.sleep(args.sample_ms / 1000)
            continue
        samples.append((t, running, busy_ms, load.waiting_count(), busy_keys(load)))
        time.sleep(args.sample_ms / 1000)
    conn.close()


def busy_keys(load):
    """Keys with a request sent and not yet ended."""
    with load.lock:
        return frozenset(r.key for r in load.records if r.end is None)


def probe(args):
    """Median time to first token of --probes lone 2-token requests (s)."""
    key = args.polite_keys[0][1]
    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
    ttfts = []
    tmp = Load(args)
    tmp.t0 = time.monotonic()
    for _ in range(args.probes):
        rec = Record("probe", tmp.now())
        one_request(conn, key, args, tmp, rec, 2, time.monotonic() + 10)
        if rec.status != 200 or rec.first is None:
            sys.exit("fairness_load: probe failed: %s" % tmp.first_error)
        ttfts.append(rec.first - rec.sent)
        time.sleep(0.05)
    conn.close()
    return statistics.median(ttfts)


def key_summary(name, recs, args, base, busy_fraction):
    w0, w1 = args.warmup, args.seconds
    completed = sum(1 for r in recs if r.status == 200 and r.end is not None and w0 <= r.end <= w1)
    slot_s = 0.0
    durations = []
    for r in recs:
        if r.first is None:
            continue
        end = r.end if r.end is not None else w1
        slot_s += max(0.0, min(end, w1) - max(r.first, w0))
        if r.end is not None and r.status == 200:
            durations.append(r.end - r.first)
    waits, censored, qwait = [], 0, []
    for r in recs:
        if not (w0 <= r.sent <= w1 - args.tail) or r.status not in (None, 200):
            continue
        if r.first is not None:
            waits.append(max(0.0, r.first - r.sent - base))
        else:
            waits.append(max(0.0, w1 - r.sent - base))
            censored += 1
        if r.queue_wait_ms is not None:
            qwait.append(r.queue_wait_ms)
    waits.sort()
    qwait.sort()
    errors = sum(1 for r in recs if r.status is not None and r.status != 200)
    ms = lambda v: None if v is None else round(v * 1000, 1)
    return {
        "key": name, "requests": len(recs), "completed": completed, "errors": errors,
        "slot_s": round(slot_s, 2), "waits": len(waits), "censored": censored,
        "wait_p50_ms": ms(percentile(waits, 50)), "wait_p99_ms": ms(percentile(waits, 99)),
        "wait_max_ms": ms(waits[-1] if waits else None),
        "queue_wait_p50_ms": percentile(qwait, 50), "queue_wait_p99_ms": percentile(qwait, 99),
        "busy": round(busy_fraction, 3),
        "gen_median_ms": ms(statistics.median(durations)) if durations else None,
        "_waits": waits,
    }


def idle_summary(samples, args):
    w0, w1 = args.warmup, args.seconds
    inside = [s for s in samples if w0 <= s[0] <= w1]
    util = None
    if len(inside) >= 2:
        (ta, _, ba, _, _), (tb, _, bb, _, _) = inside[0], inside[-1]
        util = (bb - ba) / (args.slots * (tb - ta) * 1000)
    free_waiting = 0
    longest = run = 0
    for _, running, _, waiting, _ in inside:
        if running < args.slots and waiting > 0:
            free_waiting += 1
            run += 1
            longest = max(longest, run)
        else:
            run = 0
    return inside, util, free_waiting, longest


def summarize(load, samples, base):
    args = load.args
    names = ["greedy"] + [name for name, _ in args.polite_keys]
    inside, util, free_waiting, longest = idle_summary(samples, args)
    keys = []
    for name in names:
        recs = [r for r in load.records if r.key == name]
        busy = (sum(1 for s in inside if name in s[4]) / len(inside)) if inside else 0.0
        keys.append(key_summary(name, recs, args, base, busy))
    backlogged = [k for k in keys if k["busy"] >= 0.95]
    polite_waits = sorted(w for k in keys[1:] for w in k.pop("_waits"))
    keys[0].pop("_waits")
    ms = lambda v: None if v is None else round(v * 1000, 1)
    jb = jain([k["slot_s"] for k in backlogged])
    ja = jain([k["slot_s"] for k in keys])
    return {
        "unqueued_ttft_ms": round(base * 1000, 2),
        "generation_ms": args.tokens * args.delay_ms,
        "window_s": args.seconds - args.warmup,
        "keys": keys,
        "polite_waits": len(polite_waits),
        "polite_censored": sum(k["censored"] for k in keys[1:]),
        "polite_wait_p50_ms": ms(percentile(polite_waits, 50)),
        "polite_wait_p99_ms": ms(percentile(polite_waits, 99)),
        "backlogged": [k["key"] for k in backlogged],
        "jain_backlogged": None if jb is None else round(jb, 4),
        "jain_all": None if ja is None else round(ja, 4),
        "utilisation": None if util is None else round(util, 4),
        "samples": len(inside),
        "free_slot_while_waiting_samples": free_waiting,
        "free_slot_while_waiting_longest_ms": longest * args.sample_ms,
        "first_error": load.first_error,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="where the load goes")
    parser.add_argument("--sim_port", type=int, required=True, help="the simulator (/sim/stats)")
    parser.add_argument("--model", default="llama3")
    parser.add_argument("--greedy_key", required=True)
    parser.add_argument("--polite_keys", required=True, help="NAME=KEY,NAME=KEY,...")
    parser.add_argument("--greedy_streams", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay_ms", type=float, default=50)
    parser.add_argument("--think_ms", type=float, default=0,
                        help="polite keys: pause 0.5x..1.5x this after each answer")
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=55, help="load duration")
    parser.add_argument("--warmup", type=float, default=10, help="not measured")
    parser.add_argument("--tail", type=float, default=15,
                        help="requests sent this close to the end have no wait sample")
    parser.add_argument("--sample_ms", type=float, default=50)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.polite_keys = [tuple(p.split("=", 1)) for p in args.polite_keys.split(",")]

    base = probe(args)
    load = Load(args)
    load.t0 = time.monotonic()
    load.stop_at = load.t0 + args.seconds
    samples = []
    threads = [threading.Thread(target=sampler, args=(load, samples))]
    for i in range(args.greedy_streams):
        threads.append(threading.Thread(target=client, args=(load, args.greedy_key, 0, i)))
    for i, (name, key) in enumerate(args.polite_keys):
        threads.append(threading.Thread(target=client,
                                        args=(load, key, args.think_ms, args.seed * 100 + i)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Records name the key by its secret; report them by name.
    by_secret = {args.greedy_key: "greedy"}
    by_secret.update({key: name for name, key in args.polite_keys})
    for r in load.records:
        r.key = by_secret.get(r.key, r.key)
    samples = [(t, run, busy, wait, frozenset(by_secret.get(k, k) for k in ks))
               for t, run, busy, wait, ks in samples]
    result = summarize(load, samples, base)
    if result["first_error"]:
        print("fairness_load: first non-200 answer: " + result["first_error"], file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
