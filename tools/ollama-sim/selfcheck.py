#!/usr/bin/env python3
"""Hand-run self-check of ollama-sim (python3 standard library only).

Usage: tools/ollama-sim/selfcheck.py path/to/ollama-sim

Starts the simulator on an ephemeral port, exercises every endpoint, the
X-Sim-* controls, the modes, /sim/stats and the WebSocket echo, then a second
one in model mode (--models, loading, eviction, keep_alive, /api/ps), and
prints one line per check. Exits non-zero on the first failure.
"""

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

HOST = "localhost"


def fail(message):
    print("FAIL:", message)
    sys.exit(1)


def check(condition, message):
    if not condition:
        fail(message)
    print("ok  ", message)


class Response:
    def __init__(self, status, headers, body, raw):
        self.status, self.headers, self.body, self.raw = status, headers, body, raw

    def json(self):
        return json.loads(self.body)

    def lines(self):
        return [json.loads(l) for l in self.body.decode().splitlines() if l]


def read_response(sock, buf=b"", head_request=False):
    """Reads one response (Content-Length, chunked, or until EOF)."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError(buf)
        buf += data
    head, buf = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, value = line.split(":", 1)
        headers[name.strip().lower()] = value.strip()
    body = b""
    if head_request:
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            buf += sock.recv(65536)
        body, buf = buf[:n], buf[n:]
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            while b"\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    raise EOFError("eof inside chunked body")
                buf += data
            size_line, buf = buf.split(b"\r\n", 1)
            size = int(size_line, 16)
            while len(buf) < size + 2:
                data = sock.recv(65536)
                if not data:
                    raise EOFError("eof inside chunk")
                buf += data
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    elif status not in (101, 204, 304):
        while True:
            data = sock.recv(65536)
            if not data:
                break
            buf += data
        body, buf = buf, b""
    return Response(status, headers, body, head), buf


def request(port, method, path, body=None, headers=None, host=HOST):
    sock = socket.create_connection(("127.0.0.1", port))
    hdrs = {} if host is None else {"Host": host}
    hdrs.update(headers or {})
    data = body.encode() if isinstance(body, str) else (body or b"")
    if body is not None:
        hdrs["Content-Length"] = str(len(data))
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    sock.sendall(text.encode() + data)
    resp, _ = read_response(sock, head_request=method == "HEAD")
    sock.close()
    return resp


def stats(port):
    return request(port, "GET", "/sim/stats", host=None).json()


def ws_frame(opcode, payload, fin=True):
    mask = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return header + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def check_websocket(port):
    sock = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    handshake = (f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n")
    sock.sendall(handshake.encode() + ws_frame(1, b"early"))
    resp, buf = read_response(sock)
    accept = base64.b64encode(hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    check(resp.status == 101 and resp.headers["sec-websocket-accept"] == accept,
          "websocket handshake and Sec-WebSocket-Accept")
    state = {"buf": buf}

    def exact(n):
        while len(state["buf"]) < n:
            data = sock.recv(1 << 20)
            if not data:
                raise EOFError
            state["buf"] += data
        out, state["buf"] = state["buf"][:n], state["buf"][n:]
        return out

    def frame():
        b0, b1 = exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", exact(8))[0]
        return bool(b0 & 0x80), b0 & 0x0F, exact(n)

    check(frame() == (True, 1, b"early"), "websocket echoes data sent with the handshake")
    for n in (0, 125, 126, 65535, 65536, 200000):
        payload = os.urandom(n)
        data = ws_frame(2, payload)
        for i in range(min(12, len(data))):  # split header and lengths
            sock.sendall(data[i:i + 1])
            time.sleep(0.001)
        sock.sendall(data[12:])
        if frame() != (True, 2, payload):
            fail(f"websocket echo of {n} bytes")
    print("ok   websocket echo, 7/16/64-bit lengths, split across reads")
    sock.sendall(ws_frame(1, b"a", fin=False) + ws_frame(0, b"b"))
    check(frame() == (False, 1, b"a") and frame() == (True, 0, b"b"),
          "websocket fragments echoed")
    sock.sendall(ws_frame(9, b"p"))
    check(frame() == (True, 10, b"p"), "websocket ping -> pong")
    sock.sendall(ws_frame(8, struct.pack("!H", 1000)))
    check(frame() == (True, 8, struct.pack("!H", 1000)) and sock.recv(1) == b"",
          "websocket close echoed, then socket closed")


def check_switch_protocols(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall((f"GET /api/tags HTTP/1.1\r\nHost: {HOST}\r\n"
                  "X-Sim-Switch-Protocols: raw\r\n\r\n").encode())
    resp, buf = read_response(sock)
    check(resp.status == 101 and resp.headers["upgrade"] == "raw",
          "X-Sim-Switch-Protocols answers 101 to a plain request")
    sock.sendall(b"anything")
    while len(buf) < 8:
        buf += sock.recv(64)
    check(buf == b"anything", "X-Sim-Switch-Protocols then echoes raw bytes")
    sock.close()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "build/tools/ollama-sim/ollama-sim"
    proc = subprocess.Popen([binary, "--listen=127.0.0.1:0", "--token_delay_ms=2"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    check(line.startswith("ollama-sim listening on http://127.0.0.1:"), f"banner: {line}")
    port = int(line.rsplit(":", 1)[1])
    try:
        run_checks(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
    check(code == 0, "exit 0 on SIGTERM")
    proc = subprocess.Popen([binary, "--listen=127.0.0.1:0", "--token_delay_ms=1", "--tokens=2",
                             "--models=a,b", "--max_loaded_models=1", "--load_ms=50"],
                            stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline().strip().rsplit(":", 1)[1])
    try:
        check_model_mode(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
    check(code == 0, "model mode: exit 0 on SIGTERM")
    print("ALL PASSED")


def check_model_mode(port):
    names = [m["name"] for m in request(port, "GET", "/api/tags").json()["models"]]
    check(names == ["a:latest", "b:latest"], f"model mode: tags {names}")
    r = request(port, "POST", "/api/generate", '{"model":"c"}')
    check(r.status == 404 and r.json() == {"error": "model 'c' not found"}, "model mode: unknown -> 404")
    r = request(port, "POST", "/v1/embeddings", '{"model":"c"}')
    check(r.status == 404 and r.json()["error"]["type"] == "not_found_error",
          "model mode: OpenAI unknown -> 404")
    started = time.time()
    done = request(port, "POST", "/api/generate", '{"model":"a"}').lines()[-1]
    check(done["load_duration"] == 50_000_000 and time.time() - started >= 0.05,
          "model mode: first use loads (--load_ms)")
    done = request(port, "POST", "/api/generate", '{"model":"a","stream":false}').json()
    check(done["load_duration"] == 0, "model mode: loaded model has load_duration 0")
    request(port, "POST", "/api/chat", '{"model":"b","stream":false,"keep_alive":-1}')
    ps = request(port, "GET", "/api/ps").json()["models"]
    check([m["name"] for m in ps] == ["b:latest"] and ps[0]["expires_at"] > "2300",
          f"model mode: b evicted a, pinned: {ps}")
    models = stats(port)["models"]
    check(models["a:latest"] == {"loads": 1, "requests": 2, "loaded": False, "running": 0, "waiting": 0},
          f"model mode: per-model stats {models}")
    request(port, "POST", "/api/generate", '{"model":"b","stream":false,"keep_alive":0}')
    check(request(port, "GET", "/api/ps").json()["models"] == [], "model mode: keep_alive 0 unloads")
    r = request(port, "POST", "/v1/embeddings",
                '{"model":"a","input":["x","y"],"encoding_format":"base64"}').json()
    vec = struct.unpack("<8f", base64.b64decode(r["data"][1]["embedding"]))
    check(len(r["data"]) == 2 and vec[0] == 0.125, "embeddings: array input, base64")


def run_checks(port):
    request(port, "POST", "/sim/reset", "", host=None)
    r = request(port, "GET", "/")
    check(r.status == 200 and r.body == b"Ollama is running", "GET /")
    r = request(port, "HEAD", "/")
    check(r.status == 200 and r.headers["content-length"] == "17", "HEAD /")
    check(request(port, "GET", "/api/version").json() == {"version": "0.0.0-sim"}, "version")
    r = request(port, "GET", "/api/tags")
    check(len(r.json()["models"]) == 2 and 300 <= len(r.body) <= 600, "tags")
    check(request(port, "GET", "/api/ps").json()["models"] == [], "ps")
    check(request(port, "POST", "/api/show", '{"model":"x"}').json()["details"]["format"] == "gguf", "show")
    check(request(port, "GET", "/api/tags", host="evil.com").status == 403, "Host evil.com -> 403")
    check(request(port, "GET", "/api/tags", host=None).status == 403, "no Host -> 403")
    for h in ("localhost:1", "127.0.0.1", "[::1]:5", "0.0.0.0:80", "a.localhost"):
        if request(port, "GET", "/api/tags", host=h).status != 200:
            fail(f"Host {h} allowed")
    print("ok   allowed Host names")

    r = request(port, "POST", "/api/generate", '{"model": "m1"}', {"X-Sim-Tokens": "3"})
    objs = r.lines()
    check(r.headers["content-type"] == "application/x-ndjson" and len(objs) == 4 and
          [o["response"] for o in objs[:3]] == ["tok1 ", "tok2 ", "tok3 "] and
          objs[3]["done"] and objs[3]["eval_count"] == 3 and objs[0]["model"] == "m1" and
          all(isinstance(o["sim_t_us"], int) for o in objs), "generate stream")
    r = request(port, "POST", "/api/chat", '{"model":"m2","stream":false}', {"X-Sim-Tokens": "2"})
    check(r.json()["message"]["content"] == "tok1 tok2 " and "content-length" in r.headers,
          "chat stream:false")
    r = request(port, "POST", "/v1/chat/completions",
                '{"model":"o","stream":true,"stream_options":{"include_usage":true}}',
                {"X-Sim-Tokens": "2"})
    events = [e for e in r.body.decode().split("\n\n") if e]
    check(r.headers["content-type"] == "text/event-stream" and len(events) == 5 and
          events[-1] == "data: [DONE]" and
          json.loads(events[2][6:])["choices"][0]["finish_reason"] == "stop" and
          json.loads(events[3][6:])["usage"]["completion_tokens"] == 2, "openai stream + usage")
    r = request(port, "POST", "/v1/chat/completions", '{"model":"o"}', {"X-Sim-Tokens": "2"})
    check(r.json()["object"] == "chat.completion" and r.json()["usage"]["total_tokens"] == 10,
          "openai non-stream")
    check(request(port, "POST", "/v1/completions", '{"model":"o"}').json()["object"] == "text_completion",
          "openai completions")
    check(len(request(port, "POST", "/v1/embeddings", '{}').json()["data"][0]["embedding"]) == 8,
          "openai embeddings")
    check(request(port, "GET", "/v1/models").json()["object"] == "list", "openai models")
    check(len(request(port, "POST", "/api/embed", '{}').json()["embeddings"][0]) == 8, "embed")
    check(len(request(port, "POST", "/api/embeddings", '{}').json()["embedding"]) == 8, "embeddings")
    pull = request(port, "POST", "/api/pull", '{"name":"x"}').lines()
    check(pull[0]["status"] == "pulling manifest" and pull[-1]["status"] == "success" and
          any("completed" in o for o in pull), "pull stream")
    check(request(port, "POST", "/api/pull", '{"name":"x","stream":false}').json()["status"] == "success",
          "pull stream:false")
    r = request(port, "DELETE", "/api/delete", '{"model":"x"}')
    check(r.status == 200 and r.body == b"", "delete")
    check(request(port, "DELETE", "/api/delete").status == 400, "delete without name -> 400")
    for p in ("/api/push", "/api/create", "/api/copy"):
        if request(port, "POST", p, "{}").json() != {"status": "success"}:
            fail(p)
    print("ok   push/create/copy")
    check(request(port, "GET", "/nope").status == 404, "404")
    check(request(port, "GET", "/api/generate").status == 405, "405")
    check(request(port, "GET", "/", headers={"X-Sim-Mode": "busy"}).status == 503, "busy")

    # Timing: ttft then token delay.
    t0 = time.time()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Sim-TTFT-Ms: 200\r\n"
                 b"X-Sim-Tokens: 2\r\nX-Sim-Token-Delay-Ms: 100\r\nContent-Length: 2\r\n\r\n{}")
    resp, _ = read_response(sock)
    sock.close()
    objs = resp.lines()
    gaps = [(b["sim_t_us"] - a["sim_t_us"]) / 1000 for a, b in zip(objs, objs[1:])]
    check(abs(objs[0]["sim_t_us"] / 1e6 - t0 - 0.2) < 0.05 and all(abs(g - 100) < 20 for g in gaps),
          f"ttft 200 ms then 100 ms gaps ({gaps})")

    # Close-After: two tokens then EOF without the terminating chunk.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nX-Sim-Close-After: 2\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
    try:
        read_response(sock)
        fail("close-after should end the stream early")
    except EOFError:
        print("ok   X-Sim-Close-After ends the stream without the last chunk")
    sock.close()

    # Reset-After: the headers and two tokens, then ECONNRESET (not a FIN).
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Sim-Reset-After: 2\r\n"
                 b"X-Sim-Token-Delay-Ms: 50\r\nContent-Length: 2\r\n\r\n{}")
    received, ending = b"", "timeout"
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                ending = "FIN"
                break
            received += data
    except ConnectionResetError:
        ending = "RST"
    except socket.timeout:
        pass
    sock.close()
    check(ending == "RST" and b"200 OK" in received and received.count(b"tok") == 2 and
          not received.endswith(b"0\r\n\r\n"),
          f"X-Sim-Reset-After: 2 sends two tokens then resets (ended by {ending})")
    check(request(port, "POST", "/api/generate", "{}", {"X-Sim-Reset-After": "x"}).status == 400,
          "bad X-Sim-Reset-After -> 400")

    # Abort detection.
    request(port, "POST", "/sim/reset", "", host=None)
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Sim-Token-Delay-Ms: 1000\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
    sock.recv(100)
    closed_at = time.time()
    sock.close()
    time.sleep(0.05)
    s = stats(port)
    check(s["aborted_streams"] == 1 and abs(s["last_abort_us"] / 1e6 - closed_at) < 0.02 and
          s["opened"] == 2 and s["closed"] == 1 and s["requests"] == 1,
          f"abort noticed promptly, stats {s}")

    # Pipelining answered in order.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nX-Sim-Tokens: 2\r\n"
                 b"Content-Length: 2\r\n\r\n{}GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
    first, rest = read_response(sock)
    second, _ = read_response(sock, rest)
    sock.close()
    check(first.lines()[-1]["done"] and second.json()["version"] == "0.0.0-sim", "pipelining in order")

    # Garbage mode.
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Sim-Mode: garbage\r\n\r\n")
    data = b""
    while True:
        d = sock.recv(4096)
        if not d:
            break
        data += d
    check(not data.startswith(b"HTTP/"), "garbage mode")
    check_websocket(port)
    check_switch_protocols(port)


if __name__ == "__main__":
    main()
