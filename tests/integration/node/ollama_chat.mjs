// Drives the npm `ollama` client through sluice: a streamed chat must arrive
// as at least 5 parts, the last with done:true. Exits non-zero on failure.
// Usage: SLUICE_URL=http://127.0.0.1:PORT node ollama_chat.mjs
import { Ollama } from 'ollama';

const host = process.env.SLUICE_URL;
if (!host) {
  console.error('SLUICE_URL is not set');
  process.exit(2);
}

// A hung proxy must fail the test, not stall it.
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
  check(tags.models.some((m) => m.name === 'sim:latest'),
        `list(): no sim:latest in ${JSON.stringify(tags)}`);

  const stream = await client.chat({
    model: 'sim',
    messages: [{ role: 'user', content: 'Say something.' }],
    stream: true,
  });
  const parts = [];
  for await (const part of stream) parts.push(part);
  check(parts.length >= 5, `chat(): only ${parts.length} parts`);
  const last = parts[parts.length - 1];
  check(last.done === true, `chat(): last part not done: ${JSON.stringify(last)}`);
  for (const p of parts.slice(0, -1)) {
    check(p.done === false, `chat(): early done part: ${JSON.stringify(p)}`);
  }
  const text = parts.map((p) => p.message?.content ?? '').join('');
  check(text.includes('tok1'), `chat(): unexpected text '${text}'`);

  const single = await client.generate({ model: 'sim', prompt: 'hi', stream: false });
  check(single.done === true, `generate(): not done: ${JSON.stringify(single)}`);

  console.log(`ok: ${parts.length} chat parts, text '${text.trim()}'`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err);
  process.exit(1);
}
