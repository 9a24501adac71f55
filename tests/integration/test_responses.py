"""The Responses API through the official openai SDK against the real core and shim:
string and item input, instructions, output_text; the streamed event order and sequence
numbers (wire-shapes.md); the SDK's responses.stream and responses.parse helpers; function
tools round trip; text.format json_schema; previous_response_id over three turns and
across a restart; retrieve (and its stream replay), input_items, delete; store=false;
logprobs; truncation; background create -> poll, streamed, and cancel (the engine request
ends); a closed stream aborts its generation; reasoning items; a failure mid-stream;
batches of responses; conversations; the typed gRPC service; bad input (400/404 naming
the param); per-key isolation.

One service with two API keys (owners A and B) serves the module. Besides the tiny chat
model it runs the same weights as a reasoning model, as a model whose decoding pauses
while a file exists (so a background response stays in progress), and as one that fails
after a few events.
"""
from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from typing import Literal

from pydantic import BaseModel, Field

from ..conftest import MODEL, ROOT, TINY_MODEL, Service, wait_until

KEY_A, KEY_B = "sk-resp-owner-a-0123456789abcdef", "sk-resp-owner-b-0123456789abcdef"
REASONING = "genapi-tiny-reasoning"
PAUSED = "genapi-tiny-paused"
FAILING = "genapi-tiny-failing"
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta", "response.output_text.done",
               "response.content_part.done", "response.output_item.done"]
WEATHER = {"type": "function", "name": "get_weather", "description": "Current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                          "required": ["city"], "additionalProperties": False}}
PERSON = {"type": "object", "properties": {"role": {"enum": ["admin", "user", "guest"]},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["role", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses")
    s = Service(tmp, "responses", env={"GENAPI_API_KEYS": f"{KEY_A},{KEY_B}"}, model_options=f"""
        [[models]]
        name = "{REASONING}"
        path = "{ROOT / 'models' / 'tiny-chat-reasoning'}"
        [models.options]
        max_batch = 4
        [[models]]
        name = "{PAUSED}"
        path = "{TINY_MODEL}"
        [models.options]
        max_batch = 1
        max_queue = 1
        [models.options.fault]
        pause_decode_file = "{tmp / 'pause'}"
        [[models]]
        name = "{FAILING}"
        path = "{TINY_MODEL}"
        [models.options]
        max_batch = 4
        [models.options.fault]
        fail_after_events = 4
        """)
    s.pause = tmp / "pause"
    s.start(timeout_s=600)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def a(svc):
    return svc.sdk(api_key=KEY_A)


@pytest.fixture(scope="module")
def b(svc):
    return svc.sdk(api_key=KEY_B)


def create(client, input="Hello there", **kw):
    kw.setdefault("max_output_tokens", 64)
    kw.setdefault("temperature", 0)
    return client.responses.create(model=kw.pop("model", MODEL), input=input, **kw)


def raw(svc, method: str, path: str, key: str = KEY_A, **kw) -> httpx.Response:
    return httpx.request(method, f"{svc.base_url}/v1{path}", headers={"Authorization": f"Bearer {key}"},
                         timeout=60, **kw)


def message_text(response) -> str:
    return "".join(c.text for o in response.output if o.type == "message" for c in o.content
                   if c.type == "output_text")


# --- create --------------------------------------------------------------------------

def test_string_input_answers_as_chat_does(a):
    r = create(a, "Tell me a joke")
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status == "completed" and r.error is None and r.incomplete_details is None
    assert [o.type for o in r.output] == ["message"]
    msg = r.output[0]
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.status == "completed"
    assert r.output_text and r.output_text == message_text(r)
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens and r.usage.output_tokens > 0
    # The same generation path as chat: greedy answers and token counts agree.
    chat = a.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a joke"}],
                                     max_tokens=64, temperature=0)
    assert r.output_text == chat.choices[0].message.content
    assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)


def test_items_and_instructions_are_the_chat_conversation(a):
    items = [{"role": "user", "content": "Hi"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
             {"role": "user", "content": [{"type": "input_text", "text": "Tell me a joke"}]}]
    r = create(a, items, instructions="Answer briefly.")
    chat = a.chat.completions.create(model=MODEL, max_tokens=64, temperature=0, messages=[
        {"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me a joke"}])
    assert r.instructions == "Answer briefly."
    assert r.usage.input_tokens == chat.usage.prompt_tokens
    assert r.output_text == chat.choices[0].message.content


def test_max_output_tokens_makes_an_incomplete_response(a):
    r = create(a, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"


def test_stream_event_order_and_sequence_numbers(a):
    events = list(create(a, stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = types.count("response.output_text.delta")
    assert deltas >= 2
    assert types == TEXT_EVENTS[:4] + ["response.output_text.delta"] * deltas + TEXT_EVENTS[5:] + \
        ["response.completed"]
    created, done, final = events[0].response, events[-2], events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.id == final.id
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    item_id = events[2].item.id
    assert all(e.item_id == item_id for e in events if e.type.startswith("response.output_text"))
    assert text == events[-4].text == done.item.content[0].text == final.output_text
    assert final.status == "completed" and deltas <= final.usage.output_tokens <= deltas + 1  # + end of turn
    # Streamed and not, the same answer.
    assert create(a).output_text == text


def test_sdk_stream_helper_assembles_the_final_response(a):
    with a.responses.stream(model=MODEL, input="Hello there", max_output_tokens=64, temperature=0) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) != ""
    assert a.responses.retrieve(final.id).output_text == final.output_text


class Person(BaseModel):
    role: Literal["admin", "user", "guest"]
    age: int = Field(ge=0, le=99)


def test_text_format_json_schema_validates_and_parses(a):
    r = create(a, "Describe a person as JSON.", max_output_tokens=128,
               text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), PERSON)
    parsed = a.responses.parse(model=MODEL, input="Describe a person as JSON.", max_output_tokens=128,
                               temperature=0, text_format=Person)
    assert isinstance(parsed.output_parsed, Person)
    jsonschema.validate(parsed.output_parsed.model_dump(), PERSON)
    obj = create(a, "Some JSON please.", max_output_tokens=128, text={"format": {"type": "json_object"}})
    assert obj.status != "completed" or isinstance(json.loads(obj.output_text), dict)


def test_include_output_text_logprobs(a):
    r = create(a, include=["message.output_text.logprobs"], top_logprobs=2, max_output_tokens=6)
    part = r.output[0].content[0]
    assert len(part.logprobs) == r.usage.output_tokens
    assert "".join(lp.token for lp in part.logprobs) == part.text
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in part.logprobs)
    assert create(a, max_output_tokens=6).output[0].content[0].logprobs == []


def test_truncation_auto_drops_the_oldest_items_to_fit(svc, a):
    long = [{"role": "user", "content": " ".join(["sky"] * 120) + f" {i}"} for i in range(24)]
    with pytest.raises(openai.BadRequestError) as e:
        create(a, long, max_output_tokens=8)
    assert e.value.code == "context_length_exceeded" and e.value.param == "input"
    assert "max_tokens" not in e.value.message and "the messages" not in e.value.message  # the Responses API's words
    r = create(a, long, max_output_tokens=8, truncation="auto", instructions="Be brief.")
    assert r.truncation == "auto" and r.status in ("completed", "incomplete")
    assert 1000 < r.usage.input_tokens + 8 <= 2048
    with pytest.raises(openai.BadRequestError) as e:
        create(a, max_output_tokens=5000)
    assert e.value.param == "max_output_tokens"
    assert "max_output_tokens" in e.value.message and "max_tokens" not in e.value.message, e.value.message


# --- tools ---------------------------------------------------------------------------

def test_function_call_round_trip(a):
    r = create(a, "What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
               parallel_tool_calls=False)
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and r.status == "completed"
    call = calls[0]
    assert call.id.startswith("fc_") and call.call_id and call.name == "get_weather" and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # Streamed: output_item.added, argument deltas, arguments.done, output_item.done.
    events = list(create(a, "What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
                         parallel_tool_calls=False, stream=True))
    types = [e.type for e in events]
    start = types.index("response.output_item.added")
    assert events[start].item.type == "function_call" and events[start].item.arguments == ""
    done = types.index("response.function_call_arguments.done")
    args = "".join(e.delta for e in events[start:done] if e.type == "response.function_call_arguments.delta")
    assert events[done].arguments == args == events[done + 1].item.arguments and events[done].name == "get_weather"
    assert types[done + 1] == "response.output_item.done" and types[-1] == "response.completed"
    # The tool's output continues the stored response: an ordinary answer.
    answer = create(a, [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
                    previous_response_id=r.id, tools=[WEATHER])
    assert answer.output_text and answer.usage.input_tokens > r.usage.input_tokens
    # The same turn given as items (no stored state) is the same prompt.
    manual = create(a, [{"role": "user", "content": "What is the weather in Paris?"},
                        {"type": "function_call", "call_id": call.call_id, "name": call.name,
                         "arguments": call.arguments},
                        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
                    tools=[WEATHER], store=False)
    assert manual.usage.input_tokens == answer.usage.input_tokens and manual.output_text == answer.output_text


# --- state ---------------------------------------------------------------------------

def test_three_turns_via_previous_response_id_and_input_items(a):
    first = create(a, "Hi", instructions="Be brief.", metadata={"turn": "1"})
    second = create(a, "Tell me a joke", previous_response_id=first.id)
    third = create(a, "Another one", previous_response_id=second.id)
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    # Instructions do not carry over; the whole history does: the same as the items given at once.
    manual = create(a, [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": [{"type": "output_text", "text": first.output_text}]},
                        {"role": "user", "content": "Tell me a joke"},
                        {"role": "assistant", "content": [{"type": "output_text", "text": second.output_text}]},
                        {"role": "user", "content": "Another one"}], store=False)
    assert manual.usage.input_tokens == third.usage.input_tokens and manual.output_text == third.output_text
    items = a.responses.input_items.list(third.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "Another one"
    got = a.responses.retrieve(first.id)
    assert got.output_text == first.output_text and got.metadata == {"turn": "1"} and got.status == "completed"


def test_input_items_pages_and_order(a):
    r = create(a, [{"role": "user", "content": f"line {i}"} for i in range(5)], max_output_tokens=2)
    desc = a.responses.input_items.list(r.id)
    assert [i.content[0].text for i in desc.data] == [f"line {i}" for i in reversed(range(5))]
    first = a.responses.input_items.list(r.id, limit=2, order="asc")
    assert [i.content[0].text for i in first.data] == ["line 0", "line 1"] and first.has_more
    rest = a.responses.input_items.list(r.id, limit=10, order="asc", after=first.data[-1].id)
    assert [i.content[0].text for i in rest.data] == ["line 2", "line 3", "line 4"] and not rest.has_more
    assert [i.content[0].text for i in a.responses.input_items.list(r.id, order="asc", limit=2)] == \
        [f"line {i}" for i in range(5)]


def test_retrieve_stream_replays_the_stored_events(svc, a):
    live = list(create(a, stream=True))
    final = live[-1].response
    resp = raw(svc, "GET", f"/responses/{final.id}?stream=true")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in resp.text.split("\n\n") if f]
    events = [json.loads(f.split("\ndata: ", 1)[1]) for f in frames]
    assert all(f.startswith(f"event: {e['type']}\n") for f, e in zip(frames, events))
    types = [e["type"] for e in events]
    assert types == TEXT_EVENTS + ["response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == final.output_text
    later = raw(svc, "GET", f"/responses/{final.id}?stream=true&starting_after=5").text
    assert [json.loads(f.split("\ndata: ", 1)[1])["sequence_number"] for f in later.split("\n\n") if f] == \
        list(range(6, len(events)))


def test_delete_and_store_false(a):
    r = create(a)
    assert a.responses.delete(r.id) is None
    for call in (lambda: a.responses.retrieve(r.id), lambda: a.responses.input_items.list(r.id),
                 lambda: a.responses.delete(r.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as e:
        create(a, previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"
    unstored = create(a, store=False)
    assert unstored.store is False and unstored.output_text
    with pytest.raises(openai.NotFoundError):
        a.responses.retrieve(unstored.id)


def test_previous_response_survives_a_restart_and_background_work_resumes(svc, a):
    first = create(a, "Hi")
    second = create(a, "Tell me a joke", previous_response_id=first.id)
    svc.pause.touch()  # a background response that is in progress when the core stops
    try:
        running = create(a, background=True, model=PAUSED)
        assert wait_until(lambda: a.responses.retrieve(running.id).status == "in_progress", timeout_s=60)
        svc.stop()
    finally:
        svc.pause.unlink()
    svc.start(timeout_s=600)
    assert wait_until(lambda: a.responses.retrieve(running.id).status == "completed", timeout_s=120)
    assert a.responses.retrieve(running.id).output_text == create(a).output_text
    assert a.responses.retrieve(second.id).output_text == second.output_text
    third = create(a, "Another one", previous_response_id=second.id)
    assert third.usage.input_tokens > second.usage.input_tokens
    assert [i.content[0].text for i in a.responses.input_items.list(second.id).data] == ["Tell me a joke"]


# --- background ----------------------------------------------------------------------

def test_background_create_poll_completed(a):
    r = create(a, background=True)
    assert r.status == "queued" and r.background is True and r.output == []
    assert wait_until(lambda: a.responses.retrieve(r.id).status not in ("queued", "in_progress"), timeout_s=120)
    done = a.responses.retrieve(r.id)
    assert done.status == "completed" and done.output_text == create(a).output_text
    # Cancelling a finished response returns it unchanged.
    assert a.responses.cancel(r.id).status == "completed"


def test_background_response_streams_from_queued_to_completed(a):
    events = list(create(a, background=True, stream=True))
    types = [e.type for e in events]
    assert types[:3] == ["response.created", "response.queued", "response.in_progress"]
    assert types[3:] == TEXT_EVENTS[2:4] + ["response.output_text.delta"] * types.count(
        "response.output_text.delta") + TEXT_EVENTS[5:] + ["response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    assert final.background and final.output_text == create(a).output_text
    assert a.responses.retrieve(final.id).output_text == final.output_text


def test_streamed_background_response_runs_on_without_its_client(svc, a):
    svc.pause.touch()
    try:
        with create(a, background=True, stream=True, model=PAUSED) as stream:
            first = [next(stream), next(stream)]
        assert [e.type for e in first] == ["response.created", "response.queued"]
    finally:
        svc.pause.unlink()
    rid = first[0].response.id
    assert wait_until(lambda: a.responses.retrieve(rid).status == "completed", timeout_s=120)
    assert a.responses.retrieve(rid).output_text == create(a).output_text


def test_background_cancel_ends_its_generation(svc, a):
    stats = lambda: next(e for e in svc_stats(svc) if e.model == PAUSED)  # noqa: E731
    svc.pause.touch()
    try:
        r = create(a, background=True, model=PAUSED)
        assert wait_until(lambda: stats().active_sequences == 1, timeout_s=60)
        assert a.responses.retrieve(r.id).status == "in_progress"
        cancelled = a.responses.cancel(r.id)
        assert cancelled.status == "cancelled"
        assert wait_until(lambda: stats().active_sequences == 0, timeout_s=30)
    finally:
        svc.pause.unlink()
    assert a.responses.retrieve(r.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError):
        a.responses.cancel(create(a).id)  # not a background response


def test_background_responses_the_engine_refuses_wait_their_turn(svc, a):
    stats = lambda: next(e for e in svc_stats(svc) if e.model == PAUSED)  # noqa: E731
    rejected = stats().requests_rejected
    svc.pause.touch()
    try:  # one slot and one queue place: the third is refused (engine_overloaded) and retried
        ids = [create(a, background=True, model=PAUSED).id for _ in range(3)]
        assert wait_until(lambda: stats().requests_rejected > rejected, timeout_s=60)
        assert all(a.responses.retrieve(i).status == "in_progress" for i in ids)
    finally:
        svc.pause.unlink()
    assert wait_until(lambda: all(a.responses.retrieve(i).status == "completed" for i in ids), timeout_s=120)
    assert {a.responses.retrieve(i).output_text for i in ids} == {create(a).output_text}


def test_closing_a_foreground_stream_aborts_its_generation(svc, a):
    stats = lambda: next(e for e in svc_stats(svc) if e.model == PAUSED)  # noqa: E731
    svc.pause.touch()
    try:
        with create(a, stream=True, model=PAUSED) as stream:
            first = [next(stream), next(stream)]
            assert wait_until(lambda: stats().active_sequences == 1, timeout_s=60)
        assert [e.type for e in first] == ["response.created", "response.in_progress"]
        assert wait_until(lambda: stats().active_sequences == 0, timeout_s=30)
    finally:
        svc.pause.unlink()
    with pytest.raises(openai.NotFoundError):  # a response its client abandoned is not stored
        a.responses.retrieve(first[0].response.id)


def svc_stats(svc):
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(svc.grpc_target) as ch:
        return pb_grpc.AdminServiceStub(ch).GetEngineStats(
            pb.GetEngineStatsRequest(), metadata=[("authorization", f"Bearer {KEY_A}")]).engines


def test_a_batch_of_responses_runs_as_its_owner(a, b):
    from .batch_support import result_lines, upload, wait_batch

    first = create(a, "Hi")

    def line(cid, **body):
        return {"custom_id": cid, "method": "POST", "url": "/v1/responses",
                "body": {"model": MODEL, "input": "Tell me a joke", "max_output_tokens": 64, "temperature": 0,
                         **body}}
    f = upload(a, [line("plain"), line("continued", previous_response_id=first.id), line("bg", background=True)])
    batch = wait_batch(a, a.batches.create(input_file_id=f.id, endpoint="/v1/responses",
                                           completion_window="24h").id)
    assert batch.status == "completed", batch
    out = {r["custom_id"]: r["response"] for r in result_lines(a, batch.output_file_id)}
    err = {r["custom_id"]: r["response"] for r in result_lines(a, batch.error_file_id)}
    assert set(out) == {"plain", "continued"} and set(err) == {"bg"}
    plain, continued = out["plain"]["body"], out["continued"]["body"]
    assert plain["object"] == "response" and plain["status"] == "completed"
    assert plain["output"][0]["content"][0]["text"] == create(a, "Tell me a joke").output_text
    assert continued["previous_response_id"] == first.id
    assert continued["usage"]["input_tokens"] > plain["usage"]["input_tokens"]
    assert err["bg"]["status_code"] == 400 and err["bg"]["body"]["error"]["param"] == "background"
    assert batch.usage.output_tokens == plain["usage"]["output_tokens"] + continued["usage"]["output_tokens"]
    # The stored responses are the batch owner's.
    assert a.responses.retrieve(plain["id"]).output_text == plain["output"][0]["content"][0]["text"]
    with pytest.raises(openai.NotFoundError):
        b.responses.retrieve(plain["id"])


# --- reasoning and failures ----------------------------------------------------------

def test_reasoning_model_gives_a_reasoning_item(a):
    r = create(a, "Why is the sky blue?", model=REASONING, max_output_tokens=12)
    assert r.output[0].type == "reasoning" and r.output[0].content[0].text
    assert r.usage.output_tokens_details.reasoning_tokens > 0
    events = list(create(a, "Why is the sky blue?", model=REASONING, max_output_tokens=12, stream=True))
    types = [e.type for e in events]
    assert types[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert events[2].item.type == "reasoning" and "response.reasoning_text.delta" in types
    done = types.index("response.reasoning_text.done")
    assert events[done].text == "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_engine_failure_mid_stream_ends_with_response_failed(a):
    events = list(create(a, model=FAILING, stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in [e.type for e in events]
    failed = events[-1].response
    assert events[-1].type == "response.failed" and failed.status == "failed"
    assert failed.error.code == "server_error" and failed.error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert a.responses.retrieve(failed.id).status == "failed"
    unary = create(a, model=FAILING)
    assert unary.status == "failed" and unary.error.message


# --- conversations -------------------------------------------------------------------

def test_conversations_crud_and_items(a):
    conv = a.conversations.create(metadata={"topic": "jokes"},
                                  items=[{"type": "message", "role": "user", "content": "Hi"}])
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "jokes"}
    assert a.conversations.retrieve(conv.id).metadata == {"topic": "jokes"}
    assert a.conversations.update(conv.id, metadata={"topic": "puns"}).metadata == {"topic": "puns"}
    added = a.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]}])
    assert len(added.data) == 1 and added.data[0].id.startswith("msg_")
    r = create(a, "Tell me a joke", conversation=conv.id)
    assert r.conversation.id == conv.id
    items = list(a.conversations.items.list(conv.id, order="asc"))
    assert [i.type for i in items] == ["message"] * 4
    assert items[2].content[0].text == "Tell me a joke" and items[3].id == r.output[0].id
    assert items[3].content[0].text == r.output_text
    # The next response sees the whole conversation: the same prompt as the items given at once.
    r2 = create(a, "Another one", conversation={"id": conv.id})
    manual = create(a, [{"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
                        {"role": "user", "content": "Tell me a joke"},
                        {"role": "assistant", "content": [{"type": "output_text", "text": r.output_text}]},
                        {"role": "user", "content": "Another one"}], store=False)
    assert r2.usage.input_tokens == manual.usage.input_tokens
    assert a.conversations.items.retrieve(items[0].id, conversation_id=conv.id).content[0].text == "Hi"
    a.conversations.items.delete(items[0].id, conversation_id=conv.id)
    with pytest.raises(openai.NotFoundError):
        a.conversations.items.retrieve(items[0].id, conversation_id=conv.id)
    page = a.conversations.items.list(conv.id, limit=2)
    assert len(page.data) == 2 and page.has_more and page.data[0].content[0].text == r2.output_text
    deleted = a.conversations.delete(conv.id)
    assert deleted.deleted and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        a.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError) as e:
        create(a, conversation=conv.id)
    assert e.value.body["param"] == "conversation"


# --- isolation and bad input ---------------------------------------------------------

def test_one_keys_ids_are_not_found_for_another(a, b):
    r = create(a)
    conv = a.conversations.create()
    for call in (lambda: b.responses.retrieve(r.id), lambda: b.responses.delete(r.id),
                 lambda: b.responses.cancel(r.id), lambda: b.responses.input_items.list(r.id),
                 lambda: b.conversations.retrieve(conv.id), lambda: b.conversations.delete(conv.id),
                 lambda: b.conversations.items.list(conv.id),
                 lambda: b.conversations.update(conv.id, metadata={"x": "y"})):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as e:
        create(b, previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        create(b, conversation=conv.id)
    assert a.responses.retrieve(r.id).output_text == r.output_text
    assert a.conversations.retrieve(conv.id).id == conv.id


@pytest.mark.parametrize("kw, status, param", [
    ({"input": [{"type": "telepathy", "content": "hi"}]}, 400, "input[0].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type"),
    ({"input": [{"role": "robot", "content": "hi"}]}, 400, "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, 400,
     "input[0].content[0].type"),
    ({"previous_response_id": "resp_" + "0" * 32}, 404, "previous_response_id"),
    ({"previous_response_id": "resp_x", "conversation": "conv_y"}, 400, "conversation"),
    ({"tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, 400, "tools[0].type"),
    ({"tools": [{"type": "custom", "name": "x"}]}, 400, "tools[0].type"),
    ({"include": ["reasoning.encrypted_content"]}, 400, "include[0]"),
    ({"prompt": {"id": "pmpt_1"}}, 400, "prompt"),
    ({"text": {"format": {"type": "json_schema", "schema": PERSON}}}, 400, "text.format.name"),
    ({"top_logprobs": 21}, 400, "top_logprobs"),
    ({"model": "no-such-model"}, 404, "model"),
    ({"background": True, "store": False}, 400, "background"),
    ({"input": [{"type": "function_call_output", "call_id": "call_nope", "output": "x"}]}, 400, "input[0].call_id"),
    ({"input": [{"type": "message", "id": "msg_1", "role": "user", "content": "a"},
                {"type": "message", "id": "msg_1", "role": "user", "content": "b"}]}, 400, "input[1].id"),
])
def test_bad_input_names_the_param(svc, kw, status, param):
    body = {"model": MODEL, "input": "hi", **kw}
    for stream in (False, True):
        resp = raw(svc, "POST", "/responses", json={**body, "stream": stream})
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["param"] == param


def test_unknown_ids_are_404(svc, a):
    for path in ("/responses/resp_nope", "/responses/resp_nope/input_items", "/conversations/conv_nope",
                 "/conversations/conv_nope/items", "/responses/" + "resp_" + "1" * 32):
        assert raw(svc, "GET", path).status_code == 404
    assert raw(svc, "POST", "/responses/resp_nope/cancel").status_code == 404
    assert raw(svc, "DELETE", "/conversations/conv_nope").status_code == 404
    # Bad input left nothing behind: the next request succeeds.
    assert create(a).status == "completed"


def test_grpc_response_service_is_typed_and_shares_the_state(svc, a):
    import grpc

    from genapi.v1 import content_pb2
    from genapi.v1 import response_service_pb2 as pb
    from genapi.v1 import response_service_pb2_grpc as pb_grpc

    auth = [("authorization", f"Bearer {KEY_A}")]
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = pb_grpc.ResponseServiceStub(ch)
        req = pb.CreateResponseRequest(
            parameters=pb.ResponseParameters(model=MODEL, temperature=0, max_output_tokens=64),
            input=[pb.Item(message=pb.MessageItem(role=content_pb2.ROLE_USER, content=[
                pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_TEXT, text="Tell me a joke")]))])
        events = list(stub.CreateResponse(req, metadata=auth, timeout=60))
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds[0] == "response" and events[0].response.status == pb.RESPONSE_STATUS_IN_PROGRESS
        assert kinds[1] == "output_item_added" and kinds[-2:] == ["output_item_done", "response"]
        final = events[-1].response
        assert final.status == pb.RESPONSE_STATUS_COMPLETED
        text = "".join(e.output_text_delta.delta for e in events if e.HasField("output_text_delta"))
        assert text == final.output[0].message.content[0].text
        got = stub.GetResponse(pb.GetResponseRequest(id=final.id), metadata=auth, timeout=10).response
        assert got == final
        with pytest.raises(grpc.RpcError) as e:
            stub.GetResponse(pb.GetResponseRequest(id=final.id), timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert a.responses.retrieve(final.id).output_text == text == create(a, "Tell me a joke").output_text
