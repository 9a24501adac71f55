"""Forced tool calls (tool_choice required / named) with grammar-constrained decoding,
through the official openai SDK, gRPC and LangChain: even the tiny model's calls name a
declared function and their arguments validate against its parameters (jsonschema);
streamed deltas reassemble to the non-streamed calls."""
from __future__ import annotations

import json

import jsonschema
import pytest

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL

WEATHER = {"name": "get_weather", "description": "Current weather in a city", "parameters": {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["C", "F"]}},
    "required": ["city", "unit"], "additionalProperties": False}}
TIME = {"name": "get_time", "description": "Local time", "parameters": {
    "type": "object", "properties": {"offset": {"type": "integer", "minimum": -12, "maximum": 14}},
    "required": ["offset"], "additionalProperties": False}}
TOOLS = [{"type": "function", "function": f} for f in (WEATHER, TIME)]
SCHEMAS = {f["name"]: f["parameters"] for f in (WEATHER, TIME)}
ASK = [{"role": "user", "content": "What is the weather in Paris, and the time there?"}]
SEEDS = range(3)


def create(client, **kw):
    # A whole call takes the tiny model 50-60 tokens (its call wrapper, the JSON and the
    # whitespace the grammar lets it write); twice that leaves room whatever the build's weights.
    kw.setdefault("max_tokens", 120)
    kw.setdefault("temperature", 1)
    return client.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, **kw)


def check_calls(calls, names=tuple(SCHEMAS)) -> list[tuple[str, dict]]:
    out = []
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert call.function.name in names
        arguments = json.loads(call.function.arguments)
        jsonschema.validate(arguments, SCHEMAS[call.function.name])
        out.append((call.function.name, arguments))
    return out


def streamed_calls(client, **kw) -> tuple[list[dict], str]:
    calls: dict[int, dict] = {}
    finish = None
    for chunk in create(client, stream=True, **kw):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        assert not choice.delta.content
        for d in choice.delta.tool_calls or ():
            if d.index not in calls:
                assert d.id and d.type == "function" and d.function.name
                calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": ""}
            else:
                assert d.id is None and d.function.name is None
            calls[d.index]["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    return [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("seed", SEEDS)
def test_required_calls_are_declared_and_valid_streamed_and_not(client, seed):
    out = create(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = check_calls(choice.message.tool_calls)
    streamed, finish = streamed_calls(client, tool_choice="required", parallel_tool_calls=False, seed=seed)
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed] == [call]
    assert streamed[0]["arguments"] == choice.message.tool_calls[0].function.arguments


@pytest.mark.parametrize("seed", SEEDS)
def test_named_function_is_the_one_called(client, seed):
    out = create(client, tool_choice={"type": "function", "function": {"name": "get_time"}}, seed=seed)
    assert out.choices[0].finish_reason == "tool_calls"
    assert [name for name, _ in check_calls(out.choices[0].message.tool_calls, ("get_time",))] == ["get_time"]


def test_parallel_required_calls_reassemble(client):
    kw = dict(tool_choice="required", seed=11, max_tokens=90)
    out = create(client, **kw).choices[0]
    streamed, finish = streamed_calls(client, **kw)
    assert finish == out.finish_reason
    assert [(c["name"], c["arguments"]) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in out.message.tool_calls]
    complete = out.message.tool_calls if out.finish_reason == "tool_calls" else out.message.tool_calls[:-1]
    check_calls(complete)


def test_grpc_required_call_events(grpc_channel):
    from google.protobuf import struct_pb2

    params = struct_pb2.Struct()
    params.update(TIME["parameters"])
    req = pb.GenerateRequest(
        model=MODEL, messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                                       content=[content_pb2.ContentPart(text="time?")])],
        tools=[content_pb2.Tool(name="get_time", parameters=params)],
        tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED), parallel_tool_calls=False,
        sampling=pb.SamplingOptions(temperature=1, seed=3), stopping=pb.StoppingOptions(max_tokens=120))
    events = list(pb_grpc.GenerationServiceStub(grpc_channel).Generate(req))
    deltas = [e.tool_call for e in events if e.HasField("tool_call")]
    assert deltas[0].id.startswith("call_") and deltas[0].name == "get_time"
    jsonschema.validate(json.loads("".join(d.arguments for d in deltas)), TIME["parameters"])
    assert events[-1].finished.reason == content_pb2.FINISH_REASON_TOOL_CALLS
    assert not any(e.HasField("text") and e.text.text for e in events)


def test_langchain_bind_tools_with_a_forced_tool(service):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{service.base_url}/v1", api_key="unused",
                                      max_retries=0, max_tokens=120, temperature=1, seed=5)
    answer = llm.bind_tools(TOOLS, tool_choice="get_weather", parallel_tool_calls=False).invoke("Weather?")
    (call,) = answer.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER["parameters"])
