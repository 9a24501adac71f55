"""The Responses pieces without servers: items -> chat messages, generation events ->
output items (OutputBuilder), core events -> OpenAI streaming events with sequence
numbers (ResponseEventStream) and the stored-response replay, request validation, and
the response / conversation tables of the store (migration 2 on a version-1 database)."""
from __future__ import annotations

import sqlite3

import pytest

from genapi.v1 import common_pb2, content_pb2
from genapi.v1 import generation_service_pb2 as gen_pb
from genapi.v1 import response_service_pb2 as pb
from server.responses.items import input_param, items_from_json, items_to_json, items_to_messages, with_ids
from server.responses.output import OutputBuilder
from server.store import ConversationItem, ConversationRecord, ResponseRecord, SqliteStore
from server.store.sqlite import MIGRATIONS
from shim.errors import APIError
from shim.protocol.responses import validate_response_request
from shim.translate.responses import ResponseEventStream, create_request, replay_events, response_to_dict


def user(text: str) -> pb.Item:
    return pb.Item(message=pb.MessageItem(role=content_pb2.ROLE_USER, content=[
        pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_TEXT, text=text)]))


def test_items_become_the_chat_conversation():
    items = [user("weather?"),
             pb.Item(reasoning=pb.ReasoningItem(text="thinking")),
             pb.Item(function_call=pb.FunctionCallItem(call_id="c1", name="w", arguments="{}")),
             pb.Item(function_call=pb.FunctionCallItem(call_id="c2", name="t", arguments="{}")),
             pb.Item(function_call_output=pb.FunctionCallOutputItem(call_id="c1", output="sunny")),
             pb.Item(function_call_output=pb.FunctionCallOutputItem(call_id="c2", output="noon"))]
    msgs = items_to_messages(items, "Be brief.")
    assert [m.role for m in msgs] == [content_pb2.ROLE_SYSTEM, content_pb2.ROLE_USER, content_pb2.ROLE_ASSISTANT,
                                      content_pb2.ROLE_TOOL, content_pb2.ROLE_TOOL]
    assert msgs[0].content[0].text == "Be brief." and [c.id for c in msgs[2].tool_calls] == ["c1", "c2"]
    assert (msgs[3].tool_call_id, msgs[3].content[0].text) == ("c1", "sunny")
    assert items_to_messages([user("x")], "")[0].role == content_pb2.ROLE_USER


def test_a_message_part_param_names_the_responses_input_item_and_part():
    image = pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_IMAGE, image=content_pb2.ImagePart(url="https://x/a.png"))
    history = [user("earlier")]
    items = history + [
        pb.Item(function_call=pb.FunctionCallItem(call_id="c1", name="w", arguments="{}")),
        pb.Item(function_call_output=pb.FunctionCallOutputItem(call_id="c1", output="sunny")),
        pb.Item(message=pb.MessageItem(role=content_pb2.ROLE_USER, content=[
            pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_TEXT, text="and"), image]))]
    origins: list = []
    msgs = items_to_messages(items, "Be brief.", origins)
    assert len(origins) == len(msgs) == 5 and origins[0] is None
    assert msgs[4].content[1].image.url == "https://x/a.png"
    # messages[4] is the input's third item (after one history item and the instructions)
    assert input_param("messages[4].content[1]", origins, len(history)) == "input[2].content[1]"
    assert input_param("messages[4].content[1].url", origins, 1) == "input[2].content[1].url"
    assert input_param("messages[3]", origins, 1) == "input[1]"
    assert input_param("messages[1].content[0]", origins, 1, "previous_response_id") == "previous_response_id"
    assert input_param("messages[0].content[0]", origins, 1) is None  # the instructions
    assert input_param("messages[9].content[0]", origins, 1) is None
    assert input_param("messages[4].content[7]", origins, 1) is None
    assert input_param("messages", origins, 1) is None


def test_items_get_ids_and_round_trip_as_json():
    items = with_ids([user("a"), pb.Item(id="msg_keep", message=user("b").message)])
    assert items[0].id.startswith("msg_") and items[1].id == "msg_keep"
    assert items_from_json(items_to_json(items)) == items


def gen(kind=None, usage=(5, 0), **fields) -> gen_pb.GenerateResponse:
    ev = gen_pb.GenerateResponse(usage=common_pb2.Usage(prompt_tokens=usage[0], completion_tokens=usage[1],
                                                        total_tokens=sum(usage)))
    if kind:
        getattr(ev, kind).CopyFrom(fields.pop("msg"))
    return ev


def test_output_builder_opens_and_closes_items():
    r = pb.Response(id="resp_1", status=pb.RESPONSE_STATUS_IN_PROGRESS)
    b = OutputBuilder(r)
    out = []
    for ev in (gen("reasoning", msg=gen_pb.ReasoningDelta(text="hm"), usage=(5, 1)),
               gen("text", msg=gen_pb.TextDelta(text="Hi"), usage=(5, 2)),
               gen("text", msg=gen_pb.TextDelta(text="!"), usage=(5, 3)),
               gen("tool_call", msg=gen_pb.ToolCallDelta(index=0, id="call_9", name="w"), usage=(5, 4)),
               gen("tool_call", msg=gen_pb.ToolCallDelta(index=0, arguments='{"a":1}'), usage=(5, 5)),
               gen("finished", msg=gen_pb.Finished(reason=content_pb2.FINISH_REASON_TOOL_CALLS), usage=(5, 5))):
        out += [e.WhichOneof("event") for e in b.on_event(ev)]
    assert out == ["output_item_added", "reasoning_text_delta", "output_item_done", "output_item_added",
                   "output_text_delta", "output_text_delta", "output_item_done", "output_item_added",
                   "function_call_arguments_delta", "output_item_done"]
    assert [i.WhichOneof("item") for i in r.output] == ["reasoning", "message", "function_call"]
    assert r.output[1].message.content[0].text == "Hi!" and r.output[2].function_call.call_id == "call_9"
    assert r.output[2].function_call.arguments == '{"a":1}' and r.status == pb.RESPONSE_STATUS_COMPLETED
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 5, 10)


def test_output_builder_length_is_incomplete():
    r = pb.Response(id="resp_1")
    b = OutputBuilder(r)
    b.on_event(gen("text", msg=gen_pb.TextDelta(text="Hi")))
    b.on_event(gen("finished", msg=gen_pb.Finished(reason=content_pb2.FINISH_REASON_LENGTH)))
    assert r.status == pb.RESPONSE_STATUS_INCOMPLETE and r.incomplete_reason == "max_output_tokens"
    assert r.output[0].status == pb.ITEM_STATUS_INCOMPLETE


def stored_response() -> pb.Response:
    r = pb.Response(id="resp_1", created_at=1, status=pb.RESPONSE_STATUS_COMPLETED,
                    parameters=pb.ResponseParameters(model="m"))
    r.output.add(id="msg_1", status=pb.ITEM_STATUS_COMPLETED).message.CopyFrom(pb.MessageItem(
        role=content_pb2.ROLE_ASSISTANT, content=[pb.ItemPart(type=pb.ITEM_PART_TYPE_OUTPUT_TEXT, text="Hi!")]))
    r.output.add(id="fc_1", status=pb.ITEM_STATUS_COMPLETED).function_call.CopyFrom(
        pb.FunctionCallItem(call_id="call_1", name="w", arguments="{}"))
    return r


def test_stream_events_follow_the_wire_order_with_sequence_numbers():
    s = ResponseEventStream()
    events = [e for ev in replay_events(stored_response()) for e in s.on_event(ev)]
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"
    assert events[2]["item"]["content"] == [] and events[4]["item_id"] == "msg_1"
    assert events[10] == {"type": "response.function_call_arguments.done", "sequence_number": 10,
                          "item_id": "fc_1", "output_index": 1, "name": "w", "arguments": "{}"}
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hi!"
    tail = s.on_error("engine_error", "boom", None)
    assert [e["type"] for e in tail] == ["error", "response.failed"]
    assert tail[0]["code"] == "engine_error"
    assert tail[1]["response"]["error"] == {"code": "server_error", "message": "boom"}


def test_response_object_defaults():
    d = response_to_dict(stored_response())
    assert d["object"] == "response" and d["store"] is True and d["temperature"] == 1.0
    assert d["tool_choice"] == "auto" and d["text"]["format"] == {"type": "text"} and d["error"] is None
    assert d["output"][1] == {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1",
                              "name": "w", "arguments": "{}"}


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "m"}, "input"),
    ({"model": "m", "input": "x", "frobnicate": 1}, "frobnicate"),
    ({"model": "m", "input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"model": "m", "input": "x", "tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tool_choice": "required"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"model": "m", "input": "x", "truncation": "middle"}, "truncation"),
])
def test_validation_names_the_param(body, param):
    with pytest.raises(APIError) as e:
        validate_response_request(body)
    assert e.value.status == 400 and e.value.param == param


def test_create_request_maps_the_knobs():
    body = validate_response_request({
        "model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 9, "temperature": 0,
        "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "w"}, "store": False, "conversation": {"id": "conv_1"},
        "include": ["message.output_text.logprobs"], "truncation": "auto", "reasoning": {"effort": "none"},
        "text": {"format": {"type": "json_schema", "name": "p", "schema": {"type": "object"}}}})
    req = create_request(body, "rid")
    p = req.parameters
    assert (p.model, p.instructions, p.max_output_tokens, p.temperature) == ("m", "be brief", 9, 0.0)
    assert p.HasField("temperature") and not p.HasField("top_p") and p.store is False and p.output_logprobs
    assert p.tool_choice.function_name == "w" and p.tools[0].name == "w" and p.truncation == pb.TRUNCATION_AUTO
    assert p.text_format.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA and p.text_format.name == "p"
    assert req.conversation_id == "conv_1" and req.input[0].message.content[0].text == "hi"


def test_store_migrates_a_version_1_database_and_isolates_owners(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for statement in filter(str.strip, MIGRATIONS[0].split(";")):
        db.execute(statement)
    db.execute("INSERT INTO schema_version VALUES (1)")
    db.commit()
    db.close()
    store = SqliteStore(path)
    try:
        store.put_response(ResponseRecord(id="resp_1", owner="a", created_at=1, status="queued", data="{}",
                                          background=True))
        assert store.get_response("a", "resp_1").background and store.get_response("b", "resp_1") is None
        assert store.claimable_responses("node1", now=10) == ["resp_1"]
        assert store.claim_response("resp_1", "node1", 30, now=10)
        assert store.claimable_responses("node2", now=20) == [] and not store.claim_response("resp_1", "node2", 30, 20)
        assert store.claimable_responses("node1", now=20) == ["resp_1"]  # its own, after a restart
        assert store.claim_response("resp_1", "node2", 30, now=41)  # node1's lease expired
        assert store.set_response_status("resp_1", ("queued",), "cancelled")
        assert not store.set_response_status("resp_1", ("queued", "in_progress"), "in_progress")
        assert store.claimable_responses("node2", now=50) == [] and not store.claim_response("resp_1", "node2", 30, 50)
        assert not store.delete_response("b", "resp_1") and store.delete_response("a", "resp_1")
        assert store.get_response("a", "resp_1") is None
        store.put_conversation(ConversationRecord("conv_1", "a", 1, {"k": "v"}))
        store.add_conversation_items("conv_1", [ConversationItem("conv_1", f"msg_{i}", "{}") for i in range(3)])
        assert store.get_conversation("b", "conv_1") is None
        assert store.delete_conversation_item("conv_1", "msg_1")
        assert [i.item_id for i in store.conversation_items("conv_1")] == ["msg_0", "msg_2"]
        assert store.delete_conversation("a", "conv_1") and store.get_conversation("a", "conv_1") is None
    finally:
        store.close()


# --- shapes against OpenAI's OpenAPI spec (skipped without it; see test_shim_schema) ---

from .test_shim_schema import check, schemas  # noqa: E402,F401  (the fixture is used by name)


def full_stream() -> list[dict]:
    r = stored_response()
    r.output.insert(0, pb.Item(id="rs_1", status=pb.ITEM_STATUS_COMPLETED, reasoning=pb.ReasoningItem(text="hm")))
    r.usage.CopyFrom(pb.ResponseUsage(input_tokens=3, output_tokens=4, total_tokens=7))
    s = ResponseEventStream()
    return [e for ev in replay_events(r) for e in s.on_event(ev)] + s.on_error("engine_error", "boom", None)


def test_response_objects_and_events_match_spec(schemas):
    r = stored_response()
    r.usage.CopyFrom(pb.ResponseUsage(input_tokens=3, output_tokens=4, total_tokens=7))
    assert check(schemas, schemas["Response"], response_to_dict(r)) == []
    events = full_stream()
    assert {"response.reasoning_text.delta", "error", "response.failed"} <= {e["type"] for e in events}
    branches = {}
    for ref in schemas["ResponseStreamEvent"]["anyOf"]:
        name = ref["$ref"].split("/")[-1]
        branches[schemas[name]["properties"]["type"]["enum"][0]] = name
    for event in events:
        assert check(schemas, schemas[branches[event["type"]]], event) == [], event
    page = {"object": "list", "data": [e["item"] for e in events if e["type"] == "response.output_item.done"],
            "first_id": "rs_1", "last_id": "fc_1", "has_more": False}
    assert check(schemas, schemas["ResponseItemList"], page) == []


def test_input_items_and_conversations_match_spec(schemas):
    from shim.translate.responses import conversation_to_dict, item_to_dict

    items = with_ids([user("hi"), pb.Item(function_call_output=pb.FunctionCallOutputItem(call_id="c", output="o")),
                      pb.Item(function_call=pb.FunctionCallItem(call_id="c", name="f", arguments="{}"))])
    page = {"object": "list", "data": [item_to_dict(i) for i in items], "first_id": items[0].id,
            "last_id": items[-1].id, "has_more": False}
    assert check(schemas, schemas["ResponseItemList"], page) == []
    conv = conversation_to_dict(pb.Conversation(id="conv_1", created_at=1, metadata={"k": "v"}))
    assert check(schemas, schemas["ConversationResource"], conv) == []
    assert check(schemas, schemas["ConversationItemList"], page) == []
    assert check(schemas, schemas["DeletedConversationResource"],
                 {"id": "conv_1", "object": "conversation.deleted", "deleted": True}) == []


@pytest.mark.parametrize("reason", ["store_unavailable", "limits_unavailable", "models_loading", "service_unavailable",
                                    "engine_unavailable", "server_shutting_down", "internal_error"])
def test_a_failure_of_the_server_is_never_blamed_on_the_prompt(reason):
    """A response that failed because a store, engine or core was down is `server_error`
    (OpenAI's ResponseErrorCode), not `invalid_prompt`."""
    from shim.translate.responses import response_error_code

    assert response_error_code(reason) == "server_error"
    assert response_error_code("context_length_exceeded") == "invalid_prompt"
