"""Response items as chat messages, and items as stored JSON. Pure functions.

Items (genapi.v1.Item) -> ChatMessages (genapi.v1.ChatMessage), in order:
- `instructions` (when not empty) -> one system message first;
- message -> a message of its role (input_text / output_text / refusal parts -> text
  parts, input_image -> image parts);
- function_call -> a tool call of an assistant message: appended to the assistant
  message just before it (calls made together, or text then calls), else a new one;
- function_call_output -> a tool message answering `call_id`;
- reasoning -> dropped (chat templates keep no earlier thinking).
"""
from __future__ import annotations

import json
import re
import uuid

from google.protobuf import json_format

from genapi.v1 import content_pb2
from genapi.v1 import response_service_pb2 as pb

ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}
TEXT_PARTS = (pb.ITEM_PART_TYPE_INPUT_TEXT, pb.ITEM_PART_TYPE_OUTPUT_TEXT, pb.ITEM_PART_TYPE_REFUSAL)


def new_item_id(kind: str) -> str:
    """A fresh id for an item of `kind` (message, function_call, ...): `msg_<hex>` etc."""
    return f"{ID_PREFIX[kind]}_{uuid.uuid4().hex}"


def with_ids(items) -> list[pb.Item]:
    """Copies of `items`, each with an id (kept when given, else a new one)."""
    out = []
    for item in items:
        copy = pb.Item()
        copy.CopyFrom(item)
        if not copy.id:
            copy.id = new_item_id(copy.WhichOneof("item") or "message")
        out.append(copy)
    return out


def _parts(message: pb.MessageItem) -> tuple[list[content_pb2.ContentPart], tuple[int, ...]]:
    """The message's chat parts, and the item content index of each."""
    parts, where = [], []
    for j, part in enumerate(message.content):
        if part.type in TEXT_PARTS:
            parts.append(content_pb2.ContentPart(text=part.text))
        elif part.type == pb.ITEM_PART_TYPE_INPUT_IMAGE:
            parts.append(content_pb2.ContentPart(image=part.image))
        else:
            continue
        where.append(j)
    return parts, tuple(where)


def items_to_messages(items, instructions: str = "",
                      origins: list | None = None) -> list[content_pb2.ChatMessage]:
    """The chat conversation that `items` (after `instructions`) stand for. `origins`, when
    given, gets one entry per message: None for the instructions' system message, else
    (index of the item in `items`, the item content index of each of its parts), so that
    an error naming `messages[i].content[j]` can name the item instead (input_param)."""
    out: list[content_pb2.ChatMessage] = []
    where: list = []
    if instructions:
        out.append(content_pb2.ChatMessage(role=content_pb2.ROLE_SYSTEM,
                                           content=[content_pb2.ContentPart(text=instructions)]))
        where.append(None)
    for k, item in enumerate(items):
        kind = item.WhichOneof("item")
        if kind == "message":
            parts, index = _parts(item.message)
            out.append(content_pb2.ChatMessage(role=item.message.role, content=parts))
            where.append((k, index))
        elif kind == "function_call":
            fc = item.function_call
            last = out[-1] if out else None
            if last is None or last.role != content_pb2.ROLE_ASSISTANT:
                last = content_pb2.ChatMessage(role=content_pb2.ROLE_ASSISTANT)
                out.append(last)
                where.append((k, ()))
            last.tool_calls.add(id=fc.call_id, name=fc.name, arguments=fc.arguments)
        elif kind == "function_call_output":
            out.append(content_pb2.ChatMessage(role=content_pb2.ROLE_TOOL, tool_call_id=item.function_call_output.call_id,
                                               content=[content_pb2.ContentPart(text=item.function_call_output.output)]))
            where.append((k, (0,)))
    if origins is not None:
        origins.extend(where)
    return out


_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](?:\.content\[(\d+)\])?")


def input_param(param: str, origins: list, n_history: int, history_param: str = "input") -> str | None:
    """A Generate param naming a message or part (`messages[i]`, `messages[i].content[j]`,
    with anything after it kept) as the Responses request names it: `input[k]...` for
    the new input (items after the `n_history` history ones), `history_param`
    (previous_response_id, conversation) for a history item; None when `param` names no
    message or `origins` (items_to_messages) does not know it."""
    m = _MESSAGE_PARAM.match(param)
    if m is None or int(m.group(1)) >= len(origins) or origins[int(m.group(1))] is None:
        return None
    k, index = origins[int(m.group(1))]
    if k < n_history:
        return history_param
    out = f"input[{k - n_history}]"
    if m.group(2) is not None:
        j = int(m.group(2))
        if j >= len(index):
            return None
        out += f".content[{index[j]}]"
    return out + param[m.end():]


def items_to_json(items) -> str:
    """Items as stored: a JSON list of genapi.v1.Item in proto JSON."""
    return json.dumps([json_format.MessageToDict(i) for i in items])


def items_from_json(text: str) -> list[pb.Item]:
    return [json_format.ParseDict(d, pb.Item()) for d in json.loads(text or "[]")]


def item_to_json(item: pb.Item) -> str:
    return json.dumps(json_format.MessageToDict(item))


def item_from_json(text: str) -> pb.Item:
    return json_format.ParseDict(json.loads(text), pb.Item())


def response_to_json(response: pb.Response) -> str:
    return json.dumps(json_format.MessageToDict(response))


def response_from_json(text: str) -> pb.Response:
    return json_format.ParseDict(json.loads(text), pb.Response())
