"""POST /v1/responses and /v1/conversations bodies, checked against OpenAI's spec.

`validate_response_request(body)` raises APIError (400) naming the first bad field and
returns the body unchanged. Supported: model, input (a string or items: messages with
input_text / output_text / refusal / input_image (image_url) parts, function_call,
function_call_output, reasoning), instructions, max_output_tokens, temperature, top_p,
tools (function tools), tool_choice, parallel_tool_calls, text.format (text,
json_object, json_schema), store, previous_response_id, conversation, metadata,
background, include (message.output_text.logprobs, message.input_image.image_url),
top_logprobs, truncation, reasoning.effort, stream. Accepted and ignored: user,
safety_identifier, prompt_cache_key, service_tier, stream_options, reasoning.summary,
text.verbosity. Known but not implemented (400 unsupported_parameter): prompt,
max_tool_calls, prompt_cache_retention, context_management; built-in and custom tools,
other include values, item_reference, input_file and input_audio parts.
"""
from __future__ import annotations

from typing import Any

from shim.errors import APIError
from shim.protocol.chat import MAX_TOP_LOGPROBS, REASONING_EFFORTS, validate_response_format
from shim.protocol.common import (
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
    missing,
    quote,
    unknown_parameter,
    unsupported,
    UINT32_MAX,
)
from shim.protocol.tools import FUNCTION_NAME

IMPLEMENTED = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "tools", "tool_choice",
    "parallel_tool_calls", "text", "store", "previous_response_id", "conversation", "metadata", "background",
    "include", "top_logprobs", "truncation", "stream", "reasoning",
})
IGNORED = frozenset({"user", "safety_identifier", "prompt_cache_key", "service_tier", "stream_options"})
NOT_IMPLEMENTED = frozenset({"prompt", "max_tool_calls", "prompt_cache_retention", "context_management"})
KNOWN_FIELDS = IMPLEMENTED | IGNORED | NOT_IMPLEMENTED

INPUT_ROLES = ("user", "system", "developer", "assistant")
INCLUDE_SUPPORTED = ("message.output_text.logprobs", "message.input_image.image_url")
INCLUDE_KNOWN = INCLUDE_SUPPORTED + (
    "file_search_call.results", "web_search_call.results", "web_search_call.action.sources",
    "computer_call_output.output.image_url", "code_interpreter_call.outputs", "reasoning.encrypted_content")
BUILTIN_TOOLS = ("file_search", "web_search", "web_search_preview", "web_search_2025_08_26",
                 "web_search_preview_2025_03_11", "computer_use_preview", "computer", "code_interpreter",
                 "image_generation", "mcp", "local_shell", "shell", "apply_patch", "custom")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
KNOWN_OTHER_ITEMS = ("item_reference", "file_search_call", "web_search_call", "computer_call",
                     "computer_call_output", "image_generation_call", "code_interpreter_call", "local_shell_call",
                     "local_shell_call_output", "mcp_list_tools", "mcp_approval_request", "mcp_approval_response",
                     "mcp_call", "custom_tool_call", "custom_tool_call_output", "shell_call", "shell_call_output",
                     "apply_patch_call", "apply_patch_call_output", "compaction")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_INSTRUCTIONS = 256 * 1024
MAX_ITEMS = 2048


def _present(body: dict, key: str) -> bool:
    return body.get(key) is not None


def validate_response_request(body: Any) -> dict:
    """See the module doc."""
    if not isinstance(body, dict):
        raise invalid_type("body", "an object", body)
    for key in body:
        if key not in KNOWN_FIELDS:
            raise unknown_parameter(key)
    for key in sorted(NOT_IMPLEMENTED):
        if _present(body, key):
            raise unsupported(key)
    if "model" not in body:
        raise missing("model")
    expect_id(body["model"], "model", non_empty=True)
    if _present(body, "input"):
        validate_input(body["input"], "input")
    elif not _present(body, "previous_response_id") and not _present(body, "conversation"):
        raise missing("input")
    if _present(body, "instructions"):
        expect_str(body["instructions"], "instructions", max_length=MAX_INSTRUCTIONS)
    if _present(body, "max_output_tokens"):
        expect_int(body["max_output_tokens"], "max_output_tokens", minimum=1, maximum=UINT32_MAX)
    if _present(body, "temperature"):
        expect_number(body["temperature"], "temperature", minimum=0, maximum=2)
    if _present(body, "top_p"):
        expect_number(body["top_p"], "top_p", minimum=0, maximum=1)
    if _present(body, "top_logprobs"):
        expect_int(body["top_logprobs"], "top_logprobs", minimum=0, maximum=MAX_TOP_LOGPROBS)
    for key in ("store", "background", "stream", "parallel_tool_calls"):
        if _present(body, key):
            expect_bool(body[key], key)
    for key in ("previous_response_id",):
        if _present(body, key):
            expect_id(body[key], key, non_empty=True)
    if _present(body, "conversation"):
        conversation_id(body)
    if _present(body, "previous_response_id") and _present(body, "conversation"):
        raise invalid_value("conversation", "Use either 'previous_response_id' or 'conversation', not both.")
    if _present(body, "metadata"):
        validate_metadata(body["metadata"])
    if _present(body, "truncation") and body["truncation"] not in ("auto", "disabled"):
        raise invalid_value("truncation", "Invalid value for 'truncation': expected 'auto' or 'disabled'.")
    if body.get("background") and body.get("store") is False:
        raise invalid_value("background", "Background responses must be stored: 'store' cannot be false.")
    _validate_include(body)
    _validate_reasoning(body)
    _validate_text(body)
    names = _validate_tools(body)
    if _present(body, "tool_choice"):
        _validate_tool_choice(body["tool_choice"], names)
    return body


def conversation_id(body: dict) -> str:
    """`conversation` as an id (a string or {"id": ...})."""
    conv = body["conversation"]
    if isinstance(conv, dict):
        if "id" not in conv:
            raise missing("conversation.id")
        return expect_id(conv["id"], "conversation.id", non_empty=True)
    if not isinstance(conv, str):
        raise invalid_type("conversation", "a string or an object", conv)
    return expect_id(conv, "conversation", non_empty=True)


def validate_metadata(metadata: Any, param: str = "metadata") -> None:
    metadata = expect_object(metadata, param)
    if len(metadata) > MAX_METADATA_PAIRS:
        raise invalid_value(param, f"Invalid '{param}': at most {MAX_METADATA_PAIRS} key-value pairs.")
    for k, v in metadata.items():
        if len(k) > MAX_METADATA_KEY:
            raise invalid_value(param, f"Invalid '{param}': keys are at most {MAX_METADATA_KEY} characters.")
        expect_str(v, f"{param}.{k[:MAX_METADATA_KEY]}", max_length=MAX_METADATA_VALUE)
        check_text(k, param)


# --- input items ---------------------------------------------------------------------

def validate_input(value: Any, param: str) -> None:
    if isinstance(value, str):
        check_text(value, param)
        return
    items = expect_array(value, param)
    if len(items) > MAX_ITEMS:
        raise invalid_value(param, f"Invalid '{param}': at most {MAX_ITEMS} items.")
    for i, item in enumerate(items):
        validate_item(item, f"{param}[{i}]")


def validate_item(item: Any, p: str) -> None:
    item = expect_object(item, p)
    kind = item.get("type", "message" if "role" in item else None)
    if kind is None:
        raise missing(f"{p}.type")
    if not isinstance(kind, str):
        raise invalid_type(f"{p}.type", "a string", kind)
    if kind in KNOWN_OTHER_ITEMS:
        raise unsupported(f"{p}.type", f"Input items of type {quote(kind)}")
    if kind not in ITEM_TYPES:
        raise invalid_value(f"{p}.type", f"Invalid value for '{p}.type': {quote(kind)}. Supported values are: "
                                         + ", ".join(repr(t) for t in ITEM_TYPES) + ".")
    if _present(item, "id"):
        expect_id(item["id"], f"{p}.id")
    if kind == "message":
        _validate_message(item, p)
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if key not in item:
                raise missing(f"{p}.{key}")
        expect_id(item["call_id"], f"{p}.call_id", non_empty=True)
        expect_id(item["name"], f"{p}.name", non_empty=True)
        expect_str(item["arguments"], f"{p}.arguments")
    elif kind == "function_call_output":
        for key in ("call_id", "output"):
            if key not in item:
                raise missing(f"{p}.{key}")
        expect_id(item["call_id"], f"{p}.call_id", non_empty=True)
        output = item["output"]
        if isinstance(output, list):
            for j, part in enumerate(output):
                part = expect_object(part, f"{p}.output[{j}]")
                if part.get("type") != "input_text":
                    raise unsupported(f"{p}.output[{j}].type", "Function outputs other than text")
                expect_str(part.get("text"), f"{p}.output[{j}].text")
        else:
            expect_str(output, f"{p}.output")
    elif kind == "reasoning":
        for j, part in enumerate(expect_array(item.get("summary", []), f"{p}.summary")):
            expect_str(expect_object(part, f"{p}.summary[{j}]").get("text"), f"{p}.summary[{j}].text")
        for j, part in enumerate(expect_array(item.get("content") or [], f"{p}.content")):
            expect_str(expect_object(part, f"{p}.content[{j}]").get("text"), f"{p}.content[{j}].text")
        if _present(item, "encrypted_content"):
            raise unsupported(f"{p}.encrypted_content")


def _validate_message(item: dict, p: str) -> None:
    if "role" not in item:
        raise missing(f"{p}.role")
    role = item["role"]
    if role not in INPUT_ROLES:
        raise invalid_value(f"{p}.role", f"Invalid value for '{p}.role': {quote(str(role))}. Supported values "
                                         "are: " + ", ".join(repr(r) for r in INPUT_ROLES) + ".")
    if "content" not in item:
        raise missing(f"{p}.content")
    content = item["content"]
    if isinstance(content, str):
        check_text(content, f"{p}.content")
        return
    for j, part in enumerate(expect_array(content, f"{p}.content")):
        q = f"{p}.content[{j}]"
        part = expect_object(part, q)
        ptype = part.get("type")
        if ptype in ("input_text", "output_text"):
            expect_str(part.get("text"), f"{q}.text")
        elif ptype == "refusal":
            expect_str(part.get("refusal"), f"{q}.refusal")
        elif ptype == "input_image":
            if _present(part, "file_id"):
                raise unsupported(f"{q}.file_id", "Images given by file id")
            if not _present(part, "image_url"):
                raise missing(f"{q}.image_url")
            expect_str(part["image_url"], f"{q}.image_url")
            if _present(part, "detail") and part["detail"] not in ("low", "high", "auto"):
                raise invalid_value(f"{q}.detail", f"Invalid value for '{q}.detail'.")
        elif ptype in ("input_file", "input_audio"):
            raise unsupported(f"{q}.type", f"Content parts of type {quote(ptype)}")
        else:
            raise invalid_value(f"{q}.type", f"Invalid value for '{q}.type': {quote(str(ptype))}. Supported values "
                                             "are: 'input_text', 'input_image', 'output_text', 'refusal'.")


# --- options -------------------------------------------------------------------------

def _validate_include(body: dict) -> None:
    if not _present(body, "include"):
        return
    for i, value in enumerate(expect_array(body["include"], "include")):
        value = expect_str(value, f"include[{i}]")
        if value not in INCLUDE_KNOWN:
            raise invalid_value(f"include[{i}]", f"Invalid value for 'include[{i}]': {quote(value)}.")
        if value not in INCLUDE_SUPPORTED:
            raise unsupported(f"include[{i}]", f"include {quote(value)}")


def _validate_reasoning(body: dict) -> None:
    if not _present(body, "reasoning"):
        return
    reasoning = expect_object(body["reasoning"], "reasoning")
    for key in reasoning:
        if key not in ("effort", "summary", "generate_summary"):
            raise unknown_parameter(f"reasoning.{key}")
    if _present(reasoning, "effort") and reasoning["effort"] not in REASONING_EFFORTS:
        raise invalid_value("reasoning.effort", "Invalid value for 'reasoning.effort': expected one of "
                                                + ", ".join(repr(e) for e in REASONING_EFFORTS) + ".")


def _validate_text(body: dict) -> None:
    """text: {"format": {"type": "text" | "json_object"} | {"type": "json_schema", "name",
    "schema", "strict"?, "description"?}, "verbosity"?}; the format is checked by chat's
    response_format rules (errors renamed to text.format)."""
    if not _present(body, "text"):
        return
    text = expect_object(body["text"], "text")
    for key in text:
        if key not in ("format", "verbosity"):
            raise unknown_parameter(f"text.{key}")
    if not _present(text, "format"):
        return
    fmt = expect_object(text["format"], "text.format")
    as_chat = dict(fmt)
    if fmt.get("type") == "json_schema":
        as_chat = {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
    try:
        validate_response_format({"response_format": as_chat})
    except APIError as e:
        rename = (lambda s: s.replace("response_format.json_schema", "text.format")
                  .replace("response_format", "text.format")) if e.param else (lambda s: s)
        raise APIError(e.status, rename(e.message), e.type, rename(e.param) if e.param else None, e.code) from None


def _validate_tools(body: dict) -> list[str]:
    names: list[str] = []
    if not _present(body, "tools"):
        return names
    for i, tool in enumerate(expect_array(body["tools"], "tools")):
        p = f"tools[{i}]"
        tool = expect_object(tool, p)
        if "type" not in tool:
            raise missing(f"{p}.type")
        ttype = tool["type"]
        if ttype in BUILTIN_TOOLS:
            raise unsupported(f"{p}.type", f"Tools of type {quote(str(ttype))}")
        if ttype != "function":
            raise invalid_value(f"{p}.type", f"Invalid value for '{p}.type': {quote(str(ttype))}.")
        if "name" not in tool:
            raise missing(f"{p}.name")
        name = expect_str(tool["name"], f"{p}.name")
        if not FUNCTION_NAME.fullmatch(name):
            raise invalid_value(f"{p}.name", f"Invalid '{p}.name': expected a string that matches the pattern "
                                             f"'^[a-zA-Z0-9_-]{{1,64}}$', got {quote(name)}.")
        if name in names:
            raise invalid_value(f"{p}.name", f"Invalid 'tools': the function name {quote(name)} is declared twice.")
        names.append(name)
        if _present(tool, "description"):
            expect_str(tool["description"], f"{p}.description")
        if _present(tool, "parameters"):
            expect_object(tool["parameters"], f"{p}.parameters")
        if _present(tool, "strict"):
            expect_bool(tool["strict"], f"{p}.strict")
    return names


def _validate_tool_choice(value: Any, names: list[str]) -> None:
    if isinstance(value, str):
        if value not in ("none", "auto", "required"):
            raise invalid_value("tool_choice", f"Invalid value for 'tool_choice': {quote(value)}.")
        if value == "required" and not names:
            raise invalid_value("tool_choice", "Invalid value for 'tool_choice': 'required' needs 'tools'.")
        return
    choice = expect_object(value, "tool_choice")
    ctype = choice.get("type")
    if ctype != "function":
        raise unsupported("tool_choice", f"'tool_choice' of type {quote(str(ctype))}")
    name = expect_str(choice.get("name"), "tool_choice.name")
    if name not in names:
        raise invalid_value("tool_choice", f"Invalid value for 'tool_choice': no function named {quote(name)} was "
                                           "declared in 'tools'.")


# --- conversations -------------------------------------------------------------------

def validate_conversation_create(body: dict) -> dict:
    for key in body:
        if key not in ("metadata", "items"):
            raise unknown_parameter(key)
    if _present(body, "metadata"):
        validate_metadata(body["metadata"])
    if _present(body, "items"):
        items = expect_array(body["items"], "items")
        if len(items) > 20:
            raise invalid_value("items", "Invalid 'items': at most 20 items at a time.")
        for i, item in enumerate(items):
            validate_item(item, f"items[{i}]")
    return body


def validate_conversation_update(body: dict) -> dict:
    for key in body:
        if key != "metadata":
            raise unknown_parameter(key)
    if "metadata" not in body:
        raise missing("metadata")
    validate_metadata(body["metadata"])
    return body


def validate_items_create(body: dict) -> dict:
    for key in body:
        if key != "items":
            raise unknown_parameter(key)
    if "items" not in body:
        raise missing("items")
    items = expect_array(body["items"], "items")
    if not 1 <= len(items) <= 20:
        raise invalid_value("items", "Invalid 'items': expected 1 to 20 items.")
    for i, item in enumerate(items):
        validate_item(item, f"items[{i}]")
    return body
