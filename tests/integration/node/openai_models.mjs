// Drives the npm `openai` client's models.list() through sluice in front of
// several backends: the ids must be exactly EXPECT_MODELS (comma-separated,
// in order). Exits non-zero on failure.
// Usage: SLUICE_URL=http://127.0.0.1:PORT EXPECT_MODELS=a:latest,b:latest node openai_models.mjs
import OpenAI from 'openai';

const base = process.env.SLUICE_URL;
const expected = (process.env.EXPECT_MODELS ?? '').split(',');
if (!base) {
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
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0 });
  const ids = [];
  for await (const model of client.models.list()) {
    check(model.object === 'model', `an entry that is not a model: ${JSON.stringify(model)}`);
    ids.push(model.id);
  }
  check(JSON.stringify(ids) === JSON.stringify(expected),
        `models.list(): ${JSON.stringify(ids)}, expected ${JSON.stringify(expected)}`);
  console.log(`ok: ${ids.join(' ')}`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err, err?.cause ?? '', err?.cause?.cause ?? '');
  process.exit(1);
}
