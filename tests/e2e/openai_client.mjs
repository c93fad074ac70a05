// The official openai npm client against a running dshpc serve: chat and completions, streaming
// and not, errors, 32 concurrent streams, and a client that goes away mid-stream.
// usage: node openai_client.mjs BASE_URL MODEL
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: "unused", maxRetries: 0 });
let passed = 0, failed = 0;
function check(name, ok, detail = "") {
  if (ok) passed++; else failed++;
  console.log(`${ok ? "ok" : "FAIL"}: openai ${name}${detail ? " — " + detail : ""}`);
}

const chat = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Hello!" }], max_tokens: 6, temperature: 0,
});
check("chat", typeof chat.choices[0].message.content === "string" &&
      chat.usage.completion_tokens === 6 && chat.choices[0].finish_reason === "length",
      JSON.stringify(chat.usage));

const again = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Hello!" }], max_tokens: 6, temperature: 0,
});
check("greedy is deterministic", again.choices[0].message.content === chat.choices[0].message.content);

const seeded = async () => (await client.completions.create({
  model, prompt: "Once upon a time", max_tokens: 8, temperature: 1.0, seed: 7 })).choices[0].text;
check("seed reproduces", (await seeded()) === (await seeded()));

let text = "", chunks = 0, usage = null;
const stream = await client.chat.completions.create({
  model, messages: [{ role: "user", content: "Tell me a story" }], max_tokens: 10, stream: true,
  stream_options: { include_usage: true },
});
for await (const chunk of stream) {
  chunks++;
  if (chunk.choices.length) text += chunk.choices[0].delta.content ?? "";
  if (chunk.usage) usage = chunk.usage;
}
check("chat stream", chunks >= 10 && usage && usage.completion_tokens === 10, `${chunks} chunks`);

const completion = await client.completions.create({ model, prompt: "1, 2, 3,", max_tokens: 5, logprobs: 2 });
check("completions with logprobs", completion.choices[0].logprobs?.top_logprobs?.length === 5);

try {
  await client.chat.completions.create({ model: "no-such-model", messages: [{ role: "user", content: "x" }] });
  check("unknown model is 404", false, "no error");
} catch (e) {
  check("unknown model is 404", e.status === 404, `${e.status} ${e.message}`);
}
try {
  await client.completions.create({ model, prompt: "x", max_tokens: -3 });
  check("negative max_tokens is 400", false, "no error");
} catch (e) {
  check("negative max_tokens is 400", e.status === 400, `${e.status}`);
}

// 32 concurrent streaming clients all complete.
const runs = await Promise.all([...Array(32).keys()].map(async (i) => {
  const s = await client.completions.create({ model, prompt: `Client ${i} says`, max_tokens: 8, stream: true });
  let n = 0, finish = null;
  for await (const c of s) {
    if (c.choices.length) { n++; finish = c.choices[0].finish_reason ?? finish; }
  }
  return finish === "length";
}));
check("32 concurrent streams complete", runs.every(Boolean), `${runs.filter(Boolean).length}/32`);

// A client that goes away mid-stream: its request is cancelled and its KV blocks freed.
const controller = new AbortController();
const long = await client.completions.create(
  { model, prompt: "A very long story", max_tokens: 2000, stream: true }, { signal: controller.signal });
let seen = 0;
try {
  for await (const c of long) { if (++seen === 3) controller.abort(); }
} catch (e) { /* aborted */ }
await new Promise((r) => setTimeout(r, 1500));
const metrics = await (await fetch(`${baseURL}/metrics`)).text();
const value = (name) => Number((metrics.match(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, "m")) || [])[1]);
check("disconnect frees the request and its KV blocks",
      value("dshpc_num_requests_running") === 0 && value("dshpc_kv_cache_usage_ratio") === 0,
      `running ${value("dshpc_num_requests_running")}, kv ${value("dshpc_kv_cache_usage_ratio")}`);

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
