// "View code": the request the playground would send, as code in four clients (pure).
//
// snippet(language, { baseUrl, body, keyRequired }) -> source text, where `body` is
// settings.chatRequest(...) (model, messages and the non-default settings), `baseUrl` the
// API's absolute URL ending in /v1, `keyRequired` whether the server asks for a key. The
// key is always the environment variable KEY_ENV, never its value; without keys the
// snippets fall back to a placeholder so they run as they are.
// LANGUAGES: [{ id, label }] in tab order.

export const KEY_ENV = "GENAPI_API_KEY";
export const LANGUAGES = [
  { id: "python", label: "Python" },
  { id: "node", label: "Node.js" },
  { id: "curl", label: "curl" },
  { id: "langchain", label: "LangChain" },
];
const PLACEHOLDER_KEY = "unused";
const WIDTH = 88; // a literal that fits on one line this wide stays on one line

// A literal of `value` (JSON data) in Python or JavaScript syntax, pretty-printed from
// `indent` on (indents of 4 spaces in Python, 2 in JavaScript).
export function literal(value, lang, indent = "") {
  const py = lang === "python";
  if (value === null || value === undefined) return py ? "None" : "null";
  if (value === true) return py ? "True" : "true";
  if (value === false) return py ? "False" : "false";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = indent + (py ? "    " : "  ");
  const key = (k) => (!py && /^[A-Za-z_$][\w$]*$/.test(k) ? k : JSON.stringify(k));
  const items = Array.isArray(value)
    ? value.map((v) => [null, v])
    : Object.entries(value).map(([k, v]) => [key(k), v]);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  if (items.length === 0) return open + close;
  const one = (k, v, ind) => (k === null ? "" : k + ": ") + literal(v, lang, ind);
  const flat = open + items.map(([k, v]) => one(k, v, inner)).join(", ") + close;
  if (!flat.includes("\n") && indent.length + flat.length <= WIDTH) return flat;
  return open + "\n" + items.map(([k, v]) => inner + one(k, v, inner) + ",\n").join("") + indent + close;
}

function kwargs(entries, lang, indent, sep) {
  return entries.map(([k, v]) => `${indent}${k}${sep}${literal(v, lang, indent)},\n`).join("");
}

function python({ baseUrl, body, keyRequired }) {
  const key = keyRequired ? `os.environ["${KEY_ENV}"]` : `os.environ.get("${KEY_ENV}", "${PLACEHOLDER_KEY}")`;
  return `import os

from openai import OpenAI

client = OpenAI(
    base_url=${JSON.stringify(baseUrl)},
    api_key=${key},
)

stream = client.chat.completions.create(
${kwargs(Object.entries(body), "python", "    ", "=")}    stream=True,
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()
`;
}

function node({ baseUrl, body, keyRequired }) {
  const key = keyRequired ? `process.env.${KEY_ENV}` : `process.env.${KEY_ENV} ?? "${PLACEHOLDER_KEY}"`;
  return `import OpenAI from "openai";

const client = new OpenAI({
  baseURL: ${JSON.stringify(baseUrl)},
  apiKey: ${key},
});

const stream = await client.chat.completions.create({
${kwargs(Object.entries(body), "node", "  ", ": ")}  stream: true,
});
for await (const chunk of stream) {
  process.stdout.write(chunk.choices[0]?.delta?.content ?? "");
}
process.stdout.write("\\n");
`;
}

// A POSIX shell single-quoted word.
export function shellQuote(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function curl({ baseUrl, body }) {
  return `curl ${shellQuote(baseUrl + "/chat/completions")} \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $${KEY_ENV}" \\
  -d ${shellQuote(JSON.stringify(body, null, 2))}
`;
}

function langchain({ baseUrl, body, keyRequired }) {
  const key = keyRequired ? `os.environ["${KEY_ENV}"]` : `os.environ.get("${KEY_ENV}", "${PLACEHOLDER_KEY}")`;
  const { model, messages, response_format: responseFormat, ...sampling } = body;
  const bind = responseFormat ? `llm = llm.bind(response_format=${literal(responseFormat, "python")})\n` : "";
  return `import os

from langchain_openai import ChatOpenAI

llm = ChatOpenAI(
    base_url=${JSON.stringify(baseUrl)},
    api_key=${key},
${kwargs(Object.entries({ model, ...sampling }), "python", "    ", "=")})
${bind}messages = ${literal(messages, "python")}
for chunk in llm.stream(messages):
    print(chunk.content, end="", flush=True)
print()
`;
}

const BUILDERS = { python, node, curl, langchain };

export function snippet(language, request) {
  const build = BUILDERS[language];
  if (!build) throw new Error(`unknown language: ${language}`);
  return build(request);
}
