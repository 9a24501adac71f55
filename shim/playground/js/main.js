// The playground page: wires the chat, the settings column, View code and the key prompt.
//
// State: `turns` ([{ role: "user"|"assistant", content, reasoning?, view }]) is the
// conversation sent to the API; errors are shown in the conversation but never sent.
// window.playground exposes { ready (Promise), renderMarkdown(text) -> sanitized HTML,
// loadConversation([{ role, content, reasoning? }]), request() -> the body the next send
// would use, snippet(language) } for tests and the curious.

import { ApiError, describeError, listModels, streamChat } from "./api.js";
import { loadRenderer, renderInto, toSafeHtml } from "./markdown.js";
import { chatModels, chatRequest, DEFAULTS, parseSettings } from "./settings.js";
import { createCodeView } from "./codeview.js";
import { KEY_ENV, snippet } from "./snippets.js";

const KEY_STORAGE = "genapi.apiKey";
const API_BASE = new URL("../v1", location.href).href; // the page lives at <root>/playground/

const $ = (id) => document.getElementById(id);
const state = {
  turns: [],
  busy: null, // { controller, turn } while an answer streams
  keyRequired: false,
};

// --- key -------------------------------------------------------------------------------

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

function askForKey(message = "") {
  $("key-error").textContent = message;
  $("api-key").value = "";
  $("key-forget").hidden = !apiKey();
  if (!$("key-dialog").open) $("key-dialog").showModal();
  $("api-key").focus();
}

async function submitKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    $("key-error").textContent = "Enter a key.";
    return;
  }
  $("key-save").disabled = true;
  try {
    const reply = await listModels(API_BASE, key);
    sessionStorage.setItem(KEY_STORAGE, key);
    state.keyRequired = true;
    $("key-button").hidden = false;
    $("key-dialog").close();
    fillModels(reply);
  } catch (err) {
    $("key-error").textContent = describeError(err);
  } finally {
    $("key-save").disabled = false;
  }
}

// --- models ----------------------------------------------------------------------------

function fillModels(reply) {
  const select = $("model");
  const previous = select.value;
  const ids = chatModels(reply);
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(previous)) select.value = previous;
  select.disabled = ids.length === 0;
  if (ids.length === 0) select.append(new Option("no chat model served", ""));
  refreshCode();
}

async function loadModels() {
  // A key kept from earlier in this tab was asked for: the server needs one.
  state.keyRequired = Boolean(apiKey());
  $("key-button").hidden = !state.keyRequired;
  try {
    fillModels(await listModels(API_BASE, apiKey()));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      state.keyRequired = true;
      $("key-button").hidden = false;
      askForKey(apiKey() ? describeError(err) : "");
    } else {
      showError(`Could not list the models: ${describeError(err)}`);
    }
  }
}

// --- settings --------------------------------------------------------------------------

const FIELDS = ["temperature", "top_p", "max_tokens", "presence_penalty", "frequency_penalty", "seed", "stop",
  "logit_bias", "response_format", "json_schema"];

function currentSettings() {
  const raw = { model: $("model").value, system: $("system").value };
  for (const name of FIELDS) raw[name] = $(name).value;
  const { settings, errors } = parseSettings(raw);
  for (const name of FIELDS) {
    const box = $(`${name}-error`);
    if (!box) continue;
    box.textContent = errors[name] || "";
    $(name).setAttribute("aria-invalid", errors[name] ? "true" : "false");
  }
  return { settings, errors };
}

function resetSettings() {
  for (const name of FIELDS) {
    const d = DEFAULTS[name];
    $(name).value = d === null || Array.isArray(d) ? "" : String(d);
    const range = $(`${name}-range`);
    if (range) range.value = $(name).value;
  }
  $("json-schema-field").hidden = true;
  currentSettings();
  refreshCode();
}

// --- conversation ----------------------------------------------------------------------

function scrollToEnd() {
  const box = $("conversation");
  box.scrollTop = box.scrollHeight;
}

function addMessage(role, { text = "", reasoning = "" } = {}) {
  $("suggestions").hidden = true;
  const article = document.createElement("article");
  article.className = `msg ${role}`;
  article.setAttribute("aria-label", { user: "You", assistant: "Assistant", error: "Error" }[role]);
  const who = document.createElement("p");
  who.className = "who";
  who.textContent = { user: "You", assistant: "Assistant", error: "Error" }[role];
  article.append(who);
  const details = document.createElement("details");
  details.className = "reasoning";
  details.hidden = true;
  const summary = document.createElement("summary");
  summary.textContent = "Reasoning";
  const reasoningBox = document.createElement("div");
  reasoningBox.className = "reasoning-text";
  details.append(summary, reasoningBox);
  const content = document.createElement("div");
  content.className = "content";
  const stats = document.createElement("p");
  stats.className = "stats";
  article.append(details, content, stats);
  $("conversation").append(article);
  const view = { article, content, details, reasoningBox, stats };
  paint(view, role, text, reasoning);
  scrollToEnd();
  return view;
}

function paint(view, role, text, reasoning) {
  if (role === "assistant") renderInto(view.content, text);
  else view.content.textContent = text; // user text and errors are never markup
  if (reasoning) {
    view.details.hidden = false;
    view.reasoningBox.textContent = reasoning;
  }
}

function showError(text) {
  addMessage("error", { text }).article.setAttribute("role", "alert");
}

function updateButtons() {
  const busy = state.busy !== null;
  $("send").hidden = busy;
  $("stop-answer").hidden = !busy;
  $("regenerate").disabled = busy || !state.turns.some((t) => t.role === "user");
  $("clear").disabled = busy || $("conversation").querySelector(".msg") === null;
  $("model").disabled = busy || $("model").options.length === 0 || !$("model").value;
}

function clearConversation() {
  if (state.busy) return;
  state.turns = [];
  for (const el of [...$("conversation").querySelectorAll(".msg")]) el.remove();
  $("suggestions").hidden = false;
  updateButtons();
  refreshCode();
}

function loadConversation(messages) {
  clearConversation();
  for (const m of messages) {
    const view = addMessage(m.role, { text: m.content, reasoning: m.reasoning || "" });
    if (m.role === "user" || m.role === "assistant") state.turns.push({ role: m.role, content: m.content, view });
  }
  updateButtons();
  refreshCode();
}

// tokens after the first over the time after the first; null when it cannot be known.
function decodeRate(tokens, firstAt, lastAt) {
  if (!tokens || tokens < 2 || firstAt === null || lastAt <= firstAt) return null;
  return (tokens - 1) / ((lastAt - firstAt) / 1000);
}

function statsText(s) {
  const parts = [];
  if (s.tokens !== null) parts.push(`${s.tokens} tokens`);
  if (s.ttftMs !== null) parts.push(`TTFT ${Math.round(s.ttftMs)} ms`);
  if (s.rate !== null) parts.push(`${s.rate.toFixed(1)} tokens/s`);
  if (s.finish) parts.push(`finish: ${s.finish}`);
  if (s.stopped) parts.push("stopped");
  return parts.join(" · ");
}

async function answer() {
  const { settings, errors } = currentSettings();
  if (Object.keys(errors).length) {
    dropUnanswered();
    showError("Fix the settings marked in the right-hand column first.");
    return;
  }
  if (!settings.model) {
    dropUnanswered();
    showError(state.keyRequired && !apiKey() ? "Enter an API key (the API key button) to load the models."
      : "No chat model is available.");
    return;
  }
  const body = chatRequest(settings, state.turns);
  const view = addMessage("assistant");
  view.article.setAttribute("aria-busy", "true");
  const turn = { role: "assistant", content: "", reasoning: "", view };
  const controller = new AbortController();
  state.busy = { controller, turn };
  updateButtons();
  $("status").textContent = "Generating…";

  const started = performance.now();
  const s = { tokens: null, ttftMs: null, rate: null, finish: null, stopped: false };
  let firstAt = null;
  let lastAt = null;
  let frame = 0;
  const repaint = () => {
    frame = 0;
    paint(view, "assistant", turn.content, turn.reasoning);
    scrollToEnd();
  };
  const arrived = () => {
    lastAt = performance.now();
    if (firstAt === null) {
      firstAt = lastAt;
      s.ttftMs = firstAt - started;
    }
    if (!frame) frame = requestAnimationFrame(repaint);
  };
  let streamError = null;
  let started_ok = false;
  try {
    await streamChat({
      apiBase: API_BASE, key: apiKey(), body, signal: controller.signal,
      on: {
        start: ({ requestId }) => {
          started_ok = true;
          if (requestId) view.article.dataset.requestId = requestId;
        },
        content: (text) => { turn.content += text; arrived(); },
        reasoning: (text) => { turn.reasoning += text; arrived(); },
        usage: (usage) => { s.tokens = usage.completion_tokens ?? s.tokens; },
        finish: (reason) => { s.finish = reason; },
        streamError: (error) => { streamError = error; },
      },
    });
  } catch (err) {
    if (err.name === "AbortError") {
      s.stopped = true;
    } else {
      streamError = { message: describeError(err) };
      if (err instanceof ApiError && err.status === 401) {
        state.keyRequired = true;
        $("key-button").hidden = false;
        askForKey(describeError(err));
      }
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    repaint();
    view.article.removeAttribute("aria-busy");
    state.busy = null;
  }
  if (!started_ok && !s.stopped) {
    view.article.remove(); // nothing was answered: the error alone is shown
    dropUnanswered();
  } else {
    s.rate = decodeRate(s.tokens, firstAt, lastAt ?? firstAt);
    view.stats.textContent = statsText(s);
    for (const [k, v] of Object.entries({ tokens: s.tokens, ttftMs: s.ttftMs, rate: s.rate, finish: s.finish })) {
      if (v !== null) view.stats.dataset[k] = String(v);
    }
    state.turns.push(turn);
  }
  if (streamError) {
    const message = streamError.message || JSON.stringify(streamError);
    showError(started_ok ? `The stream failed after it started: ${message}` : message);
  }
  $("status").textContent = s.stopped ? "Stopped." : streamError ? "Failed." : "Answer complete.";
  updateButtons();
  refreshCode();
}

// A refused request leaves its user turn out of the conversation (it would be sent, and
// refused, again with every later message): shown as not sent, its text back in the box.
function dropUnanswered() {
  const last = state.turns[state.turns.length - 1];
  if (!last || last.role !== "user") return;
  state.turns.pop();
  last.view.article.classList.add("unsent");
  last.view.article.dataset.unsent = "true";
  last.view.article.title = "Refused: not part of the conversation (its text is back in the input box)";
  if (!$("prompt").value.trim()) $("prompt").value = last.content;
}

// `fromBox`: the text is the input box's (emptied once sent); a suggestion leaves a draft there.
function send(text, fromBox = true) {
  if (state.busy || !text.trim()) return;
  const view = addMessage("user", { text });
  state.turns.push({ role: "user", content: text, view });
  if (fromBox) $("prompt").value = "";
  answer();
}

function regenerate() {
  if (state.busy) return;
  // Drop everything after the last user turn (its answer, and any error shown since).
  const lastUser = state.turns.map((t) => t.role).lastIndexOf("user");
  if (lastUser < 0) return;
  const keep = state.turns[lastUser].view.article;
  while (keep.nextElementSibling) keep.nextElementSibling.remove();
  state.turns = state.turns.slice(0, lastUser + 1);
  answer();
}

// --- View code -------------------------------------------------------------------------

function pendingRequest() {
  const { settings } = currentSettings();
  const turns = state.turns.map(({ role, content }) => ({ role, content }));
  const draft = $("prompt").value;
  if (draft.trim()) turns.push({ role: "user", content: draft });
  return chatRequest(settings, turns);
}

function codeFor(language) {
  return snippet(language, { baseUrl: API_BASE, body: pendingRequest(), keyRequired: state.keyRequired });
}

let codeView = null;

function refreshCode() {
  if (codeView) codeView.refresh();
}

// --- wiring ----------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send($("prompt").value); });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send($("prompt").value);
    }
  });
  $("prompt").addEventListener("input", refreshCode);
  // Stop takes Send's place while busy: the second click of a double-click on Send (detail 2)
  // lands on it and must not stop the answer it just asked for.
  $("stop-answer").addEventListener("click", (e) => e.detail < 2 && state.busy && state.busy.controller.abort());
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", clearConversation);
  for (const b of document.querySelectorAll(".suggestion")) {
    b.addEventListener("click", () => send(b.textContent, false));
  }
  $("system").addEventListener("input", refreshCode);
  $("model").addEventListener("change", refreshCode);
  for (const range of document.querySelectorAll("input[type=range][data-pair]")) {
    const number = $(range.dataset.pair);
    range.addEventListener("input", () => { number.value = range.value; currentSettings(); refreshCode(); });
    number.addEventListener("input", () => { range.value = number.value; });
  }
  for (const name of FIELDS) {
    $(name).addEventListener("input", () => { currentSettings(); refreshCode(); });
  }
  $("response_format").addEventListener("change", () => {
    $("json-schema-field").hidden = $("response_format").value !== "json_schema";
    currentSettings();
    refreshCode();
  });
  $("settings-form").addEventListener("submit", (e) => e.preventDefault()); // Enter in a field sends nothing
  $("reset-settings").addEventListener("click", resetSettings);
  $("settings-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("settings-open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });

  codeView = createCodeView(codeFor);
  $("view-code").addEventListener("click", () => codeView.open());

  $("key-form").addEventListener("submit", submitKey);
  // Esc (or closing it) without a key: say what is missing instead of leaving the page waiting.
  $("key-dialog").addEventListener("close", () => {
    if (!apiKey()) showError("An API key is needed to load the models: use the API key button to enter one.");
  });
  $("key-button").addEventListener("click", () => askForKey());
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    askForKey();
  });
}

async function main() {
  wire();
  updateButtons();
  const rendererLoaded = await loadRenderer();
  document.body.dataset.markdown = rendererLoaded ? "on" : "off";
  await loadModels();
  updateButtons();
  document.body.dataset.ready = "true";
}

const ready = main();
window.playground = Object.freeze({
  ready,
  keyEnv: KEY_ENV,
  renderMarkdown: (text) => toSafeHtml(text),
  loadConversation,
  request: pendingRequest,
  snippet: codeFor,
});
