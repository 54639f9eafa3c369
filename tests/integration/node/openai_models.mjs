// Drives the npm `openai` client's models.list() through sluice in front of
// several backends: the ids must be exactly EXPECT_MODELS (comma-separated,
// in order). Then a chat with a model no backend has must fail as the
// client's NotFoundError (404) carrying the message of the error object.
// Exits non-zero on failure.
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
  let missing = null;
  try {
    await client.chat.completions.create({
      model: 'no-such-model',
      messages: [{ role: 'user', content: 'hi' }],
    });
  } catch (err) {
    missing = err;
  }
  check(missing instanceof OpenAI.NotFoundError,
        `a missing model gave ${missing?.constructor?.name}: ${missing?.message}`);
  check(missing.status === 404, `status ${missing.status}`);
  check(missing.message.includes("model 'no-such-model' not found"),
        `message '${missing.message}'`);
  check(missing.type === 'not_found_error', `type '${missing.type}'`);
  console.log(`ok: ${ids.join(' ')}; missing model: ${missing.message}`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err, err?.cause ?? '', err?.cause?.cause ?? '');
  process.exit(1);
}
