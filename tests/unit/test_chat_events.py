"""Engine text -> GenerateResponse events (server/chat/events.py) -> OpenAI chunks and
completions (shim/translate/chat.py): the whole output path of tool calls and reasoning,
with the engine's text split at every point."""
from __future__ import annotations

import json

import pytest

from genapi.v1 import common_pb2, content_pb2
from genapi.v1 import generation_service_pb2 as pb
from server.chat.events import ChatEvents
from server.chat.output import OutputConventions
from server.engines.base import FinishEvent, TextEvent
from shim.translate.chat import ChatChunkBuilder, ChatCompletionAccumulator

HERMES = OutputConventions.resolve({}, "<tool_call>")
TWO_CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET", "24h": true}}\n</tool_call>')


def core_events(text_pieces, conv=HERMES, reason="stop", **kw) -> tuple[list[pb.GenerateResponse], ChatEvents]:
    usage = common_pb2.Usage(prompt_tokens=5, total_tokens=5)
    mapper = ChatEvents(conv, usage, 1, **kw)
    out = [pb.GenerateResponse(usage=usage, started=pb.Started(request_id="r", model="m"))]
    for piece in text_pieces:
        out += [pb.GenerateResponse.FromString(e.SerializeToString()) for e in mapper.on_event(TextEvent(0, piece, 1))]
        if mapper.done:
            return out, mapper
    out += mapper.on_event(FinishEvent(0, reason))
    return out, mapper


def completion(events, **kw):
    acc = ChatCompletionAccumulator(model="m", **kw)
    for e in events:
        acc.add(e)
    return acc.result()


def chunks(events, **kw):
    builder = ChatChunkBuilder(model="m", **kw)
    out = [c for e in events for c in builder.on_event(e)]
    return out + builder.finish()


def reassemble(chunk_list) -> list[dict]:
    calls: dict[int, dict] = {}
    for chunk in chunk_list:
        for delta_call in chunk["choices"][0]["delta"].get("tool_calls", []) if chunk["choices"] else []:
            i = delta_call["index"]
            if i not in calls:  # the first delta of a call names it
                assert delta_call["id"].startswith("call_") and delta_call["type"] == "function"
                calls[i] = {"id": delta_call["id"], "type": "function",
                            "function": {"name": delta_call["function"]["name"], "arguments": ""}}
            else:
                assert set(delta_call) == {"index", "function"} and set(delta_call["function"]) == {"arguments"}
            calls[i]["function"]["arguments"] += delta_call["function"]["arguments"]
    return [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("step", [1, 2, 3, 7, 11, len(TWO_CALLS)])
def test_streamed_calls_reassemble_to_the_non_streamed_ones(step):
    pieces = [TWO_CALLS[i:i + step] for i in range(0, len(TWO_CALLS), step)]
    events, _ = core_events(pieces, tools=True)
    message = completion(events)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["content"] is None
    calls = message["message"]["tool_calls"]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "24h": True})]
    streamed = chunks(events)
    assert reassemble(streamed) == calls
    assert streamed[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any(c["choices"][0]["delta"].get("content") for c in streamed)


def test_without_parallel_calls_the_first_call_ends_the_choice():
    events, mapper = core_events([TWO_CALLS[i:i + 5] for i in range(0, len(TWO_CALLS), 5)], tools=True,
                                 parallel=False)
    assert mapper.done  # the caller ends the engine request here
    result = completion(events)["choices"][0]
    assert [c["function"]["name"] for c in result["message"]["tool_calls"]] == ["get_weather"]
    assert result["finish_reason"] == "tool_calls"


def test_legacy_functions_answer_with_function_call():
    events, _ = core_events([TWO_CALLS], tools=True, parallel=False)
    message = completion(events, legacy_functions=True)["choices"][0]
    assert message["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert "tool_calls" not in message["message"] and message["finish_reason"] == "function_call"
    streamed = chunks(events, legacy_functions=True)
    assert streamed[1]["choices"][0]["delta"]["function_call"]["name"] == "get_weather"
    assert streamed[-1]["choices"][0]["finish_reason"] == "function_call"


def test_text_without_tools_is_content_even_with_markers():
    events, _ = core_events([TWO_CALLS], tools=False)
    result = completion(events)["choices"][0]
    assert result["message"]["content"] == TWO_CALLS and result["finish_reason"] == "stop"


def test_a_cut_off_call_finishes_with_length():
    events, _ = core_events(['<tool_call>{"name": "f", "arguments": {"a"'], tools=True, reason="length")
    result = completion(events)["choices"][0]
    assert result["finish_reason"] == "length"
    assert result["message"]["tool_calls"][0]["function"]["arguments"] == '{"a"'


REASONING = OutputConventions.resolve({}, "<think></think>")


@pytest.mark.parametrize("step", [1, 4, 9])
def test_reasoning_separated_and_counted(step):
    text = "I should greet.</think>\n\nHello!"
    events, mapper = core_events([text[i:i + step] for i in range(0, len(text), step)], conv=REASONING,
                                 tools=False, thinking=True)
    result = completion(events)
    assert result["choices"][0]["message"]["reasoning_content"] == "I should greet."
    assert result["choices"][0]["message"]["content"] == "Hello!"
    reasoning_tokens = result["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert 0 < reasoning_tokens < result["usage"]["completion_tokens"]
    streamed = chunks(events)
    deltas = [c["choices"][0]["delta"] for c in streamed if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I should greet."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello!"


def test_finish_reason_of_a_plain_answer_is_unchanged():
    events, _ = core_events(["hi"], tools=True)
    assert events[-1].finished.reason == content_pb2.FINISH_REASON_STOP
