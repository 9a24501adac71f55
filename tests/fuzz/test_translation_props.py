"""Z2: OpenAI JSON <-> genapi.v1 proto translation, property-based (hypothesis).

Random valid requests over every supported field: the shim accepts them, the proto
carries every supported field (and survives the wire), the core accepts what the shim
accepted and hands the engine the same values; a refused feature is a 400
unsupported_parameter naming it, whatever else the request holds. Deterministic
(derandomize), so CI runs the same cases every time.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genapi.v1 import generation_service_pb2 as pb
from server.chat.template import to_template_messages
from server.convert.generation import GREEDY_BELOW_TEMPERATURE, build_request, check_identifiers
from shim.errors import APIError
from shim.protocol.chat import KNOWN_FIELDS, validate_chat_request
from shim.translate.chat import MIN_POSITIVE_FLOAT32, ROLE_TO_PROTO, TOOL_CHOICE_MODES, chat_request_to_proto

from .strategies import chat_requests, unsupported_requests

CI = settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ROLE_NAMES = {v: k for k, v in ROLE_TO_PROTO.items()}


def f32(x: float) -> float:
    """What a proto `float` field keeps of a JSON number."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def sent(body: dict, key: str) -> float:
    """The float32 the shim sends for a sampling knob (a top_p too small for float32 is
    sent as the smallest positive one: top_p = 0 is refused, and means nothing)."""
    value = f32(body[key])
    return MIN_POSITIVE_FLOAT32 if key == "top_p" and value == 0.0 else value


def engine_value(body: dict, key: str) -> float:
    """What the engine runs with: as sent, but a temperature too small to divide logits
    by is greedy (0)."""
    value = sent(body, key)
    return 0.0 if key == "temperature" and value < GREEDY_BELOW_TEMPERATURE else value


def set_(body: dict, key: str) -> bool:
    return body.get(key) is not None


def text_of(content) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    return [p["refusal"] if p["type"] == "refusal" else p["text"] for p in content]


def expected_max_tokens(body: dict):
    for key in ("max_completion_tokens", "max_tokens"):
        if set_(body, key):
            return body[key]
    return None


@CI
@given(chat_requests())
def test_valid_requests_round_trip_every_supported_field(body):
    assert validate_chat_request(body) is body
    req = chat_request_to_proto(body, "req_1")
    assert pb.GenerateRequest.FromString(req.SerializeToString()) == req  # survives the wire

    assert (req.request_id, req.model) == ("req_1", body["model"])
    assert len(req.messages) == len(body["messages"])
    for msg, m in zip(body["messages"], req.messages):
        assert ROLE_NAMES[m.role] == msg["role"]
        assert [p.text for p in m.content] == text_of(msg.get("content"))
        assert m.name == (msg.get("name") or "")
        assert m.tool_call_id == (msg.get("tool_call_id") or "")
        assert [(c.id, c.name, c.arguments) for c in m.tool_calls] == [
            (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or ()]

    s = req.sampling
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        assert s.HasField(key) == set_(body, key)
        if set_(body, key):
            assert getattr(s, key) == sent(body, key)
    assert s.HasField("seed") == set_(body, "seed") and (not set_(body, "seed") or s.seed == body["seed"])
    assert dict(s.logit_bias) == {int(k): f32(v) for k, v in (body.get("logit_bias") or {}).items()}

    stopping = req.stopping
    mt = expected_max_tokens(body)
    assert stopping.HasField("max_tokens") == (mt is not None) and (mt is None or stopping.max_tokens == mt)
    assert stopping.ignore_eos == bool(body.get("ignore_eos"))
    stop = body.get("stop")
    assert list(stopping.stop) == ([] if stop is None else [stop] if isinstance(stop, str) else stop)

    out = req.output
    assert out.HasField("n") == set_(body, "n") and (not set_(body, "n") or out.n == body["n"])
    assert out.logprobs == bool(body.get("logprobs"))
    assert out.top_logprobs == (body.get("top_logprobs") or 0)
    # Tool choice without tools is kept (the core treats it as no tools); nothing refused or
    # ignored leaks into the proto.
    choice = body.get("tool_choice")
    assert req.HasField("tool_choice") == (choice is not None)
    assert choice is None or req.tool_choice.mode == TOOL_CHOICE_MODES[choice]
    assert req.HasField("parallel_tool_calls") == set_(body, "parallel_tool_calls")
    assert not req.tools
    assert req.HasField("response_format") == set_(body, "response_format")


@CI
@given(chat_requests())
def test_the_core_accepts_what_the_shim_accepts(body):
    """Cross-tier: a request the shim lets through is valid for the core, and the engine
    request carries the same values (what the user asked for is what runs)."""
    validate_chat_request(body)
    req = chat_request_to_proto(body, "req_1")
    check_identifiers(req, "req_1")
    prompt = [1, 2, 3]
    gen = build_request(req, "req_1#x", prompt, context=2**33, vocab=2**31, max_output=0, max_n=128)
    assert gen.n == (body.get("n") or 1)
    mt = expected_max_tokens(body)
    assert gen.max_tokens == (mt if mt is not None else 2**33 - len(prompt))
    stop = body.get("stop")
    assert gen.stop == ([] if stop is None else [stop] if isinstance(stop, str) else stop)
    assert gen.ignore_eos == bool(body.get("ignore_eos"))
    assert gen.logprobs == bool(body.get("logprobs")) and gen.top_logprobs == (body.get("top_logprobs") or 0)
    p = gen.sampling
    for key, default in (("temperature", 1.0), ("top_p", 1.0), ("presence_penalty", 0.0),
                         ("frequency_penalty", 0.0)):
        assert getattr(p, key) == (engine_value(body, key) if set_(body, key) else default), key
    assert p.seed == body.get("seed")
    assert p.temperature == 0.0 or p.temperature >= GREEDY_BELOW_TEMPERATURE
    assert p.logit_bias == {int(k): f32(v) for k, v in (body.get("logit_bias") or {}).items()}
    # The chat template sees the same conversation.
    turns = to_template_messages(req.messages)
    for msg, turn in zip(body["messages"], turns, strict=True):
        assert turn["role"] == msg["role"] and turn["content"] == "\n".join(text_of(msg.get("content")))
        assert turn.get("name", "") == (msg.get("name") or "")
        assert turn.get("tool_call_id", "") == (msg.get("tool_call_id") or "")
        assert [c["id"] for c in turn.get("tool_calls", [])] == [c["id"] for c in msg.get("tool_calls") or ()]


@CI
@given(unsupported_requests())
def test_refused_features_are_400_unsupported(case):
    body, param = case
    with pytest.raises(APIError) as ei:
        validate_chat_request(body)
    err = ei.value
    assert (err.status, err.code) == (400, "unsupported_parameter"), err.message
    if param is not None:
        assert err.param == param


@CI
@given(chat_requests(), st.text(min_size=1, max_size=300).filter(lambda k: k not in KNOWN_FIELDS))
def test_unknown_fields_are_400_and_bounded(body, key):
    body[key] = 1
    with pytest.raises(APIError) as ei:
        validate_chat_request(body)
    err = ei.value
    assert (err.status, err.code) == (400, "unknown_parameter")
    assert len(err.param) <= 130 and "\n" not in err.message


# --- failures the properties found, kept as explicit cases ---------------------------------

@pytest.mark.parametrize("top_p", [1e-50, 5e-324, 7e-46])
def test_regression_top_p_below_float32_reaches_the_core(top_p):
    """Found by test_the_core_accepts_what_the_shim_accepts: a top_p the shim accepts
    (> 0) rounded to 0.0 in the proto's float32, which the core refused (a 400 from the
    core for a request the shim had validated)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": top_p}
    validate_chat_request(body)
    req = chat_request_to_proto(body)
    assert req.sampling.top_p > 0
    gen = build_request(req, "r", [1], context=64, vocab=10)
    assert 0 < gen.sampling.top_p < 1e-40


@pytest.mark.parametrize("temperature", [2.808816285182615e-39, 1e-45, 1e-30, 9.99e-6])
def test_regression_subnormal_temperature_is_greedy(temperature):
    """Found by tools/fuzz.py (schemathesis, positive mode, 5,000 cases): temperature
    2.8e-39 is valid (>= 0) but logits / 2.8e-39 overflow float32, the softmax is NaN and
    the engine failed the request: a 500 for a valid request
    (tests/fuzz/regressions/post-9f13b892cce41eaa.json replays it over HTTP)."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": temperature}
    validate_chat_request(body)
    gen = build_request(chat_request_to_proto(body), "r", [1], context=64, vocab=10)
    assert gen.sampling.temperature == 0.0
