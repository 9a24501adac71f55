// node --test: View code snippets (shim/playground/js/snippets.js).
import assert from "node:assert/strict";
import test from "node:test";

import { LANGUAGES, literal, shellQuote, snippet } from "../../../shim/playground/js/snippets.js";

const body = {
  model: "m", messages: [{ role: "user", content: 'say "hi"\nnow' }], temperature: 0.7, stop: ["x"],
  response_format: { type: "json_schema", json_schema: { name: "p", strict: true, schema: { additionalProperties: false, x: null } } },
};
const request = { baseUrl: "http://h:1/v1", body, keyRequired: true };

test("literals", () => {
  assert.equal(literal({ a: true, b: null, c: [1, "s"] }, "python"), '{"a": True, "b": None, "c": [1, "s"]}');
  assert.equal(literal({ a: true, "b-c": null }, "node"), '{a: true, "b-c": null}');
  assert.equal(literal([], "python"), "[]");
  const long = literal(["x".repeat(50), "y".repeat(50)], "python");
  assert.equal(long, `[\n    "${"x".repeat(50)}",\n    "${"y".repeat(50)}",\n]`);
});

test("shell quoting", () => {
  assert.equal(shellQuote("it's"), "'it'\\''s'");
});

test("python: settings as keyword arguments, the key from the environment", () => {
  const code = snippet("python", request);
  assert.match(code, /api_key=os\.environ\["GENAPI_API_KEY"\]/);
  assert.match(code, /base_url="http:\/\/h:1\/v1"/);
  assert.match(code, /temperature=0\.7,/);
  assert.match(code, /"content": "say \\"hi\\"\\nnow"/);
  assert.match(code, /"additionalProperties": False/);
  assert.match(code, /stream=True/);
  assert.match(snippet("python", { ...request, keyRequired: false }), /os\.environ\.get\("GENAPI_API_KEY", "unused"\)/);
});

test("node, curl, langchain", () => {
  assert.match(snippet("node", request), /apiKey: process\.env\.GENAPI_API_KEY,/);
  assert.match(snippet("node", request), /additionalProperties: false/);
  const curl = snippet("curl", request);
  assert.match(curl, /^curl 'http:\/\/h:1\/v1\/chat\/completions'/);
  assert.match(curl, /Bearer \$GENAPI_API_KEY/);
  const json = curl.slice(curl.indexOf("-d '") + 4, curl.lastIndexOf("'"));
  assert.deepEqual(JSON.parse(json), body);
  const lc = snippet("langchain", request);
  assert.match(lc, /ChatOpenAI\(\n[\s\S]*model="m",\n    temperature=0\.7,\n    stop=\["x"\],\n\)/);
  assert.match(lc, /llm = llm\.bind\(response_format=/);
  assert.deepEqual(LANGUAGES.map((l) => l.id), ["python", "node", "curl", "langchain"]);
  assert.throws(() => snippet("cobol", request));
});
