"""Pure OpenAI chat <-> genapi.v1 translation (no Flask, no channel).

Request:  `chat_request_to_proto(body, request_id)` maps a validated
          CreateChatCompletionRequest dict to a `GenerateRequest`.
Response: `ChatCompletionAccumulator` / `build_chat_completion` fold `GenerateResponse`
          events into a `chat.completion` object; `ChatChunkBuilder` turns them into
          `chat.completion.chunk` objects one event at a time.
"""
from __future__ import annotations

import math
import time
import uuid
from typing import Iterable

from json.encoder import encode_basestring  # the C encoder of a JSON string, non-ASCII kept

from google.protobuf import struct_pb2

from genapi.v1 import common_pb2, content_pb2, generation_service_pb2 as gen_pb2
from shim.jsonutil import RawJSON, dumps
from shim.protocol.chat import IMAGE_DETAILS

ROLE_TO_PROTO = {
    "system": content_pb2.ROLE_SYSTEM,
    "developer": content_pb2.ROLE_DEVELOPER,
    "user": content_pb2.ROLE_USER,
    "assistant": content_pb2.ROLE_ASSISTANT,
    "tool": content_pb2.ROLE_TOOL,
}

FINISH_REASONS = {
    content_pb2.FINISH_REASON_UNSPECIFIED: "stop",
    content_pb2.FINISH_REASON_STOP: "stop",
    content_pb2.FINISH_REASON_LENGTH: "length",
    content_pb2.FINISH_REASON_TOOL_CALLS: "tool_calls",
    content_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}

# With the legacy `functions`, a call ends the choice as "function_call".
LEGACY_FINISH = {"tool_calls": "function_call"}

# OpenAI's stand-in for "too unlikely to say"; JSON has no -Infinity.
VERY_UNLIKELY_LOGPROB = -9999.0

# The smallest positive proto `float` (float32): a top_p the shim accepts (> 0) that
# float32 would round to 0 (which the core refuses) is sent as this, keeping its meaning
# (only the most likely token).
MIN_POSITIVE_FLOAT32 = 1.401298464324817e-45


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def now() -> int:
    return int(time.time())


# --- request ---------------------------------------------------------------------------

#: image_url.detail -> the proto's ImageDetail (the values: shim.protocol.chat.IMAGE_DETAILS)
IMAGE_DETAIL = {d: content_pb2.ImageDetail.Value(f"IMAGE_DETAIL_{d.upper()}") for d in IMAGE_DETAILS}


def _content_parts(content) -> list[content_pb2.ContentPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content_pb2.ContentPart(text=content)]
    parts = []
    for part in content:
        ptype = part.get("type")
        if ptype == "refusal":
            parts.append(content_pb2.ContentPart(text=part["refusal"]))
        elif ptype == "image_url":  # the URL as sent: the core fetches or decodes it
            image = part["image_url"]
            parts.append(content_pb2.ContentPart(image=content_pb2.ImagePart(
                url=image["url"], detail=IMAGE_DETAIL[image.get("detail") or "auto"])))
        elif ptype == "input_audio":  # `data`: bytes, decoded by validation (shim.protocol.chat)
            audio = part["input_audio"]
            parts.append(content_pb2.ContentPart(audio=content_pb2.AudioPart(data=audio["data"], format=audio["format"])))
        else:  # "text" (validation rejects every other type)
            parts.append(content_pb2.ContentPart(text=part["text"]))
    return parts


def message_to_proto(msg: dict) -> content_pb2.ChatMessage:
    out = content_pb2.ChatMessage(role=ROLE_TO_PROTO[msg["role"]], content=_content_parts(msg.get("content")))
    if msg.get("name") is not None:
        out.name = msg["name"]
    if msg["role"] == "tool":
        out.tool_call_id = msg["tool_call_id"]
    for call in msg.get("tool_calls") or ():
        fn = call["function"]
        out.tool_calls.add(id=call["id"], name=fn["name"], arguments=fn["arguments"])
    return out


def messages_to_proto(messages: list[dict]) -> list[content_pb2.ChatMessage]:
    """The conversation, with legacy function calling in today's terms: an assistant
    `function_call` becomes a one-call `tool_calls` and a `function` message the `tool`
    result of the latest call of that name (ids `call_fn_<message index>`: the legacy
    format has none, the chat template pairs calls and results by them)."""
    out, open_calls = [], {}
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant" and msg.get("function_call") is not None:
            fn = msg["function_call"]
            open_calls[fn["name"]] = call_id = f"call_fn_{i}"
            msg = {**msg, "tool_calls": [{"id": call_id, "type": "function", "function": fn}]}
        elif msg["role"] == "function":
            msg = {**msg, "role": "tool", "tool_call_id": open_calls.get(msg["name"], f"call_fn_{i}")}
        out.append(message_to_proto(msg))
    return out


TOOL_CHOICE_MODES = {
    "none": content_pb2.TOOL_CHOICE_MODE_NONE,
    "auto": content_pb2.TOOL_CHOICE_MODE_AUTO,
    "required": content_pb2.TOOL_CHOICE_MODE_REQUIRED,
}
REASONING_EFFORTS = {
    "none": gen_pb2.REASONING_EFFORT_NONE,
    "minimal": gen_pb2.REASONING_EFFORT_MINIMAL,
    "low": gen_pb2.REASONING_EFFORT_LOW,
    "medium": gen_pb2.REASONING_EFFORT_MEDIUM,
    "high": gen_pb2.REASONING_EFFORT_HIGH,
    "xhigh": gen_pb2.REASONING_EFFORT_XHIGH,
    "max": gen_pb2.REASONING_EFFORT_MAX,
}


def tool_to_proto(fn: dict) -> content_pb2.Tool:
    """One function definition (a `tools[i].function` or a legacy `functions[i]`)."""
    tool = content_pb2.Tool(name=fn["name"], description=fn.get("description") or "",
                            strict=fn.get("strict") is True)
    if fn.get("parameters") is not None:
        params = struct_pb2.Struct()
        params.update(fn["parameters"])
        tool.parameters.CopyFrom(params)
    return tool


def tool_choice_to_proto(choice) -> content_pb2.ToolChoice:
    """"none" | "auto" | "required" | {"type": "function", "function": {"name"}} | a legacy
    function_call {"name"}."""
    if isinstance(choice, str):
        return content_pb2.ToolChoice(mode=TOOL_CHOICE_MODES[choice])
    return content_pb2.ToolChoice(function_name=(choice.get("function") or choice)["name"])


def uses_legacy_functions(body: dict) -> bool:
    """The request declared `functions` (answered with `function_call`, OpenAI's old shape)."""
    return bool(body.get("functions"))


def _tools_to_proto(body: dict, req: gen_pb2.GenerateRequest) -> None:
    if body.get("tools"):
        req.tools.extend(tool_to_proto(t["function"]) for t in body["tools"])
    if uses_legacy_functions(body):
        req.tools.extend(tool_to_proto(f) for f in body["functions"])
        req.parallel_tool_calls = False  # a legacy answer holds one function_call
    choice = body.get("tool_choice", body.get("function_call"))
    if choice is not None:
        req.tool_choice.CopyFrom(tool_choice_to_proto(choice))
    if body.get("parallel_tool_calls") is not None:
        req.parallel_tool_calls = body["parallel_tool_calls"]


def stop_list(stop) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def chat_request_to_proto(body: dict, request_id: str = "") -> gen_pb2.GenerateRequest:
    """A validated chat request -> GenerateRequest; knobs absent (or null) stay unset."""
    req = gen_pb2.GenerateRequest(request_id=request_id, model=body["model"])
    req.messages.extend(messages_to_proto(body["messages"]))

    def present(key: str) -> bool:
        return body.get(key) is not None

    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        if present(key):
            setattr(req.sampling, key, float(body[key]))
    if present("top_p") and req.sampling.top_p == 0.0:
        req.sampling.top_p = MIN_POSITIVE_FLOAT32
    if present("seed"):
        req.sampling.seed = body["seed"]
    if body.get("logit_bias"):
        for token, bias in body["logit_bias"].items():
            req.sampling.logit_bias[int(token)] = float(bias)

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        req.stopping.max_tokens = max_tokens
    if present("ignore_eos"):
        req.stopping.ignore_eos = body["ignore_eos"]
    stops = stop_list(body.get("stop"))
    if stops:
        req.stopping.stop.extend(stops)

    if present("logprobs"):
        req.output.logprobs = body["logprobs"]
    if present("top_logprobs"):
        req.output.top_logprobs = body["top_logprobs"]
    if present("n"):
        req.output.n = body["n"]
    if present("response_format"):
        req.response_format.CopyFrom(response_format_to_proto(body["response_format"]))
    _tools_to_proto(body, req)
    if present("reasoning_effort"):
        req.reasoning_effort = REASONING_EFFORTS[body["reasoning_effort"]]
    return req


RESPONSE_FORMAT_TYPES = {
    "text": content_pb2.RESPONSE_FORMAT_TYPE_TEXT,
    "json_object": content_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT,
    "json_schema": content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
}


def response_format_to_proto(fmt: dict) -> content_pb2.ResponseFormat:
    """A validated `response_format` -> ResponseFormat (the schema as a Struct)."""
    out = content_pb2.ResponseFormat(type=RESPONSE_FORMAT_TYPES[fmt["type"]])
    spec = fmt.get("json_schema") if fmt["type"] == "json_schema" else None
    if spec:
        out.name = spec["name"]
        out.strict = bool(spec.get("strict"))
        if spec.get("schema") is not None:
            out.schema.update(spec["schema"])
    return out


def include_usage_requested(body: dict) -> bool:
    return bool(body.get("stream") and (body.get("stream_options") or {}).get("include_usage") is True)


def include_obfuscation_requested(body: dict) -> bool:
    """OpenAI's default: obfuscation on every streamed chunk unless turned off."""
    return bool(body.get("stream") and (body.get("stream_options") or {}).get("include_obfuscation") is not False)


# --- response pieces -------------------------------------------------------------------

def usage_to_dict(usage: common_pb2.Usage | None) -> dict:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    out = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else VERY_UNLIKELY_LOGPROB


def _token_bytes(token: str, raw: bytes) -> list[int]:
    return list(raw) if raw else list(token.encode("utf-8", "replace"))


def token_logprob_to_dict(lp: gen_pb2.TokenLogprob) -> dict:
    return {
        "token": lp.token,
        "logprob": _logprob(lp.logprob),
        "bytes": _token_bytes(lp.token, lp.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": _logprob(t.logprob), "bytes": _token_bytes(t.token, t.bytes)}
            for t in lp.top_logprobs
        ],
    }


def finish_reason_name(reason: int) -> str:
    return FINISH_REASONS.get(reason, "stop")


def _event_usage(ev: gen_pb2.GenerateResponse):
    return ev.usage if ev.HasField("usage") else None


# --- non-streaming ---------------------------------------------------------------------

class _Choice:
    __slots__ = ("text", "reasoning", "tool_calls", "logprobs", "finish_reason")

    def __init__(self):
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict] = {}
        self.logprobs: list[dict] = []
        self.finish_reason: str | None = None


class ChatCompletionAccumulator:
    """Folds a Generate event stream into one `chat.completion` object."""

    def __init__(self, *, model: str, n: int = 1, logprobs: bool = False,
                 completion_id: str | None = None, created: int | None = None, legacy_functions: bool = False):
        self.model = model
        self.logprobs = logprobs
        self.legacy_functions = legacy_functions
        self.id = completion_id or new_completion_id()
        self.created = created if created is not None else now()
        self.choices: dict[int, _Choice] = {i: _Choice() for i in range(max(1, n))}
        self.usage = None

    def add(self, ev: gen_pb2.GenerateResponse) -> None:
        if ev.HasField("usage"):
            self.usage = ev.usage
        kind = ev.WhichOneof("event")
        if kind is None or kind == "started":
            return
        choice = self.choices.setdefault(ev.choice_index, _Choice())
        if kind == "text":
            choice.text.append(ev.text.text)
            if self.logprobs:
                choice.logprobs.extend(token_logprob_to_dict(lp) for lp in ev.text.logprobs)
        elif kind == "reasoning":
            choice.reasoning.append(ev.reasoning.text)
        elif kind == "tool_call":
            d = ev.tool_call
            call = choice.tool_calls.setdefault(
                d.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            if d.id:
                call["id"] = d.id
            if d.name:
                call["function"]["name"] = d.name
            call["function"]["arguments"] += d.arguments
        elif kind == "finished":
            choice.finish_reason = finish_reason_name(ev.finished.reason)

    def result(self) -> dict:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            text = "".join(c.text)
            message: dict = {
                "role": "assistant",
                "content": text if (text or not c.tool_calls) else None,
                "refusal": None,
            }
            if c.reasoning:
                message["reasoning_content"] = "".join(c.reasoning)
            finish_reason = c.finish_reason or "stop"
            if c.tool_calls and self.legacy_functions:
                message["function_call"] = c.tool_calls[min(c.tool_calls)]["function"]
                finish_reason = LEGACY_FINISH.get(finish_reason, finish_reason)
            elif c.tool_calls:
                message["tool_calls"] = [c.tool_calls[k] for k in sorted(c.tool_calls)]
            choices.append({
                "index": index,
                "message": message,
                "logprobs": {"content": c.logprobs, "refusal": None} if self.logprobs else None,
                "finish_reason": finish_reason,
            })
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage_to_dict(self.usage),
        }


def build_chat_completion(events: Iterable[gen_pb2.GenerateResponse], *, model: str, n: int = 1,
                          logprobs: bool = False, completion_id: str | None = None,
                          created: int | None = None, legacy_functions: bool = False) -> dict:
    acc = ChatCompletionAccumulator(model=model, n=n, logprobs=logprobs, completion_id=completion_id,
                                    created=created, legacy_functions=legacy_functions)
    for ev in events:
        acc.add(ev)
    return acc.result()


# --- streaming -------------------------------------------------------------------------

class ChatChunkBuilder:
    """Turns Generate events into `chat.completion.chunk` dicts.

    Each choice opens with a `{"role": "assistant", "content": ""}` delta (all n choices
    right after `started`), then one chunk per delta, then exactly one chunk with a
    finish_reason and an empty delta. Usage: without `include_usage` every chunk carries
    the running usage of the event it came from; with it, every chunk has `usage: null`
    and `finish()` returns one extra chunk with `choices: []` and the final usage.
    """

    def __init__(self, *, model: str, n: int = 1, logprobs: bool = False, include_usage: bool = False,
                 completion_id: str | None = None, created: int | None = None, legacy_functions: bool = False,
                 prebuilt: bool = False):
        self.model = model
        self.legacy_functions = legacy_functions
        self.n = max(1, n)
        self.logprobs = logprobs
        self.include_usage = include_usage
        self.id = completion_id or new_completion_id()
        self.created = created if created is not None else now()
        self.usage = None
        self._opened: set[int] = set()
        self._finished: set[int] = set()
        self._tool_calls_seen: dict[int, set[int]] = {}
        # `prebuilt`: a text chunk is returned as RawJSON, the chunk's constant parts encoded
        # once and only its text and usage per chunk: byte for byte what encoding the dict
        # gives (shim.jsonutil.dumps), at a fraction of the cost (bench/frontend.py).
        self._head: str | None = None
        if prebuilt:
            if _utf8_ok(self.id + self.model):  # else dumps escapes the whole chunk: the dict path does that
                head = dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                              "model": self.model})
                self._head = head[:-1] + ',"choices":[{"index":'
        self._usage_key = None
        self._usage_json = "null"

    def _chunk(self, choices: list[dict], usage) -> dict:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": None if self.include_usage else usage_to_dict(usage),
        }

    @staticmethod
    def _choice(index: int, delta: dict, logprobs=None, finish_reason=None) -> dict:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}

    def _open(self, index: int, usage) -> list[dict]:
        if index in self._opened:
            return []
        self._opened.add(index)
        return [self._chunk([self._choice(index, {"role": "assistant", "content": "", "refusal": None})], usage)]

    def on_event(self, ev: gen_pb2.GenerateResponse) -> list[dict]:
        if ev.HasField("usage"):
            self.usage = ev.usage
        usage = self.usage
        kind = ev.WhichOneof("event")
        if kind == "started":
            out = []
            for i in range(self.n):
                out += self._open(i, usage)
            return out
        if kind is None:
            return []
        index = ev.choice_index
        if index in self._finished:
            return []  # nothing may follow a choice's finish chunk
        out = self._open(index, usage)
        if kind == "text":
            if self._head is not None and not self.logprobs and ev.text.text:
                if (raw := self._text_chunk(index, ev.text.text, usage)) is not None:
                    out.append(raw)
                    return out
            lps = None
            if self.logprobs:
                lps = {"content": [token_logprob_to_dict(lp) for lp in ev.text.logprobs], "refusal": None}
            if ev.text.text or (lps and lps["content"]):
                out.append(self._chunk([self._choice(index, {"content": ev.text.text}, lps)], usage))
        elif kind == "reasoning":
            if ev.reasoning.text:
                out.append(self._chunk([self._choice(index, {"reasoning_content": ev.reasoning.text})], usage))
        elif kind == "tool_call":
            d = ev.tool_call
            seen = self._tool_calls_seen.setdefault(index, set())
            fn: dict = {"arguments": d.arguments}
            call: dict = {"index": d.index, "function": fn}
            if d.index not in seen:
                seen.add(d.index)
                fn = {"name": d.name, "arguments": d.arguments}
                call = {"index": d.index, "id": d.id, "type": "function", "function": fn}
            delta = {"function_call": fn} if self.legacy_functions else {"tool_calls": [call]}
            out.append(self._chunk([self._choice(index, delta)], usage))
        elif kind == "finished":
            self._finished.add(index)
            reason = finish_reason_name(ev.finished.reason)
            if self.legacy_functions:
                reason = LEGACY_FINISH.get(reason, reason)
            out.append(self._chunk([self._choice(index, {}, None, reason)], usage))
        return out

    def _text_chunk(self, index: int, text: str, usage) -> RawJSON | None:
        """The text chunk of `_chunk([_choice(index, {"content": text})], usage)`, encoded
        (None when the text is not valid UTF-8: the dict path escapes the whole chunk)."""
        content = encode_basestring(text)
        if not _utf8_ok(content):
            return None
        if not self.include_usage:
            key = (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.reasoning_tokens) \
                if usage is not None else None
            if key != self._usage_key:
                self._usage_key, self._usage_json = key, dumps(usage_to_dict(usage))
        return RawJSON(f'{self._head}{index},"delta":{{"content":{content}}},"logprobs":null,'
                       f'"finish_reason":null}}],"usage":{self._usage_json}}}')

    def finish(self) -> list[dict]:
        """Chunks after the last event: a finish chunk for any choice the core left open
        (defensive; the core ends each choice itself), then the usage chunk when
        include_usage is set."""
        out = []
        for index in sorted(self._opened - self._finished):
            self._finished.add(index)
            out.append(self._chunk([self._choice(index, {}, None, "stop")], self.usage))
        if self.include_usage:
            final = self._chunk([], None)
            final["usage"] = usage_to_dict(self.usage)
            out.append(final)
        return out


def _utf8_ok(text: str) -> bool:
    """Whether `text` encodes to UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
