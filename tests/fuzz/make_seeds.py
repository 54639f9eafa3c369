#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets: tests/fuzz/corpus/<target>/.

Run from anywhere: python3 tests/fuzz/make_seeds.py. Seeds are named
seed-*; files with other names in a corpus directory (regression inputs,
crash-*) are left alone. The generated files are committed, so the fuzzers
need nothing but the tree.

The split-based targets (h1_request, h1_response, usage_scanner, h2_server)
read control bytes first; see each target's header comment.
"""

import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- fuzz_h1_request: [shape, cut1, cut2] + request bytes. shape bit 7:
# default (large) limits; shape % 3 + 1 pieces.
BIG = 0x80


def h1req(name, text, shape=BIG, cut1=0x40, cut2=0xa0):
    write("fuzz_h1_request", name, bytes([shape, cut1, cut2]) + text.encode())


h1req("get", "GET /api/tags HTTP/1.1\r\nHost: localhost:11434\r\nUser-Agent: curl/8\r\n"
      "Accept: */*\r\n\r\n")
h1req("post-content-length",
      "POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
      "Content-Length: 18\r\n\r\n{\"model\":\"llama3\"}", shape=BIG | 2)
h1req("post-chunked-trailers",
      "POST /api/generate HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n", shape=BIG | 1)
h1req("pipelined",
      "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
      shape=BIG | 2, cut1=0x20, cut2=0x80)
h1req("upgrade",
      "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\x81\x05hello")
h1req("expect-continue",
      "PUT /api/blobs/sha256:00 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
      "Content-Length: 3\r\n\r\nabc")
h1req("absolute-form", "GET http://example.com:8080/api/tags?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
h1req("options-star", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
h1req("http10-keepalive",
      "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n", shape=BIG | 1)
h1req("head", "HEAD /api/version HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-foo\r\n"
      "X-Foo: bar\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
h1req("small-limits-header", "GET /" + "a" * 200 + " HTTP/1.1\r\nHost: a\r\nX-Long: "
      + "b" * 200 + "\r\n\r\n", shape=0x00)
h1req("small-limits-body", "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 150\r\n\r\n"
      + "c" * 150, shape=0x01)
h1req("small-limits-chunked", "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
      "40\r\n" + "d" * 64 + "\r\n40\r\n" + "e" * 64 + "\r\n0\r\n\r\n", shape=0x02)
h1req("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n")
h1req("duplicate-host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
h1req("te-and-cl", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
h1req("te-http10", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
h1req("connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
h1req("bad-expect", "POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n")
h1req("http2-version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n")

# --- fuzz_h1_response: [shape, cut1, cut2] + response. shape bit 7: HEAD
# request, bit 6: HTTP/1.0 client, bit 5: client asked to close.


def h1resp(name, text, shape=0x02, cut1=0x30, cut2=0xb0):
    write("fuzz_h1_response", name, bytes([shape, cut1, cut2]) + text.encode())


h1resp("content-length", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
       "Content-Length: 11\r\n\r\n{\"ok\":true}")
h1resp("chunked-ext-trailers",
       "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
       "1a;name=value\r\n{\"response\":\"Hi\",\"done\":0}\r\n"
       "0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n")
h1resp("204", "HTTP/1.1 204 No Content\r\nDate: x\r\n\r\n")
h1resp("304", "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\nContent-Length: 10\r\n\r\n")
h1resp("head-with-length", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", shape=0x80)
h1resp("close-delimited", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", shape=0x41)
h1resp("http10-response", "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold style")
h1resp("100-then-200", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
h1resp("103-then-200", "HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
       "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
h1resp("101-upgrade", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
       "Connection: Upgrade\r\n\r\n\x81\x02hi")
h1resp("left-over", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\n\r\n")
h1resp("obs-fold", "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 0\r\n\r\n")
h1resp("truncated", "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
h1resp("no-reason", "HTTP/1.1 404 \r\nContent-Length: 0\r\nConnection: close\r\n\r\n", shape=0x20)
h1resp("sse", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
       "\r\n10\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n", shape=0x01)

# --- fuzz_usage_scanner: [shape, cut1, cut2] + body. shape bits 2-3: 0
# NDJSON, 1 SSE, 2 JSON, 3 request.
NDJSON, SSE, JSON, REQUEST = 0x00, 0x04, 0x08, 0x0c


def usage(name, text, mode, pieces=2, cut1=0x55, cut2=0xaa):
    write("fuzz_usage_scanner", name, bytes([mode | pieces, cut1, cut2]) + text.encode())


usage("ndjson-generate",
      '{"model":"llama3","created_at":"x","response":"Hel","done":false}\n'
      '{"model":"llama3","response":"lo","done":false}\n'
      '{"model":"llama3","response":"","done":true,"prompt_eval_count":26,"eval_count":290}\n',
      NDJSON)
usage("ndjson-chat",
      '{"model":"qwen","message":{"role":"assistant","content":"Hi","thinking":"hm"},"done":false}\r\n'
      '{"model":"qwen","message":{"role":"assistant","content":""},"done":true,'
      '"prompt_eval_count":1e1,"eval_count":-3}', NDJSON)
usage("ndjson-broken", '{"response":"a"\n{"response":tru}\n[1,2,{"response":"x"}]\n{"response":"\\u00e9\\ud83d\\ude00"}\n',
      NDJSON)
usage("sse-openai",
      ': comment\r\nevent: message\r\ndata: {"id":"1","model":"gpt-4o","choices":[{"index":0,'
      '"delta":{"role":"assistant"}}]}\r\n\r\n'
      'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n'
      'data: {"choices":[{"delta":{"reasoning":"r"}}]}\n\n'
      'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}\n\n'
      'data: [DONE]\n\n', SSE)
usage("sse-multiline-data", 'data: {"choices":\ndata: [{"text":"x"}]}\n\ndata:{"model":"m"}\r\r', SSE)
usage("json-openai",
      '{"id":"c","object":"chat.completion","model":"llama3.2","choices":[{"index":0,'
      '"message":{"role":"assistant","content":"Hello!"},"finish_reason":"stop"}],'
      '"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}', JSON)
usage("json-ollama", ' {"model":"a\\"b\\\\c\\u0041","response":"x","prompt_eval_count":'
      '18446744073709551616,"eval_count":0.5,"context":[1,2,3]} ', JSON)
usage("json-deep", '{"a":' + '[' * 20 + '{"response":"x"}' + ']' * 20 + ',"response":"y"}', JSON)
usage("request-chat", '{"model":"llama3","messages":[{"role":"user","content":"hi"}],'
      '"stream":false,"options":{"model":"not this"}}', REQUEST)
usage("request-escaped", '{"stream" : true , "model":"\\u006c\\u006cama' + "x" * 150 + '"}',
      REQUEST)
usage("request-images", '{"images":["' + "QUFB" * 200 + '"],"model":"llava"}', REQUEST)

# --- fuzz_request_body: [shape, cut1, cut2] + body. shape bit 2: OpenAI
# API, bit 3: an embedding route.
NATIVE, OPENAI, EMBED = 0x00, 0x04, 0x08


def body(name, text, mode, pieces=2, cut1=0x40, cut2=0xc0):
    write("fuzz_request_body", name, bytes([mode | pieces, cut1, cut2]) + text.encode())


body("chat", '{"model":"gpt-4o","messages":[{"role":"user","content":"hi","images":["QUFB"]}],'
     '"keep_alive":-1,"options":{"num_ctx":131072,"temperature":0.2}}', NATIVE)
body("generate-folded", '{"MODEL":"llama3","\\u212aeep_alive":"24h","options":{"num_predict":-1},'
     '"options":null,"prompt":"x\\ud83d\\ude00"}', NATIVE)
body("openai", '{"model":"qwen2:7b","max_tokens":4096,"stream":true,"stream_options":'
     '{"include_usage":false},"messages":[{"role":"user","content":[{"type":"text","text":"a"},'
     '{"type":"image_url","image_url":{"url":"data:x"}}]}]}', OPENAI)
body("embed", '{"model":"llama3","input":["a","b"],"options":{}}', EMBED)
body("empty", '{}', NATIVE, pieces=1)
body("bad", '{"model":"m"} {"model":"x"}', NATIVE)

# --- fuzz_h2_server: [flags, cut1, cut2, seed] + client bytes. flags bit
# 2: prepend the client preface (the seeds carry it themselves), bits 0-1:
# pieces, bit 3/4: shutdown notice / GOAWAY, bits 5-6: TakeOutput limit,
# bit 7: copy small DATA.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hstr(s):
    b = s.encode() if isinstance(s, str) else s
    return hpack_int(len(b), 7, 0) + b


def indexed(i):
    return hpack_int(i, 7, 0x80)


def lit(index, value):  # literal without indexing, indexed name
    return hpack_int(index, 4, 0x00) + hstr(value)


def lit_new(name, value, incremental=False):
    return (b"\x40" if incremental else b"\x00") + hstr(name) + hstr(value)


DATA, HEADERS, PRIORITY, RST, SETTINGS, PUSH, PING, GOAWAY, WINDOW, CONT = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20


def settings(pairs=()):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def get_block(path="/api/tags", authority="localhost"):
    return indexed(2) + indexed(6) + lit(4, path) + lit(1, authority)


def post_block(length=None, path="/api/chat"):
    b = indexed(3) + indexed(7) + lit(4, path) + lit(1, "localhost") + lit(31, "application/json")
    if length is not None:
        b += lit(28, str(length))
    return b


START = PREFACE + settings([(3, 100), (4, 65535)]) + frame(SETTINGS, ACK, 0)
BODY = b'{"model":"llama3"}'


def h2(name, frames, flags=0x00, cut1=0x50, cut2=0xb0, seed=0):
    write("fuzz_h2_server", name, bytes([flags, cut1, cut2, seed]) + frames)


h2("get", START + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block()))
for plan in range(6):
    h2("post-plan%d" % plan, START + frame(HEADERS, END_HEADERS, 1, post_block(len(BODY)))
       + frame(DATA, END_STREAM, 1, BODY), flags=0x02, seed=plan)
h2("post-no-length-trailers",
   START + frame(HEADERS, END_HEADERS, 1, post_block())
   + frame(DATA, 0, 1, BODY) + frame(DATA, 0, 1, BODY)
   + frame(HEADERS, END_STREAM | END_HEADERS, 1, lit_new("x-trailer", "1")), seed=2)
h2("rst-stream", START + frame(HEADERS, END_HEADERS, 1, post_block(10))
   + frame(RST, 0, 1, struct.pack(">I", 8))
   + frame(HEADERS, END_STREAM | END_HEADERS, 3, get_block()), seed=3)
h2("ping-window-update",
   START + frame(PING, 0, 0, b"12345678")
   + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20))
   + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block("/api/ps"))
   + frame(WINDOW, 0, 1, struct.pack(">I", 200000)), seed=3)
block = get_block("/api/show") + lit_new("x-custom", "v" * 40) + lit_new("cookie", "a=1") \
    + lit_new("cookie", "b=2")
h2("continuation", START + frame(HEADERS, END_STREAM, 1, block[:10])
   + frame(CONT, 0, 1, block[10:30]) + frame(CONT, END_HEADERS, 1, block[30:]), flags=0x01)
h2("many-streams", START + b"".join(
    frame(HEADERS, END_STREAM | END_HEADERS, sid, get_block("/s%d" % sid))
    for sid in range(1, 40, 2)), seed=1)
h2("header-too-large", START + frame(HEADERS, END_STREAM | END_HEADERS, 1,
                                    get_block() + lit_new("x-big", "z" * 5000)))
h2("settings-values", PREFACE + settings([(1, 0), (2, 0), (3, 1), (4, 1 << 20), (5, 1 << 15),
                                          (6, 100), (9, 1)])
   + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block()) + frame(SETTINGS, ACK, 0),
   seed=3, flags=0x60)
h2("client-goaway", START + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block())
   + frame(GOAWAY, 0, 0, struct.pack(">II", 1, 0)), seed=2)
h2("padded-priority",
   START + frame(HEADERS, END_HEADERS | PADDED | PRIO, 1,
                 bytes([4]) + struct.pack(">IB", 0, 15) + post_block(len(BODY)) + b"\0" * 4)
   + frame(DATA, END_STREAM | PADDED, 1, bytes([3]) + BODY + b"\0" * 3)
   + frame(PRIORITY, 0, 3, struct.pack(">IB", 1, 200)), seed=4)
h2("head-connect-nohost",
   START + frame(HEADERS, END_STREAM | END_HEADERS, 1,
                 lit(2, "HEAD") + indexed(6) + lit(4, "/") + lit(1, "a"))
   + frame(HEADERS, END_STREAM | END_HEADERS, 3, lit(2, "CONNECT") + lit(1, "a:443"))
   + frame(HEADERS, END_STREAM | END_HEADERS, 5, indexed(2) + indexed(6) + lit(4, "/")),
   seed=1)
h2("shutdown-goaway", START + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block())
   + frame(HEADERS, END_STREAM | END_HEADERS, 3, get_block()), flags=0x1a, seed=2)
h2("preface-flag", settings() + frame(HEADERS, END_STREAM | END_HEADERS, 1, get_block()),
   flags=0x04, seed=1)
h2("large-upload", START + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20))
   + frame(HEADERS, END_HEADERS, 1, post_block(40000))
   + b"".join(frame(DATA, 0, 1, b"u" * 10000) for _ in range(3))
   + frame(DATA, END_STREAM, 1, b"u" * 10000), flags=0x82, seed=3)
h2("dynamic-table", START + frame(HEADERS, END_STREAM | END_HEADERS, 1,
                                  b"\x3f\xe1\x1f" + get_block() + lit_new("x-a", "b", True))
   + frame(HEADERS, END_STREAM | END_HEADERS, 3, get_block() + indexed(62)), seed=5)
h2("bad-preface", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
h2("push-promise-from-client", START + frame(PUSH, END_HEADERS, 1, struct.pack(">I", 2)
                                             + get_block()))
h2("request-window-overflow", START + frame(HEADERS, END_HEADERS, 1, post_block())
   + frame(DATA, 0, 1, b"o" * 16384) * 5, seed=1)
# Stream states nghttp2 alone leaves silent (RFC 9113 5.1, 5.1.1, 5.3.1,
# 6.3): DATA and HEADERS after the client's reset, a lower stream id,
# PRIORITY on stream 0 and streams depending on themselves.
h2("closed-stream-frames", START + frame(HEADERS, END_HEADERS, 1, post_block())
   + frame(RST, 0, 1, struct.pack(">I", 8)) + frame(DATA, 0, 1, b"late")
   + frame(HEADERS, END_STREAM | END_HEADERS, 5, get_block())
   + frame(DATA, END_STREAM, 5, b"x") + frame(HEADERS, END_STREAM | END_HEADERS, 3, get_block()),
   seed=1)
h2("priority-self", START + frame(HEADERS, END_HEADERS, 1, post_block())
   + frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15))
   + frame(HEADERS, END_HEADERS, 3, post_block()) + frame(DATA, 0, 3, b"{}")
   + frame(HEADERS, END_STREAM | END_HEADERS | PRIO, 3, struct.pack(">IB", 3, 15) + lit_new("x-t", "1"))
   + frame(PRIORITY, 0, 0, struct.pack(">IB", 1, 15)), seed=2)

# --- fuzz_path: "PATTERN\nTARGET" or TARGET.
for i, t in enumerate([
        "/api/chat", "/api/%64elete", "/API/./delete/", "/api%2Fdelete", "/a/b/../c?x=1&y=%00",
        "/..", "/%2e%2e/", "//a//b///", "*", "/api/blob*\n/api/blobs/sha256:abc",
        "/v1/*\n/v1/chat/completions", "/a%20b", "/a\\b", "/a%5cb", "/a#frag", "/%41%7e%2D",
        "/api/delete/\n/API/Delete", "/a/%2E/b/%2e%2E/c/.", "/" + "x/" * 300, "relative",
        "/%zz", "/%4", "/ok?with space", "/%252e%252e/"]):
    write("fuzz_path", "%02d" % i, t)

# --- fuzz_keys_file: the file text; sk-fuzz-known is alice's key.


def key_line(name, key):
    return "%s:sha256:%s" % (name, hashlib.sha256(key.encode()).hexdigest())


write("fuzz_keys_file", "valid", "# keys\n\n" + key_line("alice", "sk-fuzz-known") + "\n  "
      + key_line("bob.smith@example-1_x", "sk-other") + "  \n# end\n")
write("fuzz_keys_file", "spaces-upper", " carol : sha256 : "
      + hashlib.sha256(b"k").hexdigest().upper() + "\r\n")
write("fuzz_keys_file", "duplicate-name", key_line("a", "1") + "\n" + key_line("a", "2") + "\n")
write("fuzz_keys_file", "duplicate-hash", key_line("a", "1") + "\n" + key_line("b", "1") + "\n")
write("fuzz_keys_file", "bad", "a:md5:00\nno colon\nx:sha256:zz\n" + "n" * 70 + ":sha256:00\n")
write("fuzz_keys_file", "bearer-line", "Bearer   sk-fuzz-known \n" + key_line("alice", "sk-fuzz-known"))

# --- fuzz_htpasswd: the file text. Every hash is of "password".
write("fuzz_htpasswd", "cheap", "# users\nmd5:$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/\n"
      "apr:$apr1$saltsalt$yAAkm4libquA.ZWLHbSBq/\n  sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=:extra\n")
write("fuzz_htpasswd", "expensive", "b:$2b$04$abcdefghijklmnopqrstuughE8Ev8uGFaUgY2cNEySvxngrb/Jzdm\n"
      "s5:$5$rounds=1000$saltsalt$azOwbpkvuuBKkE82dQPwTsQE8JyT9Fflpr9aKid3aT9\n"
      "s6:$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/\n"
      "m:$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/\n")
write("fuzz_htpasswd", "refused", "plain:password\ndes:abJnggxhB/yWI\nx:$9$zz\ny:{SSHA}abc\n:nouser\n")
write("fuzz_htpasswd", "duplicate", "a:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\na:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")

# --- fuzz_flag_values: [parser] + value; parser = byte % 7.
flag_seeds = {
    0: ["127.0.0.1:11434", "[::1]:8080", ":8080", "http://127.0.0.1:11434/", "localhost:1",
        "1.2.3.4:99999", "::1:80", "[fe80::1%eth0]:1"],
    1: ["64k", "100M", "1g", "0", "999999999999G", "18446744073709551615", "k", "12.5m"],
    2: ["10r/m burst=5 nodelay", "60r/s burst=20 delay=5", "1000000000r/s", "0r/s",
        "5r/m delay=1 nodelay", "7r/h", "1r/s burst=1000001"],
    3: ["10.0.0.0/8, ::1 192.168.0.0/16", "", "0.0.0.0/0,::/0\t127.0.0.1", "10.0.0.0/33"],
    4: ["10.1.2.3/8", "::ffff:1.2.3.4", "[2001:db8::1]", "fe80::1%eth0", "1.2.3.4, 10.0.0.1",
        "::ffff:0.0.0.0/96", "01.2.3.4", "unknown, 192.0.2.1 , 10.0.0.2"],
    5: ["# rules\nallow 10.0.0.0/8\ndeny all\nzone gen by=credential 10r/m burst=5 nodelay\n"
        "zone api 60r/s\nroute /api/pull admin zone=api allow_ip=127.0.0.1\n"
        "route /v1/* allow zone=gen max_per_ip=2 max_per_key=3 group=openai\n"
        "route /API/%64elete deny\nroute /x/../y/* allow zone=off deny_ip=fd00::/8\n",
        "route /a allow zone=nope\n", "zone\nroute a allow\nfrobnicate\n",
        "route /api/blobs/ deny\nroute /* admin\n"],
    6: ["10.0.0.0/8\n192.168.0.0/16\n127.0.0.1\n::1\nhttps://a.example, *\n"
        "10r/m burst=5\noff\ncredential",
        "\n\n\n\nftp://x\n\n\n", "\n\n\n\n\n1r/s\n2r/m\nuser"],
}
for parser, values in flag_seeds.items():
    for i, v in enumerate(values):
        write("fuzz_flag_values", "%d-%02d" % (parser, i), bytes([parser]) + v.encode())

print("seeds written under", CORPUS)
