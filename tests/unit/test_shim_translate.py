"""shim.translate: OpenAI request dict -> GenerateRequest, events -> completion / chunks."""
from __future__ import annotations

import json

import pytest

from genapi.v1 import common_pb2, content_pb2, generation_service_pb2 as gen_pb2, model_service_pb2
from shim.protocol.chat import validate_chat_request
from shim.translate.chat import (
    ChatChunkBuilder,
    build_chat_completion,
    chat_request_to_proto,
    include_usage_requested,
)
from shim.translate.models import model_list_to_dict, model_to_dict

USER = [{"role": "user", "content": "hi"}]


def base(**extra):
    return {"model": "m", "messages": USER, **extra}


# --- request ---------------------------------------------------------------------------

def test_minimal_request_leaves_every_knob_unset():
    req = chat_request_to_proto(base(), "rid-1")
    assert req.request_id == "rid-1"
    assert req.model == "m"
    assert not req.HasField("sampling")
    assert not req.HasField("stopping")
    assert not req.HasField("output")
    assert not req.HasField("tool_choice")
    assert not req.HasField("response_format")
    assert len(req.tools) == 0
    assert req.messages[0].role == content_pb2.ROLE_USER
    assert [p.text for p in req.messages[0].content] == ["hi"]


def test_null_knobs_are_unset():
    body = base(temperature=None, top_p=None, seed=None, max_tokens=None, max_completion_tokens=None, stop=None,
                n=None, logprobs=None, top_logprobs=None, logit_bias=None, presence_penalty=None,
                frequency_penalty=None)
    req = chat_request_to_proto(body)
    assert not req.HasField("sampling") and not req.HasField("stopping") and not req.HasField("output")


def test_sampling_fields():
    req = chat_request_to_proto(base(temperature=0, top_p=0.5, seed=-3, presence_penalty=1.5,
                                     frequency_penalty=-2, logit_bias={"42": -100, "7": 2.5}))
    s = req.sampling
    assert s.HasField("temperature") and s.temperature == 0.0  # zero differs from unset
    assert s.top_p == 0.5
    assert s.seed == -3
    assert s.presence_penalty == 1.5
    assert s.frequency_penalty == -2.0
    assert dict(s.logit_bias) == {42: -100.0, 7: 2.5}


def test_response_format_maps_to_the_typed_message():
    from google.protobuf import json_format

    schema = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 3}}, "required": ["a"]}
    req = chat_request_to_proto(base(response_format={
        "type": "json_schema", "json_schema": {"name": "A", "strict": True, "schema": schema}}))
    rf = req.response_format
    assert rf.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA and rf.name == "A" and rf.strict
    assert json_format.MessageToDict(rf.schema) == schema
    obj = chat_request_to_proto(base(response_format={"type": "json_object"})).response_format
    assert obj.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT and not obj.HasField("schema")
    text = chat_request_to_proto(base(response_format={"type": "text"})).response_format
    assert text.type == content_pb2.RESPONSE_FORMAT_TYPE_TEXT


def test_only_given_sampling_fields_are_set():
    s = chat_request_to_proto(base(temperature=0.7)).sampling
    assert s.HasField("temperature")
    for name in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
        assert not s.HasField(name)


@pytest.mark.parametrize("body,expected", [
    (base(max_tokens=5), 5),
    (base(max_completion_tokens=6), 6),
    (base(max_tokens=9, max_completion_tokens=9), 9),
])
def test_max_tokens_and_its_alias(body, expected):
    stopping = chat_request_to_proto(body).stopping
    assert stopping.HasField("max_tokens") and stopping.max_tokens == expected
    assert not stopping.HasField("ignore_eos")


@pytest.mark.parametrize("stop,expected", [("END", ["END"]), (["a", "b\n"], ["a", "b\n"]), ([], [])])
def test_stop_string_or_list(stop, expected):
    assert list(chat_request_to_proto(base(stop=stop)).stopping.stop) == expected


def test_output_fields():
    out = chat_request_to_proto(base(n=3, logprobs=True, top_logprobs=0)).output
    assert out.n == 3 and out.logprobs is True
    assert out.HasField("top_logprobs") and out.top_logprobs == 0
    out = chat_request_to_proto(base(logprobs=False)).output
    assert out.HasField("logprobs") and out.logprobs is False and not out.HasField("n")


def test_roles_names_content_parts_and_tool_history():
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": [{"type": "text", "text": "dev"}]},
        {"role": "user", "name": "alice", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
            {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "no"}, {"type": "text", "text": "ok"}]},
    ]
    req = chat_request_to_proto({"model": "m", "messages": messages})
    roles = [m.role for m in req.messages]
    assert roles == [content_pb2.ROLE_SYSTEM, content_pb2.ROLE_DEVELOPER, content_pb2.ROLE_USER,
                     content_pb2.ROLE_ASSISTANT, content_pb2.ROLE_TOOL, content_pb2.ROLE_ASSISTANT]
    assert req.messages[1].content[0].text == "dev"
    assert req.messages[2].name == "alice"
    assert [p.text for p in req.messages[2].content] == ["a", "b"]
    assistant = req.messages[3]
    assert len(assistant.content) == 0
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "f", "{\"x\": 1}"), ("call_2", "g", "{}")]
    assert req.messages[4].tool_call_id == "call_1"
    assert [p.text for p in req.messages[4].content] == ["42"]
    assert [p.text for p in req.messages[5].content] == ["no", "ok"]


def test_image_and_audio_parts_become_typed_parts_in_order():
    content = [{"type": "image_url", "image_url": {"url": "https://img.example/cat.png", "detail": "low"}},
               {"type": "text", "text": "and"},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
               {"type": "input_audio", "input_audio": {"data": "UklGRgABAgM=", "format": "wav"}}]
    body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    req = chat_request_to_proto(validate_chat_request(body))  # validation decodes input_audio, once
    assert content[3]["input_audio"]["data"] == b"RIFF\x00\x01\x02\x03"
    assert validate_chat_request(body) is body  # and validating the decoded body again keeps it
    parts = req.messages[0].content
    assert [p.WhichOneof("part") for p in parts] == ["image", "text", "image", "audio"]
    # URLs travel as sent, data: ones too: the core is the one place that fetches and decodes
    assert (parts[0].image.url, parts[0].image.detail) == ("https://img.example/cat.png", content_pb2.IMAGE_DETAIL_LOW)
    assert (parts[2].image.url, parts[2].image.detail) == ("data:image/png;base64,iVBORw0KGgo=",
                                                           content_pb2.IMAGE_DETAIL_AUTO)
    assert (parts[3].audio.data, parts[3].audio.format) == (b"RIFF\x00\x01\x02\x03", "wav")


def test_include_usage_requested():
    assert include_usage_requested(base(stream=True, stream_options={"include_usage": True}))
    assert not include_usage_requested(base(stream=True, stream_options={"include_usage": False}))
    assert not include_usage_requested(base(stream=True))
    assert not include_usage_requested(base(stream=True, stream_options=None))


# --- events ----------------------------------------------------------------------------

def usage(p, c):
    return common_pb2.Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def started(p=5):
    return gen_pb2.GenerateResponse(choice_index=0, usage=usage(p, 0), started=gen_pb2.Started(model="m"))


def text(i, t, c, p=5, logprobs=()):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(p, c),
                                    text=gen_pb2.TextDelta(text=t, logprobs=logprobs))


def finished(i, reason, c, p=5):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(p, c), finished=gen_pb2.Finished(reason=reason))


def tool(i, index, c, id="", name="", args=""):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(5, c),
                                    tool_call=gen_pb2.ToolCallDelta(index=index, id=id, name=name, arguments=args))


def test_completion_single_choice():
    events = [started(), text(0, "Hel", 1), text(0, "lo", 2), finished(0, content_pb2.FINISH_REASON_STOP, 2)]
    out = build_chat_completion(events, model="m", completion_id="chatcmpl-x", created=123)
    assert out == {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 123,
        "model": "m",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def test_completion_n2_interleaved_and_finish_reasons():
    events = [started(), text(1, "b", 1), text(0, "a", 2), text(1, "B", 3),
              finished(1, content_pb2.FINISH_REASON_LENGTH, 3), text(0, "A", 4),
              finished(0, content_pb2.FINISH_REASON_CONTENT_FILTER, 4)]
    out = build_chat_completion(events, model="m", n=2)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in out["choices"]] == ["aA", "bB"]
    assert [c["finish_reason"] for c in out["choices"]] == ["content_filter", "length"]
    assert out["usage"]["completion_tokens"] == 4
    assert out["id"].startswith("chatcmpl-") and isinstance(out["created"], int)


def test_completion_logprobs_shape_and_non_finite_values():
    lp = gen_pb2.TokenLogprob(token="é", logprob=-0.25, bytes="é".encode(),
                              top_logprobs=[gen_pb2.TopLogprob(token="é", logprob=-0.25, bytes="é".encode()),
                                            gen_pb2.TopLogprob(token="x", logprob=float("-inf"))])
    out = build_chat_completion([started(), text(0, "é", 1, logprobs=[lp]),
                                 finished(0, content_pb2.FINISH_REASON_STOP, 1)], model="m", logprobs=True)
    logprobs = out["choices"][0]["logprobs"]
    assert logprobs == {"content": [{
        "token": "é", "logprob": -0.25, "bytes": [195, 169],
        "top_logprobs": [{"token": "é", "logprob": -0.25, "bytes": [195, 169]},
                         {"token": "x", "logprob": -9999.0, "bytes": [120]}],
    }], "refusal": None}
    json.dumps(out, allow_nan=False)  # no NaN/Infinity leaks into JSON


def test_completion_tool_calls():
    events = [started(), tool(0, 0, 1, id="call_a", name="f", args="{\"x\""), tool(0, 0, 2, args=": 1}"),
              tool(0, 1, 3, id="call_b", name="g", args="{}"), finished(0, content_pb2.FINISH_REASON_TOOL_CALLS, 3)]
    choice = build_chat_completion(events, model="m")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}},
        {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]


def test_completion_empty_text_is_empty_string():
    out = build_chat_completion([started(), finished(0, content_pb2.FINISH_REASON_STOP, 0)], model="m")
    assert out["choices"][0]["message"]["content"] == ""


def test_completion_reasoning_is_reported_separately():
    ev = gen_pb2.GenerateResponse(choice_index=0, usage=usage(5, 1), reasoning=gen_pb2.ReasoningDelta(text="think"))
    out = build_chat_completion([started(), ev, text(0, "x", 2), finished(0, 1, 2)], model="m")
    assert out["choices"][0]["message"]["reasoning_content"] == "think"
    assert out["choices"][0]["message"]["content"] == "x"


# --- chunks ----------------------------------------------------------------------------

def run_chunks(events, **kw):
    b = ChatChunkBuilder(model="m", completion_id="chatcmpl-s", created=7, **kw)
    out = []
    for ev in events:
        out += b.on_event(ev)
    return out + b.finish()


def test_chunks_running_usage_by_default():
    chunks = run_chunks([started(), text(0, "a", 1), text(0, "b", 2), finished(0, content_pb2.FINISH_REASON_STOP, 2)])
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None}, {"content": "a"}, {"content": "b"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 2]
    assert all(c["usage"]["prompt_tokens"] == 5 for c in chunks)
    for c in chunks:
        assert c["id"] == "chatcmpl-s" and c["created"] == 7 and c["model"] == "m"
        assert c["object"] == "chat.completion.chunk"
        assert c["choices"][0]["logprobs"] is None


def test_chunks_include_usage_final_chunk():
    chunks = run_chunks([started(), text(0, "a", 1), finished(0, content_pb2.FINISH_REASON_LENGTH, 1)],
                        include_usage=True)
    assert all(c["usage"] is None for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"] == []
    assert final["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert sum(1 for c in chunks if c["usage"] is not None) == 1
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "length"]


def test_chunks_n2_interleaved_one_role_and_one_finish_per_choice():
    events = [started(), text(1, "b", 1), text(0, "a", 2), finished(0, content_pb2.FINISH_REASON_STOP, 2),
              text(1, "c", 3), finished(1, content_pb2.FINISH_REASON_LENGTH, 3)]
    chunks = run_chunks(events, n=2)
    assert all(len(c["choices"]) == 1 for c in chunks)
    by_choice: dict[int, list[dict]] = {0: [], 1: []}
    for c in chunks:
        by_choice[c["choices"][0]["index"]].append(c["choices"][0])
    for index, expected_text, reason in ((0, "a", "stop"), (1, "bc", "length")):
        parts = by_choice[index]
        assert parts[0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
        assert sum(1 for p in parts if "role" in p["delta"]) == 1
        assert [p["finish_reason"] for p in parts if p["finish_reason"]] == [reason]
        assert parts[-1]["finish_reason"] == reason and parts[-1]["delta"] == {}
        assert "".join(p["delta"].get("content", "") for p in parts) == expected_text
    # both choices are opened right after `started`
    assert [c["choices"][0]["index"] for c in chunks[:2]] == [0, 1]


def test_chunks_logprobs():
    lp = gen_pb2.TokenLogprob(token="a", logprob=-1.0, bytes=b"a")
    chunks = run_chunks([started(), text(0, "a", 1, logprobs=[lp]), finished(0, 1, 1)], logprobs=True)
    assert chunks[0]["choices"][0]["logprobs"] is None
    assert chunks[1]["choices"][0]["logprobs"] == {
        "content": [{"token": "a", "logprob": -1.0, "bytes": [97], "top_logprobs": []}], "refusal": None}
    assert chunks[2]["choices"][0]["logprobs"] is None


def test_chunks_tool_call_deltas_carry_index():
    chunks = run_chunks([started(), tool(0, 0, 1, id="call_a", name="f", args="{"), tool(0, 0, 2, args="}"),
                         finished(0, content_pb2.FINISH_REASON_TOOL_CALLS, 2)])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:3]]
    assert calls[0] == {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{"}}
    assert calls[1] == {"index": 0, "function": {"arguments": "}"}}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_chunks_without_started_still_open_the_choice():
    chunks = run_chunks([text(0, "a", 1), finished(0, 1, 1)])
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"


def test_chunks_events_after_finish_are_dropped_and_missing_finish_is_closed():
    chunks = run_chunks([started(), finished(0, 2, 0), text(0, "late", 1)])
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "length"]
    chunks = run_chunks([started(), text(0, "a", 1)])  # core forgot `finished`
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# --- models ----------------------------------------------------------------------------

def test_model_to_dict():
    m = model_service_pb2.Model(id="org/x", task=common_pb2.MODEL_TASK_CHAT, backend="torch", context_length=2048,
                                created=1700000000, owned_by="me", max_output_tokens=512)
    assert model_to_dict(m) == {"id": "org/x", "object": "model", "created": 1700000000, "owned_by": "me",
                                "task": "chat", "context_length": 2048, "max_output_tokens": 512}
    bare = model_to_dict(model_service_pb2.Model(id="e"))
    assert bare == {"id": "e", "object": "model", "created": 0, "owned_by": "genapi"}
    assert model_list_to_dict([m]) == {"object": "list", "data": [model_to_dict(m)]}
