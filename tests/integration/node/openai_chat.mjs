// Drives the npm `openai` client through sluice: a streamed
// /v1/chat/completions must arrive as at least 5 chunks and finish with
// finish_reason "stop". Exits non-zero on failure.
// Usage: SLUICE_URL=http://127.0.0.1:PORT node openai_chat.mjs
import OpenAI from 'openai';

const base = process.env.SLUICE_URL;
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
  const stream = await client.chat.completions.create({
    model: 'sim',
    messages: [{ role: 'user', content: 'Say something.' }],
    stream: true,
  });
  let chunks = 0;
  let text = '';
  let finish = null;
  for await (const chunk of stream) {
    chunks += 1;
    const choice = chunk.choices?.[0];
    text += choice?.delta?.content ?? '';
    if (choice?.finish_reason) finish = choice.finish_reason;
  }
  check(chunks >= 5, `only ${chunks} chunks`);
  check(finish === 'stop', `finish_reason ${finish}`);
  check(text.includes('tok1'), `unexpected text '${text}'`);
  console.log(`ok: ${chunks} chunks, text '${text.trim()}'`);
  clearTimeout(watchdog);
} catch (err) {
  console.error('FAIL:', err?.stack ?? err, err?.cause ?? '', err?.cause?.cause ?? '');
  process.exit(1);
}
