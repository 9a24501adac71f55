// The playground's settings and the chat completion request they make (pure functions).
//
// Settings shape (what the right-hand column holds, already parsed):
//   { model: string, system: string, temperature: number, top_p: number,
//     max_tokens: int|null, presence_penalty: number, frequency_penalty: number,
//     seed: int|null, stop: string[], logit_bias: {tokenId: bias}|null,
//     response_format: "text"|"json_object"|"json_schema", json_schema: object|null }
// DEFAULTS are the API's own defaults: a setting equal to its default is left out of the
// request (and so out of the View code snippets).

export const DEFAULTS = Object.freeze({
  temperature: 1,
  top_p: 1,
  max_tokens: null,
  presence_penalty: 0,
  frequency_penalty: 0,
  seed: null,
  stop: [],
  logit_bias: null,
  response_format: "text",
  json_schema: null,
});

// The request's sampling fields, in the order the snippets show them.
export const SAMPLING_FIELDS = [
  "temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop", "logit_bias",
];

export const MAX_STOP = 4;
export const SCHEMA_NAME = "playground";

// Raw form values (strings) -> { settings, errors }; errors maps a field name to a message
// (a sentence) for the user; an empty object when everything parsed.
export function parseSettings(raw) {
  const errors = {};
  const number = (name, min, max) => {
    const text = String(raw[name] ?? "").trim();
    if (text === "") return DEFAULTS[name];
    const v = Number(text);
    if (!Number.isFinite(v) || v < min || v > max) {
      errors[name] = `Must be between ${min} and ${max}.`;
      return DEFAULTS[name];
    }
    return v;
  };
  const integer = (name, min, max) => {
    const text = String(raw[name] ?? "").trim();
    if (text === "") return null;
    const v = Number(text);
    if (!/^-?\d+$/.test(text) || !Number.isSafeInteger(v) || v < min || v > max) {
      errors[name] = min > Number.MIN_SAFE_INTEGER ? `Must be a whole number from ${min}.` : "Must be a whole number.";
      return null;
    }
    return v;
  };
  const json = (name, check) => {
    const text = String(raw[name] ?? "").trim();
    if (text === "") return null;
    try {
      const v = JSON.parse(text);
      const problem = check(v);
      if (problem) errors[name] = problem;
      return problem ? null : v;
    } catch (e) {
      errors[name] = `Not valid JSON (${e.message}).`;
      return null;
    }
  };
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

  const stop = String(raw.stop ?? "").split("\n").filter((s) => s !== "");
  if (stop.length > MAX_STOP) errors.stop = `At most ${MAX_STOP} stop sequences, one a line.`;
  const responseFormat = ["text", "json_object", "json_schema"].includes(raw.response_format)
    ? raw.response_format : "text";
  const settings = {
    model: String(raw.model ?? ""),
    system: String(raw.system ?? ""),
    temperature: number("temperature", 0, 2),
    top_p: number("top_p", 0, 1),
    max_tokens: integer("max_tokens", 1, Number.MAX_SAFE_INTEGER),
    presence_penalty: number("presence_penalty", -2, 2),
    frequency_penalty: number("frequency_penalty", -2, 2),
    seed: integer("seed", Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER),
    stop: errors.stop ? [] : stop,
    logit_bias: json("logit_bias", (v) => (isObject(v) && Object.values(v).every((b) => typeof b === "number")
      ? null : 'Must be an object of token ids to biases, e.g. {"42": -100}.')),
    response_format: responseFormat,
    json_schema: responseFormat === "json_schema"
      ? json("json_schema", (v) => (isObject(v) ? null : "Must be a JSON schema object.")) : null,
  };
  if (responseFormat === "json_schema" && !settings.json_schema && !errors.json_schema) {
    errors.json_schema = "A JSON schema is needed for this response format.";
  }
  return { settings, errors };
}

function sameValue(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

// The conversation as API messages: the system prompt (when not blank) first, then each
// user and assistant turn. `turns`: [{role: "user"|"assistant", content: string}].
export function apiMessages(settings, turns) {
  const out = [];
  if (settings.system.trim() !== "") out.push({ role: "system", content: settings.system });
  for (const t of turns) out.push({ role: t.role, content: t.content });
  return out;
}

// The chat completion request body (without `stream`): model, messages and every setting
// that differs from the API's default.
export function chatRequest(settings, turns) {
  const body = { model: settings.model, messages: apiMessages(settings, turns) };
  for (const name of SAMPLING_FIELDS) {
    if (!sameValue(settings[name], DEFAULTS[name])) body[name] = settings[name];
  }
  if (settings.response_format === "json_object") body.response_format = { type: "json_object" };
  if (settings.response_format === "json_schema" && settings.json_schema) {
    body.response_format = {
      type: "json_schema",
      json_schema: { name: SCHEMA_NAME, strict: true, schema: settings.json_schema },
    };
  }
  return body;
}

// The chat models of a GET /v1/models reply, in its order: those whose `task` is "chat"
// (or that carry no task, as on other OpenAI-compatible servers).
export function chatModels(reply) {
  const data = reply && Array.isArray(reply.data) ? reply.data : [];
  return data.filter((m) => m && typeof m.id === "string" && (m.task === undefined || m.task === "chat"))
    .map((m) => m.id);
}
