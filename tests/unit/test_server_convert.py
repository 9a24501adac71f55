"""server.convert + server.errors: identifiers are bounded before anything echoes them
(issue 18 item 5), and a status never outgrows gRPC's 16 KiB trailers."""
from __future__ import annotations

import grpc
import pytest

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from server.convert.generation import build_request, check_identifiers, check_request, least_budget_tokens, with_prompt
from server.engines.base import EngineInvalidRequest
from server.errors import GenapiError, from_engine_error, not_found, quote


def request(**fields) -> pb.GenerateRequest:
    fields.setdefault("model", "m")
    fields.setdefault("messages", [content_pb2.ChatMessage(
        role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])])
    return pb.GenerateRequest(**fields)


def rejected(fn, *args, **kwargs) -> GenapiError:
    with pytest.raises(GenapiError) as ei:
        fn(*args, **kwargs)
    err = ei.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and len(err.message) < 400
    return err


LONG = "x" * 8000


@pytest.mark.parametrize("fields, param", [
    ({"model": LONG}, "model"),
    ({"request_id": "r" * 129}, "request_id"),
    ({"messages": [content_pb2.ChatMessage(role=content_pb2.ROLE_USER, name=LONG)]}, "messages[0].name"),
    ({"messages": [content_pb2.ChatMessage(role=content_pb2.ROLE_TOOL, tool_call_id=LONG)]},
     "messages[0].tool_call_id"),
    ({"messages": [content_pb2.ChatMessage(role=content_pb2.ROLE_ASSISTANT,
                                           tool_calls=[content_pb2.ToolCall(id=LONG)])]},
     "messages[0].tool_calls[0].id"),
    ({"messages": [content_pb2.ChatMessage(role=content_pb2.ROLE_ASSISTANT,
                                           tool_calls=[content_pb2.ToolCall(id="c", name=LONG)])]},
     "messages[0].tool_calls[0].function.name"),
    ({"tools": [content_pb2.Tool(name=LONG)]}, "tools[0].function.name"),
    ({"tool_choice": content_pb2.ToolChoice(function_name=LONG)}, "tool_choice.function.name"),
    ({"response_format": content_pb2.ResponseFormat(name=LONG)}, "response_format.json_schema.name"),
])
def test_overlong_identifiers_are_invalid_argument(fields, param):
    err = rejected(check_identifiers, request(**fields))
    assert (err.reason, err.param) == ("string_above_max_length", param)
    assert "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" not in err.message


def test_request_id_from_metadata_is_checked_too():
    err = rejected(check_identifiers, request(), "r" * 5000)
    assert err.param == "x-request-id"
    err = rejected(check_identifiers, request(request_id="a\nFORGED"))
    assert (err.reason, err.param) == ("invalid_value", "request_id")
    check_identifiers(request(request_id="r" * 128, model="m" * 256), "r" * 128)


def test_stop_strings_are_bounded():
    req = request(stopping=pb.StoppingOptions(stop=["ok", "s" * 1025]))
    err = rejected(build_request, req, "rid", [1, 2], context=64, vocab=10)
    assert (err.reason, err.param) == ("string_above_max_length", "stop[1]")
    req = request(stopping=pb.StoppingOptions(stop=["s" * 1024], max_tokens=4))
    assert build_request(req, "rid", [1, 2], context=64, vocab=10).stop == ["s" * 1024]


@pytest.mark.parametrize("fields, param", [
    ({"output": pb.OutputOptions(n=9)}, "n"),
    ({"stopping": pb.StoppingOptions(max_tokens=0)}, "max_tokens"),
    ({"stopping": pb.StoppingOptions(max_tokens=65)}, "max_tokens"),  # above max_output
    ({"sampling": pb.SamplingOptions(temperature=3)}, "temperature"),
    ({"response_format": content_pb2.ResponseFormat(type=content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)},
     "response_format"),  # json_schema without its schema
])
def test_bad_input_is_refused_before_the_prompt_exists(fields, param):
    """check_request runs before admission and templating: bad input is a 400 whether or
    not the engine has room for it."""
    assert rejected(check_request, request(**fields), "rid", vocab=10, max_output=64, max_n=8).param == param


def test_the_budget_is_charged_by_use_only_when_nothing_bounds_max_tokens():
    unbounded = request()
    gen = with_prompt(check_request(unbounded, "rid", vocab=10), unbounded, [1, 2], context=64)
    assert (gen.max_tokens, gen.charge_by_use, gen.prompt_ids) == (62, True, [1, 2])
    capped = build_request(unbounded, "rid", [1, 2], context=64, vocab=10, max_output=16)
    assert (capped.max_tokens, capped.charge_by_use) == (16, False)
    asked = request(stopping=pb.StoppingOptions(max_tokens=5), output=pb.OutputOptions(n=3))
    assert build_request(asked, "rid", [1, 2], context=64, vocab=10).charge_by_use is False
    assert (least_budget_tokens(asked, 3), least_budget_tokens(unbounded, 1)) == (15, 0)


def _trailer_bytes(err: GenapiError) -> int:
    status = err.to_status()
    return len(status.details.encode("utf-8")) * 3 + sum(len(v) * 4 // 3 + len(k) for k, v in status.trailing_metadata)


@pytest.mark.parametrize("err", [
    GenapiError(grpc.StatusCode.INVALID_ARGUMENT, "bad: " + "é" * 100_000, "invalid_value", "p" * 100_000),
    from_engine_error(EngineInvalidRequest("x" * 100_000)),
    not_found(f"The model `{quote(LONG)}` does not exist.", "model", "model_not_found"),
], ids=["huge-message-and-param", "engine-error", "not-found"])
def test_a_status_always_fits_the_trailers(err):
    assert len(err.message.encode("utf-8")) <= 1024
    assert _trailer_bytes(err) < 8 * 1024  # well below gRPC's 16 KiB metadata limit


def test_quoted_values_are_escaped():
    name = "m\nFORGED"
    msg = not_found(f"The model `{quote(name)}` does not exist.").message
    assert "\n" not in msg and "m\\nFORGED" in msg
