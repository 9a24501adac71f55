"""POST /v1/chat/completions: which fields exist and what values they may take.

`validate_chat_request(body)` checks a parsed JSON object against OpenAI's
CreateChatCompletionRequest and raises `APIError` (400) naming the first bad field;
it returns the same dict, which `shim.translate.chat` then maps to a proto.

Policy for the spec's fields:
  implemented        model, messages, temperature, top_p, seed, presence_penalty,
                     frequency_penalty, logit_bias, max_tokens, max_completion_tokens,
                     stop, n, logprobs, top_logprobs, stream, stream_options,
                     response_format (text, json_object, json_schema: enforced by the core),
                     reasoning_effort, tools, tool_choice, parallel_tool_calls, functions,
                     function_call (checked in shim.protocol.tools)
  accepted, ignored  user, metadata, store, service_tier, safety_identifier,
                     prompt_cache_key, prompt_cache_retention, prompt_cache_options,
                     verbosity
  content parts      text, refusal (assistant), image_url (user: http(s) or data: URL,
                     detail; fetched and decoded by the core), input_audio (user: base64
                     data, checked here, and a format hint)
  not implemented    audio, prediction, web_search_options, moderation, modalities with
                     "audio", file content parts, custom tools
                     -> 400 unsupported_parameter
  genapi extensions  ignore_eos (bool: keep generating past end-of-sequence; benchmarks)
  anything else      -> 400 unknown_parameter "Unrecognized request argument supplied: x"
Null means "not set" for every optional field. Unknown keys inside messages and
content parts are ignored (clients add bookkeeping fields there).

Bounds (400 string_above_max_length naming the field), checked even on fields that are
ignored or refused as unsupported: identifiers (model, message and function names, tool
call ids, user, prompt_cache_key) at most MAX_ID_CHARS, safety_identifier 64 (the spec's),
stop strings MAX_STOP_CHARS, metadata at most 16 pairs of 64-character keys and
512-character values (the spec's). Client text quoted in a message is clipped.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from genapi.untrusted import MAX_ID_CHARS, MAX_STOP_CHARS
from shim.errors import APIError
from shim.protocol.tools import validate_tools
from shim.protocol.common import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    UINT32_MAX,
    check_max_length,
    check_range,
    check_text,
    expect_array,
    expect_bool,
    expect_id,
    expect_int,
    expect_number,
    expect_object,
    expect_str,
    invalid_type,
    invalid_value,
    shown,
    is_number,
    missing,
    quote,
    unknown_parameter,
    unsupported,
)

IMPLEMENTED = frozenset({
    "model", "messages", "temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
    "logit_bias", "max_tokens", "max_completion_tokens", "stop", "n", "logprobs", "top_logprobs",
    "stream", "stream_options", "ignore_eos", "response_format", "reasoning_effort", "tools", "tool_choice",
    "parallel_tool_calls", "functions", "function_call",
})
IGNORED = frozenset({
    "user", "metadata", "store", "service_tier", "safety_identifier", "prompt_cache_key",
    "prompt_cache_retention", "prompt_cache_options", "verbosity",
})
NOT_IMPLEMENTED = frozenset({
    "audio", "prediction", "web_search_options", "moderation", "modalities",
})
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
KNOWN_FIELDS = IMPLEMENTED | IGNORED | NOT_IMPLEMENTED

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_N = 128
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_SAFETY_IDENTIFIER = 64  # OpenAI's spec: maxLength 64
MAX_SCHEMA_NAME = 64  # OpenAI's spec for response_format.json_schema.name
# Nesting of a response_format schema (objects and arrays): a protobuf Struct takes about
# three message levels per JSON level and protobuf parses at most 100.
MAX_SCHEMA_DEPTH = 24
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512  # OpenAI's Metadata

# Content part types each role may use, and those this server does not implement yet.
PART_TYPES = {
    "system": {"text"},
    "developer": {"text"},
    "tool": {"text"},
    "user": {"text", "image_url", "input_audio", "file"},
    "assistant": {"text", "refusal"},
}
UNSUPPORTED_PART_TYPES = {"file"}
IMAGE_DETAILS = ("auto", "low", "high")


def validate_chat_request(body: Any) -> dict:
    """Raises APIError(400) for the first problem; returns `body` unchanged."""
    if not isinstance(body, dict):
        raise invalid_type("body", "an object", body)
    for key in body:
        if key not in KNOWN_FIELDS:
            raise unknown_parameter(key)

    _validate_model(body)
    _validate_messages(body)
    _validate_sampling(body)
    _validate_stopping(body)
    _validate_output(body)
    _validate_stream(body)
    _validate_reasoning(body)
    _validate_ignored(body)
    _validate_not_implemented(body)
    validate_response_format(body)
    return body


def _present(body: dict, key: str) -> bool:
    return body.get(key) is not None


# --- required fields -------------------------------------------------------------------

def _validate_model(body: dict) -> None:
    if "model" not in body:
        raise missing("model")
    expect_id(body["model"], "model", non_empty=True)


def _validate_messages(body: dict) -> None:
    if "messages" not in body:
        raise missing("messages")
    messages = expect_array(body["messages"], "messages")
    if not messages:
        raise invalid_value("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1, "
                                        "but got an empty array instead.")
    for i, message in enumerate(messages):
        validate_message(message, f"messages[{i}]")


def validate_message(message: Any, param: str) -> None:
    msg = expect_object(message, param)
    if "role" not in msg:
        raise missing(f"{param}.role")
    role = msg["role"]
    if not isinstance(role, str):
        raise invalid_type(f"{param}.role", "a string", role)
    if role == "function":  # legacy function calling: the result of the assistant's function_call
        if "name" not in msg:
            raise missing(f"{param}.name")
        expect_id(msg["name"], f"{param}.name", non_empty=True)
        if msg.get("content") is None:
            raise missing(f"{param}.content")
        _validate_content(msg["content"], f"{param}.content", "tool")
        return
    if role not in ROLES:
        raise invalid_value(f"{param}.role", f"Invalid value for '{param}.role': {quote(role)}. Supported values are: "
                                             + ", ".join(repr(r) for r in ROLES) + ".")

    if msg.get("name") is not None:
        expect_id(msg["name"], f"{param}.name")

    if role == "assistant":
        if msg.get("content") is not None:
            _validate_content(msg["content"], f"{param}.content", role)
        if msg.get("refusal") is not None:
            expect_str(msg["refusal"], f"{param}.refusal")
        if msg.get("tool_calls") is not None:
            _validate_tool_calls(msg["tool_calls"], f"{param}.tool_calls")
        if msg.get("function_call") is not None:  # legacy function calling
            if msg.get("tool_calls") is not None:
                raise invalid_value(f"{param}.function_call", f"Invalid '{param}': give either 'tool_calls' or "
                                                              "'function_call', not both.")
            fn = expect_object(msg["function_call"], f"{param}.function_call")
            for key in ("name", "arguments"):
                if key not in fn:
                    raise missing(f"{param}.function_call.{key}")
            expect_id(fn["name"], f"{param}.function_call.name", non_empty=True)
            expect_str(fn["arguments"], f"{param}.function_call.arguments")
        if msg.get("audio") is not None:
            raise unsupported(f"{param}.audio")
        return

    if "content" not in msg:
        raise missing(f"{param}.content")
    _validate_content(msg["content"], f"{param}.content", role)
    if role == "tool":
        if "tool_call_id" not in msg:
            raise missing(f"{param}.tool_call_id")
        expect_id(msg["tool_call_id"], f"{param}.tool_call_id")


def _validate_content(content: Any, param: str, role: str) -> None:
    if isinstance(content, str):
        check_text(content, param)
        return
    if not isinstance(content, list):
        raise invalid_type(param, "a string or an array of content parts", content)
    if not content:
        raise invalid_value(param, f"Invalid '{param}': empty array. Expected a string or an array with "
                                   "minimum length 1.")
    allowed = PART_TYPES[role]
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        expect_object(part, p)
        if "type" not in part:
            raise missing(f"{p}.type")
        ptype = part["type"]
        if not isinstance(ptype, str):
            raise invalid_type(f"{p}.type", "a string", ptype)
        if ptype not in allowed:
            raise invalid_value(f"{p}.type", f"Invalid value for '{p}.type': {quote(ptype)}. Supported values for "
                                             f"role '{role}' are: " + ", ".join(repr(t) for t in sorted(allowed)) + ".")
        if ptype in UNSUPPORTED_PART_TYPES:
            raise unsupported(p, f"Content parts of type '{ptype}'")
        if ptype == "image_url":
            _validate_image_part(part, p)
            continue
        if ptype == "input_audio":
            _validate_audio_part(part, p)
            continue
        field = "refusal" if ptype == "refusal" else "text"
        if field not in part:
            raise missing(f"{p}.{field}")
        expect_str(part[field], f"{p}.{field}")


def _validate_image_part(part: dict, p: str) -> None:
    """Shape only: the URL (http(s) or data:) is fetched and decoded by the core."""
    if "image_url" not in part:
        raise missing(f"{p}.image_url")
    image = expect_object(part["image_url"], f"{p}.image_url")
    if "url" not in image:
        raise missing(f"{p}.image_url.url")
    expect_str(image["url"], f"{p}.image_url.url", non_empty=True)
    detail = image.get("detail")
    if detail is not None and detail not in IMAGE_DETAILS:
        raise invalid_value(f"{p}.image_url.detail", f"Invalid value for '{p}.image_url.detail': {shown(detail)}. "
                                                     "Supported values are: 'auto', 'low' and 'high'.")


def _validate_audio_part(part: dict, p: str) -> None:
    """Shape and base64 here (the proto carries bytes: `data` is replaced by its decoded
    bytes, which JSON cannot carry, so validating the same body again keeps them);
    decoding the audio is the core's."""
    if "input_audio" not in part:
        raise missing(f"{p}.input_audio")
    audio = expect_object(part["input_audio"], f"{p}.input_audio")
    for key in ("data", "format"):
        if key not in audio:
            raise missing(f"{p}.input_audio.{key}")
        if not (key == "data" and isinstance(audio[key], bytes) and audio[key]):
            expect_str(audio[key], f"{p}.input_audio.{key}", non_empty=True)
    check_max_length(audio["format"], f"{p}.input_audio.format", 16)
    if isinstance(audio["data"], bytes):
        return
    try:
        # Decoded once, here: the translation to the proto takes these bytes (a 20 MB clip
        # is not decoded twice, nor held twice as text and bytes).
        audio["data"] = base64.b64decode(audio["data"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_value(f"{p}.input_audio.data", f"Invalid '{p}.input_audio.data': not valid base64.") from None


def _validate_tool_calls(tool_calls: Any, param: str) -> None:
    for k, call in enumerate(expect_array(tool_calls, param)):
        p = f"{param}[{k}]"
        expect_object(call, p)
        if "type" not in call:  # required by OpenAI's spec (found by schemathesis, negative mode)
            raise missing(f"{p}.type")
        ctype = call["type"]
        if ctype == "custom":
            raise unsupported(f"{p}.type", "Custom tool calls")
        if ctype != "function":
            raise invalid_value(f"{p}.type", f"Invalid value for '{p}.type': expected 'function'.")
        for key in ("id", "function"):
            if key not in call:
                raise missing(f"{p}.{key}")
        expect_id(call["id"], f"{p}.id")
        fn = expect_object(call["function"], f"{p}.function")
        for key in ("name", "arguments"):
            if key not in fn:
                raise missing(f"{p}.function.{key}")
        expect_id(fn["name"], f"{p}.function.name")
        expect_str(fn["arguments"], f"{p}.function.arguments")


# --- optional knobs --------------------------------------------------------------------

def _validate_sampling(body: dict) -> None:
    if _present(body, "temperature"):
        expect_number(body["temperature"], "temperature", minimum=0, maximum=2)
    if _present(body, "top_p"):
        expect_number(body["top_p"], "top_p", exclusive_minimum=0, maximum=1)
    for key in ("presence_penalty", "frequency_penalty"):
        if _present(body, key):
            expect_number(body[key], key, minimum=-2, maximum=2)
    if _present(body, "seed"):
        expect_int(body["seed"], "seed", minimum=INT64_MIN, maximum=INT64_MAX)
    if _present(body, "logit_bias"):
        for key, value in expect_object(body["logit_bias"], "logit_bias").items():
            if not (key.isascii() and key.isdigit()) or len(key) > 10 or int(key) > INT32_MAX:
                raise invalid_value("logit_bias", f"Invalid key in 'logit_bias': {quote(key, 32)} is not a token id "
                                                  "(a non-negative integer).")
            if not is_number(value):
                raise invalid_type(f"logit_bias.{key}", "a number", value)
            check_range(value, f"logit_bias.{key}", minimum=-100, maximum=100)


def _validate_stopping(body: dict) -> None:
    if _present(body, "ignore_eos"):
        expect_bool(body["ignore_eos"], "ignore_eos")
    for key in ("max_tokens", "max_completion_tokens"):
        if _present(body, key):
            expect_int(body[key], key, minimum=1, maximum=UINT32_MAX)
    if _present(body, "max_tokens") and _present(body, "max_completion_tokens") \
            and body["max_tokens"] != body["max_completion_tokens"]:
        raise invalid_value("max_tokens", "'max_tokens' and 'max_completion_tokens' are aliases and were given "
                                          "different values; set only one of them.")
    if _present(body, "stop"):
        stop = body["stop"]
        if isinstance(stop, str):
            expect_str(stop, "stop", non_empty=True, max_length=MAX_STOP_CHARS)
        elif isinstance(stop, list):
            if len(stop) > MAX_STOP:
                raise invalid_value("stop", f"Invalid 'stop': array too long. Expected an array with maximum length "
                                            f"{MAX_STOP}, but got an array with length {len(stop)} instead.")
            for i, s in enumerate(stop):
                expect_str(s, f"stop[{i}]", non_empty=True, max_length=MAX_STOP_CHARS)
        else:
            raise invalid_type("stop", "a string or an array of strings", stop)


def _validate_output(body: dict) -> None:
    if _present(body, "n"):
        expect_int(body["n"], "n", minimum=1, maximum=MAX_N)
    if _present(body, "logprobs"):
        expect_bool(body["logprobs"], "logprobs")
    if _present(body, "top_logprobs"):
        top = expect_int(body["top_logprobs"], "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
        if top > 0 and body.get("logprobs") is not True:
            raise invalid_value("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be set to true when "
                                                "'top_logprobs' is used.")


def _validate_stream(body: dict) -> None:
    stream = False
    if _present(body, "stream"):
        stream = expect_bool(body["stream"], "stream")
    if _present(body, "stream_options"):
        opts = expect_object(body["stream_options"], "stream_options")
        if not stream:
            raise invalid_value("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is "
                                                  "enabled.")
        for key, value in opts.items():
            if key not in ("include_usage", "include_obfuscation"):
                raise unknown_parameter(f"stream_options.{key}")
            if value is not None:
                expect_bool(value, f"stream_options.{key}")


def _validate_reasoning(body: dict) -> None:
    if _present(body, "reasoning_effort"):
        effort = expect_str(body["reasoning_effort"], "reasoning_effort")
        if effort not in REASONING_EFFORTS:
            raise invalid_value("reasoning_effort", f"Invalid value for 'reasoning_effort': {quote(effort)}. "
                                                    "Supported values are: "
                                                    + ", ".join(repr(e) for e in REASONING_EFFORTS) + ".")


IGNORED_ID_BOUNDS = {"user": MAX_ID_CHARS, "prompt_cache_key": MAX_ID_CHARS,
                     "safety_identifier": MAX_SAFETY_IDENTIFIER}


def _validate_ignored(body: dict) -> None:
    for key in ("user", "service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                "verbosity"):
        if _present(body, key) and not isinstance(body[key], str):
            raise invalid_type(key, "a string", body[key])
        if key in IGNORED_ID_BOUNDS and _present(body, key):
            check_max_length(body[key], key, IGNORED_ID_BOUNDS[key])
    if _present(body, "store"):
        expect_bool(body["store"], "store")
    if _present(body, "prompt_cache_options"):
        expect_object(body["prompt_cache_options"], "prompt_cache_options")
    if _present(body, "metadata"):
        metadata = expect_object(body["metadata"], "metadata")
        if len(metadata) > MAX_METADATA_PAIRS:
            raise invalid_value("metadata", f"Invalid 'metadata': too many properties. Expected an object with at most "
                                            f"{MAX_METADATA_PAIRS} properties, but got an object with {len(metadata)} "
                                            "properties instead.")
        for key, value in metadata.items():
            if len(key) > MAX_METADATA_KEY:
                raise APIError(400, f"Invalid 'metadata': key too long. Expected keys with maximum length "
                                    f"{MAX_METADATA_KEY}, but got a key with length {len(key)} instead.",
                               "invalid_request_error", "metadata", "string_above_max_length")
            if not isinstance(value, str):
                raise invalid_type(f"metadata.{key}", "a string", value)
            check_max_length(value, f"metadata.{key}", MAX_METADATA_VALUE)


def _bound_name(obj: Any, path: tuple[str, ...], param: str) -> None:
    """Bounds the identifier at `obj[path...]` when it is a string (the shape is otherwise
    left to the feature's own validation, or its 'unsupported' refusal)."""
    for key in path:
        if not isinstance(obj, dict):
            return
        obj = obj.get(key)
    if isinstance(obj, str):
        check_max_length(obj, param, MAX_ID_CHARS)


def _validate_not_implemented(body: dict) -> None:
    # Names are bounded first (string_above_max_length before any other check of theirs).
    for key, path in (("tools", ("function", "name")), ("functions", ("name",))):
        if _present(body, key) and isinstance(body[key], list):
            for i, item in enumerate(body[key]):
                _bound_name(item, path, f"{key}[{i}].{'.'.join(path)}")
                if key == "tools":
                    _bound_name(item, ("custom", "name"), f"tools[{i}].custom.name")
    for key, path in (("tool_choice", ("function", "name")), ("tool_choice", ("custom", "name")),
                      ("function_call", ("name",))):
        _bound_name(body.get(key), path, f"{key}.{'.'.join(path)}")
    _bound_name(body.get("response_format"), ("json_schema", "name"), "response_format.json_schema.name")

    validate_tools(body)
    for key in ("audio", "prediction", "web_search_options", "moderation"):
        if _present(body, key):
            raise unsupported(key)
    if _present(body, "modalities"):
        for i, m in enumerate(expect_array(body["modalities"], "modalities")):
            if m == "audio":
                raise unsupported("modalities", "Audio output ('modalities': ['audio'])")
            if m != "text":
                raise invalid_value(f"modalities[{i}]", f"Invalid value for 'modalities[{i}]': expected 'text' "
                                                        "or 'audio'.")


def validate_response_format(body: dict) -> None:
    """{"type": "text" | "json_object"} or {"type": "json_schema", "json_schema": {"name",
    "schema"?, "strict"?, "description"?}}. The schema's own validity (its metaschema, and
    whether it compiles to a grammar) is the core's to judge."""
    if not _present(body, "response_format"):
        return
    fmt = expect_object(body["response_format"], "response_format")
    if "type" not in fmt:
        raise missing("response_format.type")
    ftype = fmt["type"]
    if not isinstance(ftype, str):
        raise invalid_type("response_format.type", "a string", ftype)
    if ftype not in RESPONSE_FORMATS:
        raise invalid_value("response_format.type", f"Invalid value for 'response_format.type': {quote(ftype)}. "
                                                    "Supported values are: 'text', 'json_object', 'json_schema'.")
    if ftype != "json_schema":
        return
    if fmt.get("json_schema") is None:
        raise missing("response_format.json_schema")
    spec = expect_object(fmt["json_schema"], "response_format.json_schema")
    if spec.get("name") is None:
        raise missing("response_format.json_schema.name")
    name = expect_str(spec["name"], "response_format.json_schema.name", non_empty=True, max_length=MAX_SCHEMA_NAME)
    if not all(c.isascii() and (c.isalnum() or c in "_-") for c in name):
        raise invalid_value("response_format.json_schema.name",
                            f"Invalid 'response_format.json_schema.name': {quote(name)}. It may only contain "
                            "letters, digits, underscores and dashes.")
    if spec.get("schema") is not None:
        expect_object(spec["schema"], "response_format.json_schema.schema")
        if _depth(spec["schema"], MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
            raise invalid_value("response_format.json_schema.schema",
                                f"Invalid schema for response_format: nested more than {MAX_SCHEMA_DEPTH} levels deep.")
    if spec.get("strict") is not None:
        expect_bool(spec["strict"], "response_format.json_schema.strict")
    if spec.get("description") is not None:
        expect_str(spec["description"], "response_format.json_schema.description")


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of JSON containers (breadth first, no recursion), counted to limit + 1."""
    depth, level = 0, [value]
    while depth <= limit:
        level = [c for c in level if isinstance(c, (dict, list))]
        if not level:
            break
        depth += 1
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c)]
    return depth
