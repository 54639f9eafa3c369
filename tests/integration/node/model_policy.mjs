// A key with a model policy, through the npm `openai` and `ollama` clients:
// it lists only its models (EXPECT_MODELS, comma-separated, in order) with
// both; its alias "gpt-4o" answers from the real model; a model outside
// its list fails as the openai client's PermissionDeniedError (403) and as
// an ollama ResponseError; a keep_alive of -1 reaches Ollama lowered (the
// simulator's X-Sim-Echo answer shows the body it received).
// Exits non-zero on failure.
// Usage: SLUICE_URL=http://127.0.0.1:PORT SLUICE_KEY=sk-... EXPECT_MODELS=a,b node model_policy.mjs
import OpenAI from 'openai';
import { Ollama } from 'ollama';

const base = process.env.SLUICE_URL;
const key = process.env.SLUICE_KEY;
const expected = (process.env.EXPECT_MODELS ?? '').split(',');
if (!base || !key) {
  console.error('SLUICE_URL or SLUICE_KEY is not set');
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
  const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
  const ids = [];
  for await (const model of openai.models.list()) ids.push(model.id);
  check(JSON.stringify(ids) === JSON.stringify(expected),
        `openai models.list(): ${JSON.stringify(ids)}, expected ${JSON.stringify(expected)}`);

  const chat = await openai.chat.completions.create({
    model: 'gpt-4o',
    messages: [{ role: 'user', content: 'hi' }],
  });
  check(chat.model.startsWith('llama3'), `the alias answered as '${chat.model}'`);
  check(chat.choices[0].message.content.length > 0, 'an empty answer');

  let refused = null;
  try {
    await openai.chat.completions.create({
      model: 'mistral',
      messages: [{ role: 'user', content: 'hi' }],
    });
  } catch (err) {
    refused = err;
  }
  check(refused instanceof OpenAI.PermissionDeniedError,
        `a model outside the list gave ${refused?.constructor?.name}: ${refused?.message}`);
  check(refused.message.includes("model 'mistral' is not allowed for this key"),
        `message '${refused.message}'`);

  const ollama = new Ollama({ host: base, headers: { Authorization: `Bearer ${key}` } });
  const listed = (await ollama.list()).models.map((m) => m.name);
  check(JSON.stringify(listed) === JSON.stringify(expected),
        `ollama list(): ${JSON.stringify(listed)}, expected ${JSON.stringify(expected)}`);
  let ollamaRefused = null;
  try {
    await ollama.generate({ model: 'mistral', prompt: 'hi', stream: false });
  } catch (err) {
    ollamaRefused = err;
  }
  check(ollamaRefused?.status_code === 403,
        `ollama: a model outside the list gave ${ollamaRefused?.status_code}: ${ollamaRefused}`);
  // The simulator answers with what it received (X-Sim-Echo).
  const echo = new Ollama({
    host: base,
    headers: { Authorization: `Bearer ${key}`, 'X-Sim-Echo': '1' },
  });
  const seen = await echo.generate({ model: 'llama3', prompt: 'hi', keep_alive: -1, stream: false });
  check(typeof seen.body === 'string', `no echo: ${JSON.stringify(seen)}`);
  const sent = JSON.parse(seen.body);
  check(sent.keep_alive === '3600s', `keep_alive reached Ollama as ${JSON.stringify(sent.keep_alive)}`);
  console.log(`ok: ${ids.join(' ')}; alias answered by ${chat.model}; ` +
              `refused: ${refused.message}; keep_alive sent: ${sent.keep_alive}`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err, err?.cause ?? '', err?.cause?.cause ?? '');
  process.exit(1);
}
