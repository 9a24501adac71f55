// node --test: the playground's settings -> request functions (shim/playground/js/settings.js).
import assert from "node:assert/strict";
import test from "node:test";

import { chatModels, chatRequest, DEFAULTS, parseSettings } from "../../../shim/playground/js/settings.js";

const raw = (over = {}) => ({
  model: "m", system: "", temperature: "1", top_p: "1", max_tokens: "", presence_penalty: "0",
  frequency_penalty: "0", seed: "", stop: "", logit_bias: "", response_format: "text", json_schema: "", ...over,
});

test("defaults give a bare request", () => {
  const { settings, errors } = parseSettings(raw());
  assert.deepEqual(errors, {});
  assert.deepEqual(chatRequest(settings, [{ role: "user", content: "hi" }]),
    { model: "m", messages: [{ role: "user", content: "hi" }] });
  assert.equal(DEFAULTS.temperature, 1);
});

test("every non-default setting is sent, the system prompt first", () => {
  const { settings, errors } = parseSettings(raw({
    system: "Be brief.", temperature: "0", top_p: "0.5", max_tokens: "12", presence_penalty: "-1.5",
    frequency_penalty: "2", seed: "-3", stop: "END\n\nSTOP", logit_bias: '{"2": -100}',
  }));
  assert.deepEqual(errors, {});
  assert.deepEqual(chatRequest(settings, [{ role: "user", content: "q" }, { role: "assistant", content: "a" }]), {
    model: "m",
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "q" }, { role: "assistant", content: "a" }],
    temperature: 0, top_p: 0.5, max_tokens: 12, presence_penalty: -1.5, frequency_penalty: 2, seed: -3,
    stop: ["END", "STOP"], logit_bias: { 2: -100 },
  });
});

test("a blank system prompt is not sent", () => {
  const { settings } = parseSettings(raw({ system: "  \n" }));
  assert.deepEqual(chatRequest(settings, []).messages, []);
});

test("response formats", () => {
  assert.deepEqual(chatRequest(parseSettings(raw({ response_format: "json_object" })).settings, []).response_format,
    { type: "json_object" });
  const schema = { type: "object" };
  const { settings, errors } = parseSettings(raw({ response_format: "json_schema", json_schema: JSON.stringify(schema) }));
  assert.deepEqual(errors, {});
  assert.deepEqual(chatRequest(settings, []).response_format,
    { type: "json_schema", json_schema: { name: "playground", strict: true, schema } });
  // a schema typed while the format is text is not sent
  assert.equal(chatRequest(parseSettings(raw({ json_schema: "{}" })).settings, []).response_format, undefined);
});

test("bad values are refused with a sentence each", () => {
  const { errors } = parseSettings(raw({
    temperature: "2.5", top_p: "x", max_tokens: "0", seed: "1.5", stop: "a\nb\nc\nd\ne",
    logit_bias: "[1]", response_format: "json_schema", json_schema: "{oops",
  }));
  assert.deepEqual(Object.keys(errors).sort(),
    ["json_schema", "logit_bias", "max_tokens", "seed", "stop", "temperature", "top_p"]);
  assert.equal(errors.temperature, "Must be between 0 and 2.");
  assert.match(errors.json_schema, /^Not valid JSON/);
  assert.equal(parseSettings(raw({ seed: "9007199254740993" })).errors.seed, "Must be a whole number.");
  assert.equal(parseSettings(raw({ response_format: "json_schema" })).errors.json_schema,
    "A JSON schema is needed for this response format.");
});

test("chat models: task chat or none, in order", () => {
  assert.deepEqual(chatModels({ data: [
    { id: "a", task: "chat" }, { id: "e", task: "embedding" }, { id: "b" }, { id: "r", task: "rerank" }, {},
  ] }), ["a", "b"]);
  assert.deepEqual(chatModels(null), []);
});
