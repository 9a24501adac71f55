// The few API calls the playground makes, with fetch.
//
// listModels(apiBase, key) -> the GET /v1/models reply (JSON).
// streamChat({ apiBase, key, body, signal, on }) streams POST /v1/chat/completions
//   (body + stream: true) and calls on.start({ requestId }) once the answer's headers are
//   in, then per chunk on.content(text), on.reasoning(text), on.usage(usage),
//   on.finish(reason), and on.streamError(error) for a mid-stream {"error": ...} frame.
//   Resolves when the stream ends; rejects with an AbortError when `signal` aborts.
// Both reject with ApiError for an HTTP error (status, message from the OpenAI error
// envelope, code, retryAfterS from Retry-After), or a TypeError when the server cannot
// be reached.

import { readEvents } from "./sse.js";

export class ApiError extends Error {
  constructor(status, message, code = null, retryAfterS = null, requestId = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.retryAfterS = retryAfterS;
    this.requestId = requestId;
  }
}

// The user-facing text of an error: its message, with the HTTP status and, for 429/503,
// when to retry.
export function describeError(err) {
  if (err instanceof ApiError) {
    let text = `${err.status}: ${err.message}`;
    if (err.retryAfterS !== null) text += ` (retry in ${err.retryAfterS} s)`;
    return text;
  }
  if (err instanceof TypeError) return `The server could not be reached (${err.message}).`;
  return String(err && err.message ? err.message : err);
}

function headers(key, json = false) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function failure(resp) {
  let message = resp.statusText || "request failed";
  let code = null;
  try {
    const body = await resp.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code || null;
    }
  } catch {
    /* not JSON: keep the status text */
  }
  const retry = resp.headers.get("Retry-After");
  const retryAfterS = retry !== null && /^\d+$/.test(retry.trim()) ? Number(retry) : null;
  return new ApiError(resp.status, message, code, retryAfterS, resp.headers.get("x-request-id"));
}

export async function listModels(apiBase, key) {
  const resp = await fetch(`${apiBase}/models`, { headers: headers(key) });
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export async function streamChat({ apiBase, key, body, signal, on }) {
  const resp = await fetch(`${apiBase}/chat/completions`, {
    method: "POST",
    headers: headers(key, true),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!resp.ok) throw await failure(resp);
  on.start({ requestId: resp.headers.get("x-request-id") });
  let done = false;
  await readEvents(resp.body, (data) => {
    if (done) return;
    if (data === "[DONE]") {
      done = true;
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch {
      on.streamError({ message: `unreadable event from the server: ${data.slice(0, 200)}` });
      return;
    }
    if (chunk.error) {
      on.streamError(chunk.error);
      return;
    }
    if (chunk.usage) on.usage(chunk.usage);
    for (const choice of chunk.choices || []) {
      if (choice.index !== undefined && choice.index !== 0) continue;
      const delta = choice.delta || {};
      const reasoning = delta.reasoning_content ?? delta.reasoning;
      if (reasoning) on.reasoning(reasoning);
      if (delta.content) on.content(delta.content);
      if (choice.finish_reason) on.finish(choice.finish_reason);
    }
  });
}
