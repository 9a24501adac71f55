// node --test: how the playground's API client reads replies (shim/playground/js/api.js),
// with fetch answering canned HTTP responses of the shapes the shim sends.
import assert from "node:assert/strict";
import test from "node:test";

import { ApiError, describeError, listModels, streamChat } from "../../../shim/playground/js/api.js";

function reply(status, body, headers = {}) {
  globalThis.fetch = async () => new Response(body, { status, headers });
}

function collector() {
  const seen = { content: "", reasoning: "", usage: null, finish: null, errors: [], start: null };
  return {
    seen,
    on: {
      start: (s) => { seen.start = s; },
      content: (t) => { seen.content += t; },
      reasoning: (t) => { seen.reasoning += t; },
      usage: (u) => { seen.usage = u; },
      finish: (r) => { seen.finish = r; },
      streamError: (e) => { seen.errors.push(e); },
    },
  };
}

const chunk = (delta, extra = {}) => `data: ${JSON.stringify({ choices: [{ index: 0, delta, ...extra.choice }], ...extra.top })}\n\n`;

test("a stream: content, reasoning, running usage, finish, [DONE]", async () => {
  reply(200, chunk({ role: "assistant", reasoning_content: "hmm" }) + ": keep-alive\n\n" + chunk({ content: "Hel" })
    + chunk({ content: "lo" }, { top: { usage: { completion_tokens: 3 } }, choice: { finish_reason: "stop" } })
    + "data: [DONE]\n\n", { "x-request-id": "r1", "content-type": "text/event-stream" });
  const { seen, on } = collector();
  await streamChat({ apiBase: "http://h/v1", key: "", body: { model: "m" }, on });
  assert.deepEqual(seen, { content: "Hello", reasoning: "hmm", usage: { completion_tokens: 3 }, finish: "stop",
    errors: [], start: { requestId: "r1" } });
});

test("a mid-stream error frame is reported after the text", async () => {
  reply(200, chunk({ content: "par" }) + 'data: {"error": {"message": "engine failed", "code": null}}\n\n'
    + "data: [DONE]\n\n");
  const { seen, on } = collector();
  await streamChat({ apiBase: "http://h/v1", key: "k", body: {}, on });
  assert.equal(seen.content, "par");
  assert.deepEqual(seen.errors, [{ message: "engine failed", code: null }]);
});

test("HTTP errors carry the envelope's message and Retry-After", async () => {
  reply(429, JSON.stringify({ error: { message: "The engine is busy.", code: "engine_overloaded" } }),
    { "Retry-After": "3", "content-type": "application/json" });
  const { on } = collector();
  const err = await streamChat({ apiBase: "http://h/v1", key: "", body: {}, on }).catch((e) => e);
  assert.ok(err instanceof ApiError);
  assert.equal(err.code, "engine_overloaded");
  assert.equal(describeError(err), "429: The engine is busy. (retry in 3 s)");

  reply(401, JSON.stringify({ error: { message: "Incorrect API key provided: sk-w***." } }));
  const e401 = await listModels("http://h/v1", "sk-wrong").catch((e) => e);
  assert.equal(describeError(e401), "401: Incorrect API key provided: sk-w***.");

  reply(502, "<html>bad gateway</html>");
  assert.match(describeError(await listModels("http://h/v1", "").catch((e) => e)), /^502: /);
  assert.match(describeError(new TypeError("Failed to fetch")), /could not be reached/);
});

test("the key is sent as a bearer token, only when there is one", async () => {
  const sent = [];
  globalThis.fetch = async (url, init) => { sent.push(init.headers); return new Response("{}", { status: 200 }); };
  await listModels("http://h/v1", "sk-1");
  await listModels("http://h/v1", "");
  assert.deepEqual(sent, [{ Authorization: "Bearer sk-1" }, {}]);
});
