// node --test: the SSE parser (shim/playground/js/sse.js), fed in every split.
import assert from "node:assert/strict";
import test from "node:test";

import { readEvents, SSEParser } from "../../../shim/playground/js/sse.js";

const STREAM = ': keep-alive\n\ndata: {"a":1}\n\nevent: x\ndata: line1\ndata: line2\r\n\r\ndata:nospace\r\rdata: [DONE]\n\n';
const EVENTS = ['{"a":1}', "line1\nline2", "nospace", "[DONE]"];

test("whole stream", () => {
  const p = new SSEParser();
  assert.deepEqual([...p.feed(STREAM), ...p.end()], EVENTS);
});

test("every split into two chunks gives the same events", () => {
  for (let i = 0; i <= STREAM.length; i++) {
    const p = new SSEParser();
    const got = [...p.feed(STREAM.slice(0, i)), ...p.feed(STREAM.slice(i)), ...p.end()];
    assert.deepEqual(got, EVENTS, `split at ${i}`);
  }
});

test("a last event without a blank line is kept", () => {
  const p = new SSEParser();
  assert.deepEqual([...p.feed("data: x"), ...p.end()], ["x"]);
});

test("readEvents decodes UTF-8 split across chunks", async () => {
  const bytes = new TextEncoder().encode('data: {"t":"héllo ✓"}\n\n');
  const body = new ReadableStream({
    start(c) { for (const b of bytes) c.enqueue(new Uint8Array([b])); c.close(); },
  });
  const got = [];
  await readEvents(body, (d) => got.push(d));
  assert.deepEqual(got, ['{"t":"héllo ✓"}']);
});
