// Drives the npm `ollama` client's list() through sluice in front of several
// backends: the models must be exactly EXPECT_MODELS (comma-separated, in
// order), each with the fields the client shows (size, digest, details).
// Exits non-zero on failure.
// Usage: SLUICE_URL=http://127.0.0.1:PORT EXPECT_MODELS=a:latest,b:latest node ollama_list.mjs
import { Ollama } from 'ollama';

const host = process.env.SLUICE_URL;
const expected = (process.env.EXPECT_MODELS ?? '').split(',');
if (!host) {
  console.error('SLUICE_URL is not set');
  process.exit(2);
}

const watchdog = setTimeout(() => {
  console.error('FAIL: timed out after 20 s');
  process.exit(3);
}, 20000);

function check(cond, what) {
  if (!cond) throw new Error(what);
}

try {
  const client = new Ollama({ host });
  const tags = await client.list();
  const names = tags.models.map((m) => m.name);
  check(JSON.stringify(names) === JSON.stringify(expected),
        `list(): ${JSON.stringify(names)}, expected ${JSON.stringify(expected)}`);
  for (const m of tags.models) {
    check(typeof m.size === 'number' && typeof m.digest === 'string' && m.details,
          `list(): an entry without size, digest or details: ${JSON.stringify(m)}`);
  }
  const ps = await client.ps();
  check(Array.isArray(ps.models), `ps(): ${JSON.stringify(ps)}`);
  console.log(`ok: ${names.join(' ')}`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err);
  process.exit(1);
}
