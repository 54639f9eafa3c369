// HTTP/2 over TLS through sluice with node's own http2 module.
// Usage: SLUICE_URL=https://127.0.0.1:PORT SLUICE_CA=ca.pem node h2_client.mjs MODE
//   stream:     one /api/generate stream (10 tokens, 100 ms apart); prints
//               {"chunks":N,"lags_us":[...],"arrivals_ms":[...]} where lag is
//               arrival time minus the chunk's sim_t_us.
//   concurrent: 100 streams at once on one session; prints
//               {"ok":N,"streams":100,"sessions":1}.
//   cancel:     a long stream cancelled (RST_STREAM CANCEL) after 2 chunks;
//               prints {"cancel_us":T} (CLOCK_REALTIME µs of the reset).
//   upload SIZE length|stream:
//               POST /api/generate with a SIZE-byte body, with content-length
//               or streamed in 16 KiB writes without one; prints
//               {"status":S,"body":"...","rst":CODE} (S 0: no response head).
// SLUICE_URL may be http:// (h2c with prior knowledge) or https://.
// Exits non-zero on any failure.
import http2 from 'node:http2';
import fs from 'node:fs';

const base = process.env.SLUICE_URL;
const ca = process.env.SLUICE_CA;
const mode = process.argv[2];
if (!base || !ca || !mode) {
  console.error('usage: SLUICE_URL=... SLUICE_CA=... node h2_client.mjs stream|concurrent|cancel|upload');
  process.exit(2);
}
const watchdog = setTimeout(() => {
  console.error('FAIL: timed out after 20 s');
  process.exit(3);
}, 20000);

const nowUs = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function connect() {
  return new Promise((resolve, reject) => {
    const s = http2.connect(base, { ca: fs.readFileSync(ca) });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

function generate(session, tokens, delayMs, onChunk) {
  return new Promise((resolve, reject) => {
    const req = session.request({
      ':method': 'POST',
      ':path': '/api/generate',
      'content-type': 'application/json',
      'x-sim-tokens': String(tokens),
      'x-sim-token-delay-ms': String(delayMs),
    });
    let status = 0;
    let buf = '';
    req.on('response', (h) => { status = h[':status']; });
    req.on('data', (d) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.trim()) onChunk(JSON.parse(line), req);
      }
    });
    req.on('end', () => resolve(status));
    req.on('close', () => resolve(status));
    req.on('error', reject);
    req.end(JSON.stringify({ model: 'sim', prompt: 'hi' }));
  });
}

try {
  const session = await connect();
  if (mode === 'stream') {
    const lags = [];
    const arrivals = [];
    const t0 = Date.now();
    const status = await generate(session, 10, 100, (obj) => {
      lags.push(nowUs() - obj.sim_t_us);
      arrivals.push(Date.now() - t0);
    });
    if (status !== 200) throw new Error(`status ${status}`);
    console.log(JSON.stringify({ chunks: lags.length, lags_us: lags, arrivals_ms: arrivals }));
  } else if (mode === 'concurrent') {
    const runs = [];
    for (let i = 0; i < 100; i++) {
      let done = false;
      runs.push(generate(session, 5, 20, (obj) => { if (obj.done) done = true; })
        .then((st) => st === 200 && done));
    }
    const results = await Promise.all(runs);
    console.log(JSON.stringify({ ok: results.filter(Boolean).length, streams: 100, sessions: 1 }));
  } else if (mode === 'cancel') {
    let seen = 0;
    let cancelUs = 0;
    await generate(session, 1000, 20, (obj, req) => {
      if (++seen === 2 && !cancelUs) {
        cancelUs = nowUs();
        req.close(http2.constants.NGHTTP2_CANCEL);
      }
    });
    if (!cancelUs) throw new Error('stream ended before 2 chunks');
    console.log(JSON.stringify({ cancel_us: cancelUs }));
  } else if (mode === 'upload') {
    const size = Number(process.argv[3]);
    const withLength = process.argv[4] === 'length';
    const headers = { ':method': 'POST', ':path': '/api/generate', 'content-type': 'application/json' };
    if (withLength) headers['content-length'] = String(size);
    const out = await new Promise((resolve) => {
      const req = session.request(headers);
      let status = 0;
      let body = '';
      req.on('response', (h) => { status = h[':status']; });
      req.on('data', (d) => { body += d.toString(); });
      req.on('close', () => resolve({ status, body, rst: req.rstCode }));
      req.on('error', () => {});
      const piece = Buffer.alloc(16384, 'x');
      let left = size;
      const pump = () => {
        while (left > 0) {
          const n = Math.min(left, piece.length);
          left -= n;
          if (!req.write(n === piece.length ? piece : piece.subarray(0, n))) {
            req.once('drain', pump);
            return;
          }
        }
        req.end();
      };
      pump();
    });
    console.log(JSON.stringify(out));
  } else {
    throw new Error(`unknown mode ${mode}`);
  }
  session.close();
  clearTimeout(watchdog);
} catch (e) {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
}
