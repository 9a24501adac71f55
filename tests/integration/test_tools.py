"""Tool calling through the official openai SDK, raw HTTP and gRPC (the shared service):
tools reach the template and leave the model able to answer; multi-turn tool results give a
normal answer; bad tools are 400 naming the field (reliability plan B10) and the next
request succeeds."""
from __future__ import annotations

import grpc
import httpx
import openai
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
TURNS = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_abc", "content": "sunny, 21 C"},
]


def test_tools_with_auto_choice_answer_through_the_sdk(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto",
                                         max_tokens=8, temperature=0)
    choice = out.choices[0]
    # The tiny model writes no call unprompted: an ordinary answer, reported as one.
    assert choice.finish_reason in ("stop", "length") and choice.message.tool_calls is None
    assert choice.message.content
    assert out.usage.prompt_tokens > len(ASK[0]["content"]) // 4  # the tool definitions are in the prompt
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=8, temperature=0)
    assert out.usage.prompt_tokens > plain.usage.prompt_tokens + 20


def test_tool_choice_none_leaves_tools_out_of_the_prompt(client):
    none = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none",
                                          max_tokens=4, temperature=0)
    plain = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, temperature=0)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    assert none.choices[0].message.content == plain.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_multi_turn_with_tool_results_gives_a_normal_answer(client, stream):
    kw = dict(model=MODEL, messages=TURNS, tools=[WEATHER], max_tokens=8, temperature=0)
    if not stream:
        out = client.chat.completions.create(**kw)
        assert out.choices[0].message.content and out.choices[0].finish_reason in ("stop", "length")
        return
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_legacy_functions_are_accepted(client):
    out = client.chat.completions.create(model=MODEL, messages=ASK, functions=[WEATHER["function"]],
                                         function_call="auto", max_tokens=4, temperature=0)
    assert out.choices[0].message.content and out.choices[0].message.function_call is None


def test_a_legacy_function_conversation_continues_like_its_tools_form(client):
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    legacy = ASK + [{"role": "assistant", "content": None, "function_call": call},
                    {"role": "function", "name": "get_weather", "content": "sunny, 21 C"}]
    tools = ASK + [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "call_fn_1", "type": "function", "function": call}]},
                   {"role": "tool", "tool_call_id": "call_fn_1", "content": "sunny, 21 C"}]
    a = client.chat.completions.create(model=MODEL, messages=legacy, functions=[WEATHER["function"]],
                                       max_tokens=8, temperature=0)
    b = client.chat.completions.create(model=MODEL, messages=tools, tools=[WEATHER], max_tokens=8, temperature=0)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens  # the same prompt reached the template
    assert a.choices[0].message.content == b.choices[0].message.content


BAD = [
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]}, "tools[0].type", "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name",
     "missing_required_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "object"}}]},
     "tools[0].function.parameters", "invalid_type"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "colour"}}}}}]},
     "tools[0].function.parameters", "invalid_function_parameters"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name", "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
     "invalid_value"),
    ({"tools": [WEATHER], "tool_choice": {}}, "tool_choice.type", "missing_required_parameter"),
    ({"messages": ASK + [{"role": "tool", "content": "r"}]}, "messages[1].tool_call_id",
     "missing_required_parameter"),
]


@pytest.mark.parametrize("extra, param, code", BAD, ids=[p for _, p, _ in BAD])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_tools_are_400_naming_the_field_and_the_next_request_succeeds(service, client, extra, param, code,
                                                                          stream):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 2, "stream": stream, **extra}
    resp = httpx.post(f"{service.base_url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error")
    assert client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=2).choices


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def test_grpc_tools_and_bad_schema(grpc_channel):
    gen = pb_grpc.GenerationServiceStub(grpc_channel)
    user = content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])
    tool = content_pb2.Tool(name="get_weather", parameters=struct(WEATHER["function"]["parameters"]))
    req = pb.GenerateRequest(model=MODEL, messages=[user], tools=[tool], stopping=pb.StoppingOptions(max_tokens=3),
                             tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_AUTO))
    events = list(gen.Generate(req))
    assert events[0].HasField("started") and events[-1].HasField("finished")
    bad = content_pb2.Tool(name="f", parameters=struct({"type": "object", "required": "city"}))
    with pytest.raises(grpc.RpcError) as info:
        list(gen.Generate(pb.GenerateRequest(model=MODEL, messages=[user], tools=[bad])))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(info.value).details[0].Unpack(detail)
    assert (detail.reason, detail.metadata["param"]) == ("invalid_function_parameters", "tools[0].function.parameters")


def test_langchain_bind_tools(service):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(model=MODEL, base_url=f"{service.base_url}/v1", api_key="unused",
                                      max_retries=0, max_tokens=6, temperature=0)

    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    answer = llm.bind_tools([get_weather], tool_choice="auto").invoke("Weather in Paris?")
    assert answer.content and answer.tool_calls == []
    with pytest.raises(openai.BadRequestError):
        llm.bind_tools([get_weather], tool_choice="get_time").invoke("Weather in Paris?")
