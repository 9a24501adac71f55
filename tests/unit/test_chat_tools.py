"""Tools in the core: validation (server/convert/tools.py), the prompt the embedded
model's template renders for tools and tool turns, and reasoning_effort's switch."""
from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

pytest.importorskip("transformers")

from genapi.v1 import content_pb2  # noqa: E402
from genapi.v1 import generation_service_pb2 as pb  # noqa: E402
from server.chat.output import OutputConventions  # noqa: E402
from server.chat.template import render_prompt  # noqa: E402
from server.convert.tools import tool_plan  # noqa: E402
from server.errors import GenapiError  # noqa: E402
from server.services.generation import template_kwargs  # noqa: E402

from ..conftest import ROOT, TINY_MODEL  # noqa: E402

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "maximum": 7}},
           "required": ["city"]}


def tool(name="get_weather", schema=WEATHER, description="Current weather") -> content_pb2.Tool:
    t = content_pb2.Tool(name=name, description=description)
    if schema is not None:
        params = struct_pb2.Struct()
        params.update(schema)
        t.parameters.CopyFrom(params)
    return t


def user(text="Weather in Paris?") -> content_pb2.ChatMessage:
    return content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=text)])


def request(**kw) -> pb.GenerateRequest:
    kw.setdefault("messages", [user()])
    return pb.GenerateRequest(model="m", **kw)


def test_plan_of_tools_and_choices():
    plan = tool_plan(request(tools=[tool()]))
    assert (plan.mode, plan.parallel) == ("auto", True)
    assert plan.tools == [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER,
                                                            "description": "Current weather"}}]
    assert plan.parameters["get_weather"]["properties"]["days"]["maximum"] == 7  # an int again, not 7.0
    named = tool_plan(request(tools=[tool(), tool("f", None)],
                              tool_choice=content_pb2.ToolChoice(function_name="f")))
    assert (named.mode, named.function, named.parallel) == ("function", "f", False)
    assert named.parameters["f"] == {"type": "object", "properties": {}}
    none = tool_plan(request(tools=[tool()], tool_choice=content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_NONE)))
    assert (none.mode, none.tools) == ("none", [])
    assert not tool_plan(request(tools=[tool()], parallel_tool_calls=False)).parallel
    assert tool_plan(request()).mode == "none"


@pytest.mark.parametrize("kw, param, reason", [
    ({"tools": [tool(schema={"type": "object", "properties": {"a": {"type": "nonsense"}}})]},
     "tools[0].function.parameters", "invalid_function_parameters"),
    ({"tools": [tool(schema={"type": "string"})]}, "tools[0].function.parameters", "invalid_function_parameters"),
    ({"tools": [tool(), tool()]}, "tools[1].function.name", "invalid_value"),
    ({"tools": [tool(name="has space")]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [tool(name="")]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [tool()], "tool_choice": content_pb2.ToolChoice(function_name="other")}, "tool_choice",
     "invalid_value"),
    ({"tool_choice": content_pb2.ToolChoice(mode=content_pb2.TOOL_CHOICE_MODE_REQUIRED)}, "tool_choice",
     "invalid_value"),
    ({"messages": [user(), content_pb2.ChatMessage(role=content_pb2.ROLE_TOOL,
                                                   content=[content_pb2.ContentPart(text="r")])]},
     "messages[1].tool_call_id", "invalid_value"),
])
def test_bad_tools_are_invalid_argument_naming_the_field(kw, param, reason):
    with pytest.raises(GenapiError) as info:
        tool_plan(request(**kw))
    assert (info.value.param, info.value.reason) == (param, reason)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_MODEL)


def test_tools_and_tool_turns_reach_the_template_in_its_shape(tokenizer):
    messages = [
        user(),
        content_pb2.ChatMessage(role=content_pb2.ROLE_ASSISTANT, tool_calls=[
            content_pb2.ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')]),
        content_pb2.ChatMessage(role=content_pb2.ROLE_TOOL, tool_call_id="call_1",
                                content=[content_pb2.ContentPart(text="sunny, 21 C")]),
    ]
    plan = tool_plan(request(messages=messages, tools=[tool()]))
    text = tokenizer.decode(render_prompt(tokenizer, messages, plan.tools))
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in text
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>\n<|im_start|>tool\nsunny, 21 C<|im_end|>\n<|im_start|>assistant\n') in text
    assert "<tools>" not in tokenizer.decode(render_prompt(tokenizer, messages))  # no tools, none rendered


def test_reasoning_effort_maps_to_the_thinking_switch():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ROOT / "models" / "tiny-chat-reasoning")
    conv = OutputConventions.resolve({}, tok.chat_template)
    assert conv.reasoning_markers == ("<think>", "</think>") and conv.thinking_switch
    assert template_kwargs(conv, pb.REASONING_EFFORT_UNSPECIFIED) == {}
    assert template_kwargs(conv, pb.REASONING_EFFORT_HIGH) == {"enable_thinking": True}
    off = template_kwargs(conv, pb.REASONING_EFFORT_NONE)
    assert off == {"enable_thinking": False}
    assert tok.decode(render_prompt(tok, [user()])).endswith("<|im_start|>assistant\n<think>\n")
    assert tok.decode(render_prompt(tok, [user()], template_kwargs=off)).endswith("<think>\n\n</think>\n\n")
    assert template_kwargs(OutputConventions.resolve({}, "plain"), pb.REASONING_EFFORT_NONE) == {}
