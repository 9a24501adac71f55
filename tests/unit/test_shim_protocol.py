"""shim.protocol.chat: OpenAI-parity validation (reliability plan rows B2-B5, B17)."""
from __future__ import annotations

import pytest

from shim.errors import APIError
from shim.protocol.chat import KNOWN_FIELDS, validate_chat_request

USER = [{"role": "user", "content": "hi"}]


def base(**extra):
    return {"model": "m", "messages": USER, **extra}


def error_of(body) -> APIError:
    with pytest.raises(APIError) as info:
        validate_chat_request(body)
    err = info.value
    assert err.status == 400 and err.type == "invalid_request_error"
    return err


# (body, code, param)
INVALID = [
    # B2: missing / empty required fields
    ({"messages": USER}, "missing_required_parameter", "model"),
    ({"model": "m"}, "missing_required_parameter", "messages"),
    (base(messages=[]), "invalid_value", "messages"),
    (base(model=None), "invalid_type", "model"),
    (base(model=""), "invalid_value", "model"),
    (base(model=5), "invalid_type", "model"),
    (base(messages={"role": "user"}), "invalid_type", "messages"),
    # B3: wrong types, no coercion
    (base(max_tokens="5"), "invalid_type", "max_tokens"),
    (base(max_tokens=1.5), "invalid_type", "max_tokens"),
    (base(max_tokens=5.0), "invalid_type", "max_tokens"),
    (base(max_tokens=True), "invalid_type", "max_tokens"),
    (base(max_completion_tokens="5"), "invalid_type", "max_completion_tokens"),
    (base(temperature="hot"), "invalid_type", "temperature"),
    (base(temperature=True), "invalid_type", "temperature"),
    (base(n=True), "invalid_type", "n"),
    (base(n=1.0), "invalid_type", "n"),
    (base(seed="1"), "invalid_type", "seed"),
    (base(seed=1.5), "invalid_type", "seed"),
    (base(top_p=[1]), "invalid_type", "top_p"),
    (base(presence_penalty="0"), "invalid_type", "presence_penalty"),
    (base(frequency_penalty={}), "invalid_type", "frequency_penalty"),
    (base(logprobs=1), "invalid_type", "logprobs"),
    (base(logprobs="true"), "invalid_type", "logprobs"),
    (base(top_logprobs=True, logprobs=True), "invalid_type", "top_logprobs"),
    (base(stream="yes"), "invalid_type", "stream"),
    (base(stream=1), "invalid_type", "stream"),
    (base(stop=5), "invalid_type", "stop"),
    (base(stop=["a", 5]), "invalid_type", "stop[1]"),
    (base(logit_bias=[1]), "invalid_type", "logit_bias"),
    (base(logit_bias={"5": "1"}), "invalid_type", "logit_bias.5"),
    (base(logit_bias={"5": True}), "invalid_type", "logit_bias.5"),
    (base(stream=True, stream_options=True), "invalid_type", "stream_options"),
    (base(stream=True, stream_options={"include_usage": "yes"}), "invalid_type", "stream_options.include_usage"),
    (base(user=5), "invalid_type", "user"),
    (base(metadata={"a": 1}), "invalid_type", "metadata.a"),
    (base(metadata="x"), "invalid_type", "metadata"),
    (base(store="no"), "invalid_type", "store"),
    (base(parallel_tool_calls="no"), "invalid_type", "parallel_tool_calls"),
    (base(service_tier=1), "invalid_type", "service_tier"),
    (base(reasoning_effort=1), "invalid_type", "reasoning_effort"),
    (base(tools={}), "invalid_type", "tools"),
    (base(tool_choice=1), "invalid_type", "tool_choice"),
    (base(response_format="json"), "invalid_type", "response_format"),
    # B4: out of range
    (base(temperature=-1), "invalid_value", "temperature"),
    (base(temperature=2.01), "invalid_value", "temperature"),
    (base(top_p=2), "invalid_value", "top_p"),
    (base(top_p=0), "invalid_value", "top_p"),
    (base(top_p=-0.1), "invalid_value", "top_p"),
    (base(presence_penalty=2.5), "invalid_value", "presence_penalty"),
    (base(frequency_penalty=-3), "invalid_value", "frequency_penalty"),
    (base(n=0), "invalid_value", "n"),
    (base(n=-1), "invalid_value", "n"),
    (base(n=129), "invalid_value", "n"),
    (base(max_tokens=0), "invalid_value", "max_tokens"),
    (base(max_tokens=-1), "invalid_value", "max_tokens"),
    (base(max_tokens=2**32), "invalid_value", "max_tokens"),
    (base(max_completion_tokens=0), "invalid_value", "max_completion_tokens"),
    (base(max_tokens=5, max_completion_tokens=6), "invalid_value", "max_tokens"),
    (base(top_logprobs=21, logprobs=True), "invalid_value", "top_logprobs"),
    (base(top_logprobs=-1, logprobs=True), "invalid_value", "top_logprobs"),
    (base(top_logprobs=3), "invalid_value", "top_logprobs"),
    (base(top_logprobs=3, logprobs=False), "invalid_value", "top_logprobs"),
    (base(seed=2**63), "invalid_value", "seed"),
    (base(seed=-(2**63) - 1), "invalid_value", "seed"),
    (base(stop=""), "invalid_value", "stop"),
    (base(stop=["a", ""]), "invalid_value", "stop[1]"),
    (base(stop=["a", "b", "c", "d", "e"]), "invalid_value", "stop"),
    (base(logit_bias={"abc": 1}), "invalid_value", "logit_bias"),
    (base(logit_bias={"-1": 1}), "invalid_value", "logit_bias"),
    (base(logit_bias={"99999999999": 1}), "invalid_value", "logit_bias"),
    (base(logit_bias={"5": 101}), "invalid_value", "logit_bias.5"),
    (base(logit_bias={"5": -100.5}), "invalid_value", "logit_bias.5"),
    (base(stream_options={"include_usage": True}), "invalid_value", "stream_options"),
    (base(stream=False, stream_options={"include_usage": True}), "invalid_value", "stream_options"),
    (base(tool_choice="sometimes"), "invalid_value", "tool_choice"),
    (base(response_format={"type": "yaml"}), "invalid_value", "response_format.type"),
    (base(modalities=["video"]), "invalid_value", "modalities[0]"),
    # B5: unknown fields
    (base(foo=1), "unknown_parameter", "foo"),
    (base(stream=True, stream_options={"foo": True}), "unknown_parameter", "stream_options.foo"),
    # B5: known but not implemented
    (base(tools=[{"type": "custom", "custom": {"name": "f"}}]), "unsupported_parameter", "tools[0].type"),
    (base(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "custom", "custom": {"name": "f"}}), "unsupported_parameter", "tool_choice"),
    (base(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "allowed_tools", "allowed_tools": {}}), "unsupported_parameter", "tool_choice"),
    # B10: tools
    (base(tools=[{"type": "function", "function": {}}]), "missing_required_parameter", "tools[0].function.name"),
    (base(tools=[{"type": "function"}]), "missing_required_parameter", "tools[0].function"),
    (base(tools=[{"function": {"name": "f"}}]), "missing_required_parameter", "tools[0].type"),
    (base(tools=[{"type": "web", "function": {"name": "f"}}]), "invalid_value", "tools[0].type"),
    (base(tools=[{"type": "function", "function": {"name": "a b"}}]), "invalid_value", "tools[0].function.name"),
    (base(tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]), "invalid_type",
     "tools[0].function.parameters"),
    (base(tools=[{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
     "invalid_value", "tools[1].function.name"),
    (base(tool_choice="required"), "invalid_value", "tool_choice"),
    (base(tool_choice={"type": "function", "function": {"name": "f"}}), "invalid_value", "tool_choice"),
    (base(tools=[{"type": "function", "function": {"name": "f"}}],
          tool_choice={"type": "function", "function": {"name": "g"}}), "invalid_value", "tool_choice"),
    (base(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice={}), "missing_required_parameter",
     "tool_choice.type"),
    (base(functions=[{"name": "f"}], tools=[{"type": "function", "function": {"name": "f"}}]), "invalid_value",
     "functions"),
    (base(functions=[{}]), "missing_required_parameter", "functions[0].name"),
    (base(function_call={"name": "f"}), "invalid_value", "function_call"),
    (base(functions=[{"name": "f"}], function_call="required"), "invalid_value", "function_call"),
    (base(reasoning_effort="huge"), "invalid_value", "reasoning_effort"),
    (base(audio={"voice": "alloy", "format": "wav"}), "unsupported_parameter", "audio"),
    (base(prediction={"type": "content", "content": "x"}), "unsupported_parameter", "prediction"),
    (base(web_search_options={}), "unsupported_parameter", "web_search_options"),
    (base(moderation={"model": "x"}), "unsupported_parameter", "moderation"),
    (base(modalities=["text", "audio"]), "unsupported_parameter", "modalities"),
    (base(response_format={}), "missing_required_parameter", "response_format.type"),
    # structured outputs: the shape of response_format (the schema itself is the core's)
    (base(response_format={"type": "json_schema"}), "missing_required_parameter", "response_format.json_schema"),
    (base(response_format={"type": "json_schema", "json_schema": {}}), "missing_required_parameter",
     "response_format.json_schema.name"),
    (base(response_format={"type": "json_schema", "json_schema": "x"}), "invalid_type", "response_format.json_schema"),
    (base(response_format={"type": "json_schema", "json_schema": {"name": "a b"}}), "invalid_value",
     "response_format.json_schema.name"),
    (base(response_format={"type": "json_schema", "json_schema": {"name": "n" * 65}}), "string_above_max_length",
     "response_format.json_schema.name"),
    (base(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": []}}), "invalid_type",
     "response_format.json_schema.schema"),
    (base(response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}), "invalid_type",
     "response_format.json_schema.strict"),
    # issue 18 item 5: identifiers are bounded (also where the feature is refused)
    (base(model="m" * 257), "string_above_max_length", "model"),
    (base(user="u" * 257), "string_above_max_length", "user"),
    (base(prompt_cache_key="k" * 257), "string_above_max_length", "prompt_cache_key"),
    (base(safety_identifier="s" * 65), "string_above_max_length", "safety_identifier"),
    (base(metadata={"k" * 65: "v"}), "string_above_max_length", "metadata"),
    (base(metadata={"k": "v" * 513}), "string_above_max_length", "metadata.k"),
    (base(metadata={str(i): "v" for i in range(17)}), "invalid_value", "metadata"),
    (base(stop="s" * 1025), "string_above_max_length", "stop"),
    (base(stop=["s" * 1025]), "string_above_max_length", "stop[0]"),
    (base(tools=[{"type": "function", "function": {"name": "f" * 257}}]), "string_above_max_length",
     "tools[0].function.name"),
    (base(tools=[{"type": "custom", "custom": {"name": "f" * 257}}]), "string_above_max_length",
     "tools[0].custom.name"),
    (base(functions=[{"name": "f" * 257}]), "string_above_max_length", "functions[0].name"),
    (base(tool_choice={"type": "function", "function": {"name": "f" * 257}}), "string_above_max_length",
     "tool_choice.function.name"),
    (base(function_call={"name": "f" * 257}), "string_above_max_length", "function_call.name"),
    (base(response_format={"type": "json_schema", "json_schema": {"name": "x" * 257}}), "string_above_max_length",
     "response_format.json_schema.name"),
    (base(logit_bias={"0" * 5000 + "1": 1}), "invalid_value", "logit_bias"),
]


@pytest.mark.parametrize("body,code,param", INVALID, ids=[f"{c}:{p}:{i}" for i, (_, c, p) in enumerate(INVALID)])
def test_invalid_requests(body, code, param):
    err = error_of(body)
    assert (err.code, err.param) == (code, param), err.message
    assert err.message and err.headers == {}  # B18: no Retry-After on 4xx


def msgs(*messages):
    return base(messages=list(messages))


INVALID_MESSAGES = [
    (msgs("hi"), "invalid_type", "messages[0]"),
    (msgs(None), "invalid_type", "messages[0]"),
    (msgs({"content": "x"}), "missing_required_parameter", "messages[0].role"),
    (msgs({"role": 1, "content": "x"}), "invalid_type", "messages[0].role"),
    (msgs({"role": "robot", "content": "x"}), "invalid_value", "messages[0].role"),
    (msgs({"role": "function", "content": "x"}), "missing_required_parameter", "messages[0].name"),
    (msgs({"role": "function", "name": "f"}), "missing_required_parameter", "messages[0].content"),
    (msgs({"role": "assistant", "function_call": {"name": "f"}}), "missing_required_parameter",
     "messages[0].function_call.arguments"),
    (msgs({"role": "user"}), "missing_required_parameter", "messages[0].content"),
    (msgs({"role": "user", "content": None}), "invalid_type", "messages[0].content"),
    (msgs({"role": "user", "content": 5}), "invalid_type", "messages[0].content"),
    (msgs({"role": "user", "content": []}), "invalid_value", "messages[0].content"),
    (msgs({"role": "user", "content": ["x"]}), "invalid_type", "messages[0].content[0]"),
    (msgs({"role": "user", "content": [{"text": "x"}]}), "missing_required_parameter", "messages[0].content[0].type"),
    (msgs({"role": "user", "content": [{"type": "text"}]}), "missing_required_parameter",
     "messages[0].content[0].text"),
    (msgs({"role": "user", "content": [{"type": "text", "text": 5}]}), "invalid_type", "messages[0].content[0].text"),
    (msgs({"role": "user", "content": [{"type": "video"}]}), "invalid_value", "messages[0].content[0].type"),
    (msgs({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}),
     "missing_required_parameter", "messages[0].content[1].image_url"),
    (msgs({"role": "user", "content": [{"type": "image_url", "image_url": "http://x"}]}), "invalid_type",
     "messages[0].content[0].image_url"),
    (msgs({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}), "missing_required_parameter",
     "messages[0].content[0].image_url.url"),
    (msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": ""}}]}), "invalid_value",
     "messages[0].content[0].image_url.url"),
    (msgs({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x", "detail": "max"}}]}),
     "invalid_value", "messages[0].content[0].image_url.detail"),
    (msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}), "missing_required_parameter",
     "messages[0].content[0].input_audio.data"),
    (msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": 3}}]}),
     "invalid_type", "messages[0].content[0].input_audio.format"),
    (msgs({"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "not base64!",
                                                                               "format": "wav"}}]}),
     "invalid_value", "messages[0].content[0].input_audio.data"),
    (msgs({"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}),
     "invalid_value", "messages[0].content[0].type"),
    (msgs({"role": "user", "content": [{"type": "file", "file": {}}]}), "unsupported_parameter",
     "messages[0].content[0]"),
    (msgs({"role": "system", "content": [{"type": "image_url"}]}), "invalid_value", "messages[0].content[0].type"),
    (msgs({"role": "user", "content": [{"type": "refusal", "refusal": "x"}]}), "invalid_value",
     "messages[0].content[0].type"),
    (msgs({"role": "user", "content": "x", "name": 5}), "invalid_type", "messages[0].name"),
    (msgs({"role": "user", "content": "x"}, {"role": "tool", "content": "r"}), "missing_required_parameter",
     "messages[1].tool_call_id"),
    (msgs({"role": "tool", "content": "r", "tool_call_id": 5}), "invalid_type", "messages[0].tool_call_id"),
    (msgs({"role": "assistant", "content": 5}), "invalid_type", "messages[0].content"),
    (msgs({"role": "assistant", "tool_calls": {}}), "invalid_type", "messages[0].tool_calls"),
    (msgs({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
     "missing_required_parameter", "messages[0].tool_calls[0].id"),
    # found by schemathesis (negative mode): `type` is required, as in OpenAI's spec
    (msgs({"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}),
     "missing_required_parameter", "messages[0].tool_calls[0].type"),
    (msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}),
     "missing_required_parameter", "messages[0].tool_calls[0].function.arguments"),
    (msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                "function": {"name": "f", "arguments": {}}}]}),
     "invalid_type", "messages[0].tool_calls[0].function.arguments"),
    (msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}),
     "unsupported_parameter", "messages[0].tool_calls[0].type"),
    (msgs({"role": "assistant", "audio": {"id": "a"}}), "unsupported_parameter", "messages[0].audio"),
    (msgs({"role": "assistant", "refusal": 5}), "invalid_type", "messages[0].refusal"),
    # B17: lone surrogates cannot reach the core
    (msgs({"role": "user", "content": "bad \ud800 text"}), "invalid_value", "messages[0].content"),
    (msgs({"role": "user", "content": [{"type": "text", "text": "\udfff"}]}), "invalid_value",
     "messages[0].content[0].text"),
    (base(stop="\ud800"), "invalid_value", "stop"),
    (base(model="m\ud800"), "invalid_value", "model"),
    # issue 18 item 5: identifiers inside messages are bounded
    (msgs({"role": "user", "content": "x", "name": "n" * 257}), "string_above_max_length", "messages[0].name"),
    (msgs({"role": "tool", "content": "r", "tool_call_id": "c" * 257}), "string_above_max_length",
     "messages[0].tool_call_id"),
    (msgs({"role": "assistant", "tool_calls": [{"id": "c" * 257, "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}]}),
     "string_above_max_length", "messages[0].tool_calls[0].id"),
    (msgs({"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                "function": {"name": "f" * 257, "arguments": "{}"}}]}),
     "string_above_max_length", "messages[0].tool_calls[0].function.name"),
]


@pytest.mark.parametrize("body,code,param", INVALID_MESSAGES,
                         ids=[f"{c}:{p}:{i}" for i, (_, c, p) in enumerate(INVALID_MESSAGES)])
def test_invalid_messages(body, code, param):
    err = error_of(body)
    assert (err.code, err.param) == (code, param), err.message


def test_unknown_field_message_text_is_exact():
    assert error_of(base(foo=1)).message == "Unrecognized request argument supplied: foo"


def test_too_long_message_is_openai_like():
    err = error_of(base(model="m" * 300))
    assert err.message == ("Invalid 'model': string too long. Expected a string with maximum length 256, "
                           "but got a string with length 300 instead.")


@pytest.mark.parametrize("body", [
    base(**{"k" * 8000: 1}),
    base(stream=True, stream_options={"k" * 8000: True}),
    msgs({"role": "r" * 8000 + "\nFORGED", "content": "x"}),
    msgs({"role": "user", "content": [{"type": "t" * 8000}]}),
    base(tool_choice="c" * 8000),
    base(response_format={"type": "t" * 8000}),
    base(logit_bias={"x" * 8000: 1}),
    base(temperature=10 ** 5000),
], ids=["unknown", "stream_options", "role", "part-type", "tool_choice", "response_format", "logit_bias",
        "huge-number"])
def test_client_values_are_never_echoed_unbounded(body):
    err = error_of(body)
    assert len(err.message) < 400 and (err.param is None or len(err.param) < 300), err.message
    assert "\n" not in err.message


def test_type_error_message_is_precise():
    err = error_of(base(max_tokens="5"))
    assert err.message == "Invalid type for 'max_tokens': expected an integer, but got a string instead."
    assert error_of(base(n=True)).message == "Invalid type for 'n': expected an integer, but got a boolean instead."


def test_missing_message_text():
    assert error_of({"model": "m"}).message == "Missing required parameter: 'messages'."


def test_range_error_message_names_limit_and_value():
    msg = error_of(base(temperature=3)).message
    assert "temperature" in msg and "2" in msg and "3" in msg


VALID = [
    base(),
    base(temperature=0, top_p=1, n=128, max_tokens=1, seed=-(2**63), presence_penalty=-2, frequency_penalty=2),
    base(temperature=2, top_p=1e-9, seed=2**63 - 1, max_tokens=2**32 - 1),
    base(max_tokens=5, max_completion_tokens=5),
    base(stop="x"), base(stop=[]), base(stop=["a", "b", "c", "d"]),
    base(logit_bias={"0": -100, "50256": 100, "7": 0.5}), base(logit_bias={}),
    base(logprobs=True, top_logprobs=20), base(logprobs=True), base(top_logprobs=0),
    base(stream=True, stream_options={"include_usage": True, "include_obfuscation": False}),
    base(stream=True, stream_options=None), base(stream=False, stream_options=None), base(stream=None),
    # explicit nulls everywhere
    {**base(), **{k: None for k in KNOWN_FIELDS - {"model", "messages"}}},
    # accepted and ignored
    base(model="m" * 256, user="u" * 256, prompt_cache_key="k" * 256, safety_identifier="s" * 64,
         metadata={str(i) * 64: "v" * 512 for i in range(10)} | {f"k{i}": "" for i in range(6)},
         stop=["s" * 1024] * 4),
    msgs({"role": "user", "content": "x", "name": "n" * 256},
         {"role": "assistant", "tool_calls": [{"id": "c" * 256, "type": "function",
                                               "function": {"name": "f" * 256, "arguments": "{}"}}]},
         {"role": "tool", "content": "r", "tool_call_id": "c" * 256}),
    base(user="u", metadata={"a": "b"}, store=False, service_tier="auto", safety_identifier="s",
         prompt_cache_key="k", prompt_cache_retention="24h", prompt_cache_options={"ttl": "5m"},
         verbosity="low", reasoning_effort="high", parallel_tool_calls=True),
    # "no tools" spellings
    base(tools=[], tool_choice="none"), base(tool_choice="auto"), base(function_call="none"),
    base(response_format={"type": "text"}), base(modalities=["text"]),
    base(response_format={"type": "json_object"}),
    base(response_format={"type": "json_schema", "json_schema": {"name": "Person_1-a", "strict": True,
                                                                 "description": "d", "schema": {"type": "object"}}}),
    base(response_format={"type": "json_schema", "json_schema": {"name": "x", "strict": None, "schema": None}}),
    # message shapes
    msgs({"role": "system", "content": "s"}, {"role": "developer", "content": [{"type": "text", "text": "d"}]},
         {"role": "user", "name": "n", "content": [{"type": "text", "text": "u", "cache_control": {}}]},
         {"role": "assistant", "content": None, "tool_calls": [
             {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "r"}]},
         {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}], "refusal": "no"},
         {"role": "assistant"},
         {"role": "user", "content": ""}),
    # B17: NUL, RTL marks, astral characters are fine
    msgs({"role": "user", "content": "nul\x00 rtl\u200f\u202e emoji😀 \ufeff"}),
]


@pytest.mark.parametrize("body", VALID, ids=[str(i) for i in range(len(VALID))])
def test_valid_requests_pass_unchanged(body):
    assert validate_chat_request(body) is body


def test_every_spec_field_is_known():
    spec_fields = {
        "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
        "max_completion_tokens", "max_tokens", "messages", "metadata", "modalities", "model", "moderation", "n",
        "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key", "prompt_cache_options",
        "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier", "seed",
        "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
        "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
    }
    assert spec_fields <= KNOWN_FIELDS


@pytest.mark.parametrize("detail, shown", [("max", "'max'"), (3, "3")])
def test_a_bad_image_detail_is_shown_once_quoted(detail, shown):
    err = error_of(msgs({"role": "user", "content": [{"type": "image_url",
                                                       "image_url": {"url": "http://x", "detail": detail}}]}))
    assert err.message == (f"Invalid value for 'messages[0].content[0].image_url.detail': {shown}. "
                           "Supported values are: 'auto', 'low' and 'high'.")
