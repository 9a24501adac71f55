"""Pure OpenAI Responses / Conversations <-> genapi.v1 ResponseService translation (no
Flask, no channel).

Request:  `create_request(body, request_id)` maps a validated POST /v1/responses body to
          a CreateResponseRequest; `items_to_proto` maps input items.
Objects:  `response_to_dict(response)` is OpenAI's `response` object; `item_to_dict` an
          item (output or input); `conversation_to_dict` a `conversation`.
Stream:   `ResponseEventStream` turns the core's events into OpenAI's streaming events,
          each with its `type` and a `sequence_number` counting from 0 (wire-shapes.md):
            response.created, response.in_progress (or response.queued)
            per message: output_item.added, content_part.added, output_text.delta x N,
              output_text.done, content_part.done, output_item.done
            per reasoning item: the same with reasoning_text parts and events
            per function call: output_item.added, function_call_arguments.delta x N,
              function_call_arguments.done, output_item.done
            response.completed | response.incomplete | response.failed
          A core failure mid-stream is an `error` event, then response.failed.
          `replay_events(response)` are the core events that a stored response stands
          for (GET /v1/responses/{id}?stream=true replays them).
"""
from __future__ import annotations

from google.protobuf import json_format, struct_pb2

from genapi.v1 import content_pb2
from genapi.v1 import response_service_pb2 as pb
from shim.protocol.responses import conversation_id
from shim.translate.chat import (
    MIN_POSITIVE_FLOAT32,
    REASONING_EFFORTS,
    TOOL_CHOICE_MODES,
    response_format_to_proto,
    token_logprob_to_dict,
)

ROLES = {"user": content_pb2.ROLE_USER, "system": content_pb2.ROLE_SYSTEM,
         "developer": content_pb2.ROLE_DEVELOPER, "assistant": content_pb2.ROLE_ASSISTANT}
ROLE_NAMES = {v: k for k, v in ROLES.items()}
STATUS = {pb.RESPONSE_STATUS_QUEUED: "queued", pb.RESPONSE_STATUS_IN_PROGRESS: "in_progress",
          pb.RESPONSE_STATUS_COMPLETED: "completed", pb.RESPONSE_STATUS_INCOMPLETE: "incomplete",
          pb.RESPONSE_STATUS_FAILED: "failed", pb.RESPONSE_STATUS_CANCELLED: "cancelled"}
ITEM_STATUS = {pb.ITEM_STATUS_IN_PROGRESS: "in_progress", pb.ITEM_STATUS_COMPLETED: "completed",
               pb.ITEM_STATUS_INCOMPLETE: "incomplete", pb.ITEM_STATUS_UNSPECIFIED: "completed"}
PART_TYPES = {"input_text": pb.ITEM_PART_TYPE_INPUT_TEXT, "output_text": pb.ITEM_PART_TYPE_OUTPUT_TEXT,
              "refusal": pb.ITEM_PART_TYPE_REFUSAL, "input_image": pb.ITEM_PART_TYPE_INPUT_IMAGE}
DETAILS = {"low": content_pb2.IMAGE_DETAIL_LOW, "high": content_pb2.IMAGE_DETAIL_HIGH,
           "auto": content_pb2.IMAGE_DETAIL_AUTO}
DETAIL_NAMES = {v: k for k, v in DETAILS.items()}
EFFORT_NAMES = {v: k for k, v in REASONING_EFFORTS.items()}
LOGPROBS_INCLUDE = "message.output_text.logprobs"


# --- request ---------------------------------------------------------------------------

def _part_to_proto(part) -> pb.ItemPart:
    if isinstance(part, str):
        return pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_TEXT, text=part)
    ptype = part["type"]
    if ptype == "refusal":
        return pb.ItemPart(type=pb.ITEM_PART_TYPE_REFUSAL, text=part["refusal"])
    if ptype == "input_image":
        return pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_IMAGE, image=content_pb2.ImagePart(
            url=part["image_url"], detail=DETAILS.get(part.get("detail") or "auto", content_pb2.IMAGE_DETAIL_AUTO)))
    return pb.ItemPart(type=PART_TYPES[ptype], text=part["text"])


def item_to_proto(item: dict) -> pb.Item:
    """One validated input item."""
    kind = item.get("type", "message")
    out = pb.Item(id=item.get("id") or "")
    if kind == "message":
        content = item["content"]
        parts = [_part_to_proto(content)] if isinstance(content, str) else [_part_to_proto(p) for p in content]
        out.message.CopyFrom(pb.MessageItem(role=ROLES[item["role"]], content=parts))
    elif kind == "function_call":
        out.function_call.CopyFrom(pb.FunctionCallItem(call_id=item["call_id"], name=item["name"],
                                                       arguments=item["arguments"]))
    elif kind == "function_call_output":
        output = item["output"]
        if isinstance(output, list):
            output = "".join(p["text"] for p in output)
        out.function_call_output.CopyFrom(pb.FunctionCallOutputItem(call_id=item["call_id"], output=output))
    elif kind == "reasoning":
        text = "".join(p["text"] for p in item.get("content") or []) or \
            "".join(p["text"] for p in item.get("summary") or [])
        out.reasoning.CopyFrom(pb.ReasoningItem(text=text))
    return out


def items_to_proto(value) -> list[pb.Item]:
    """`input` (a string or validated items) as items; a string is one user message."""
    if value is None:
        return []
    if isinstance(value, str):
        return [pb.Item(message=pb.MessageItem(role=content_pb2.ROLE_USER, content=[
            pb.ItemPart(type=pb.ITEM_PART_TYPE_INPUT_TEXT, text=value)]))]
    return [item_to_proto(i) for i in value]


def _tool_to_proto(tool: dict) -> content_pb2.Tool:
    out = content_pb2.Tool(name=tool["name"], description=tool.get("description") or "",
                           strict=tool.get("strict") is not False)
    if tool.get("parameters") is not None:
        params = struct_pb2.Struct()
        params.update(tool["parameters"])
        out.parameters.CopyFrom(params)
    return out


def create_request(body: dict, request_id: str = "") -> pb.CreateResponseRequest:
    """A validated POST /v1/responses body -> CreateResponseRequest (unset knobs stay unset)."""
    params = pb.ResponseParameters(model=body["model"], instructions=body.get("instructions") or "",
                                   background=body.get("background") is True,
                                   metadata=body.get("metadata") or {})
    if body.get("temperature") is not None:
        params.temperature = float(body["temperature"])
    if body.get("top_p") is not None:
        params.top_p = float(body["top_p"]) or MIN_POSITIVE_FLOAT32
    if body.get("max_output_tokens") is not None:
        params.max_output_tokens = body["max_output_tokens"]
    for tool in body.get("tools") or ():
        params.tools.append(_tool_to_proto(tool))
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        params.tool_choice.mode = TOOL_CHOICE_MODES[choice]
    elif isinstance(choice, dict):
        params.tool_choice.function_name = choice["name"]
    if body.get("parallel_tool_calls") is not None:
        params.parallel_tool_calls = body["parallel_tool_calls"]
    fmt = (body.get("text") or {}).get("format")
    if fmt:
        as_chat = fmt if fmt["type"] != "json_schema" else {
            "type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}
        params.text_format.CopyFrom(response_format_to_proto(as_chat))
    if body.get("store") is not None:
        params.store = body["store"]
    if LOGPROBS_INCLUDE in (body.get("include") or ()):
        params.output_logprobs = True
    if body.get("top_logprobs") is not None:
        params.top_logprobs = body["top_logprobs"]
        if body["top_logprobs"]:
            params.output_logprobs = True
    if body.get("truncation"):
        params.truncation = pb.TRUNCATION_AUTO if body["truncation"] == "auto" else pb.TRUNCATION_DISABLED
    effort = (body.get("reasoning") or {}).get("effort")
    if effort:
        params.reasoning_effort = REASONING_EFFORTS[effort]
    req = pb.CreateResponseRequest(request_id=request_id, parameters=params, input=items_to_proto(body.get("input")),
                                   previous_response_id=body.get("previous_response_id") or "")
    if body.get("conversation") is not None:
        req.conversation_id = conversation_id(body)
    req.stream_background = bool(body.get("stream") and body.get("background"))
    return req


# --- objects ---------------------------------------------------------------------------

def _logprobs(lps) -> list[dict]:
    return [{"token": d["token"], "logprob": d["logprob"], "bytes": d["bytes"], "top_logprobs": d["top_logprobs"]}
            for d in map(token_logprob_to_dict, lps)]


def _part_to_dict(part: pb.ItemPart, logprobs: bool) -> dict:
    if part.type == pb.ITEM_PART_TYPE_OUTPUT_TEXT:
        return {"type": "output_text", "text": part.text, "annotations": [],
                "logprobs": _logprobs(part.logprobs) if logprobs else []}
    if part.type == pb.ITEM_PART_TYPE_REFUSAL:
        return {"type": "refusal", "refusal": part.text}
    if part.type == pb.ITEM_PART_TYPE_INPUT_IMAGE:
        return {"type": "input_image", "image_url": part.image.url or None, "file_id": None,
                "detail": DETAIL_NAMES.get(part.image.detail, "auto")}
    return {"type": "input_text", "text": part.text}


def item_to_dict(item: pb.Item, logprobs: bool = False) -> dict:
    """An item as OpenAI shows it (message, function_call, function_call_output, reasoning)."""
    kind = item.WhichOneof("item")
    status = ITEM_STATUS[item.status]
    if kind == "message":
        m = item.message
        return {"id": item.id, "type": "message", "status": status, "role": ROLE_NAMES.get(m.role, "user"),
                "content": [_part_to_dict(p, logprobs) for p in m.content]}
    if kind == "function_call":
        fc = item.function_call
        return {"id": item.id, "type": "function_call", "status": status, "call_id": fc.call_id, "name": fc.name,
                "arguments": fc.arguments}
    if kind == "function_call_output":
        return {"id": item.id, "type": "function_call_output", "status": status,
                "call_id": item.function_call_output.call_id, "output": item.function_call_output.output}
    return {"id": item.id, "type": "reasoning", "status": status, "summary": [],
            "content": [{"type": "reasoning_text", "text": item.reasoning.text}] if item.reasoning.text else []}


def _format_to_dict(fmt: content_pb2.ResponseFormat) -> dict:
    if fmt.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return {"type": "json_object"}
    if fmt.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return {"type": "json_schema", "name": fmt.name, "schema": json_format.MessageToDict(fmt.schema),
                "strict": fmt.strict}
    return {"type": "text"}


def _tool_choice_to_dict(params: pb.ResponseParameters):
    if not params.HasField("tool_choice"):
        return "auto"
    choice = params.tool_choice
    if choice.WhichOneof("choice") == "function_name":
        return {"type": "function", "name": choice.function_name}
    return {content_pb2.TOOL_CHOICE_MODE_NONE: "none",
            content_pb2.TOOL_CHOICE_MODE_REQUIRED: "required"}.get(choice.mode, "auto")


def usage_to_dict(u: pb.ResponseUsage) -> dict:
    return {"input_tokens": u.input_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": u.output_tokens, "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total_tokens}


# OpenAI's ResponseErrorCode values this server can mean; every other core reason is
# folded into one of them (the message keeps the details).
SERVER_ERROR_CODES = ("server_error", "rate_limit_exceeded", "invalid_prompt")
RATE_REASONS = ("rate_limit_exceeded", "resource_exhausted", "engine_overloaded", "queue_full", "too_many_requests")
SERVER_REASONS = ("", "engine_error", "internal", "internal_error", "server_shutting_down", "engine_unavailable",
                  "unavailable", "deadline_exceeded", "cancelled", "unknown", "store_unavailable",
                  "limits_unavailable", "models_loading", "service_unavailable", "request_timeout")


def response_error_code(reason: str) -> str:
    """A core error reason -> OpenAI's ResponseErrorCode: server_error for failures of
    the server, rate_limit_exceeded for capacity refusals, invalid_prompt for the input."""
    if reason in SERVER_ERROR_CODES:
        return reason
    if reason in RATE_REASONS:
        return "rate_limit_exceeded"
    return "server_error" if reason in SERVER_REASONS else "invalid_prompt"


def response_to_dict(r: pb.Response, output: bool = True) -> dict:
    """OpenAI's `response` object; `output=False` leaves the output list empty (the
    snapshot of response.created). `usage` is there once the response finished."""
    p = r.parameters
    status = STATUS.get(r.status, "in_progress")
    finished = status not in ("queued", "in_progress")
    return {
        "id": r.id, "object": "response", "created_at": r.created_at, "status": status,
        "background": p.background, "completed_at": r.completed_at if r.HasField("completed_at") else None,
        "error": {"code": response_error_code(r.error.code), "message": r.error.message}
        if r.status == pb.RESPONSE_STATUS_FAILED else None,
        "incomplete_details": {"reason": r.incomplete_reason} if r.incomplete_reason else None,
        "instructions": p.instructions or None,
        "max_output_tokens": p.max_output_tokens if p.HasField("max_output_tokens") else None,
        "max_tool_calls": None, "model": p.model,
        "output": [item_to_dict(i, p.output_logprobs) for i in r.output] if output else [],
        "parallel_tool_calls": p.parallel_tool_calls if p.HasField("parallel_tool_calls") else True,
        "previous_response_id": r.previous_response_id or None,
        "conversation": {"id": r.conversation_id} if r.conversation_id else None,
        "reasoning": {"effort": EFFORT_NAMES.get(p.reasoning_effort), "summary": None},
        "service_tier": "default", "store": p.store if p.HasField("store") else True,
        "temperature": round(p.temperature, 6) if p.HasField("temperature") else 1.0,
        "text": {"format": _format_to_dict(p.text_format), "verbosity": "medium"},
        "tool_choice": _tool_choice_to_dict(p),
        "tools": [{"type": "function", "name": t.name, "description": t.description or None,
                   "parameters": json_format.MessageToDict(t.parameters) if t.HasField("parameters") else None,
                   "strict": t.strict} for t in p.tools],
        "top_logprobs": p.top_logprobs if p.HasField("top_logprobs") else 0,
        "top_p": round(p.top_p, 6) if p.HasField("top_p") else 1.0,
        "truncation": "auto" if p.truncation == pb.TRUNCATION_AUTO else "disabled",
        "metadata": dict(p.metadata),
    } | ({"usage": usage_to_dict(r.usage)} if finished and r.HasField("usage") else {})


def conversation_to_dict(c: pb.Conversation) -> dict:
    return {"id": c.id, "object": "conversation", "created_at": c.created_at, "metadata": dict(c.metadata)}


# --- stream ----------------------------------------------------------------------------

TERMINAL_EVENTS = {"completed": "response.completed", "incomplete": "response.incomplete",
                   "failed": "response.failed", "cancelled": "response.failed"}


class ResponseEventStream:
    """Core events (CreateResponseResponse) -> OpenAI streaming events (dicts with `type`
    and `sequence_number`). `on_event(ev)` returns the events one core event makes;
    `on_error(err)` the end of a failed stream (an `error` event, then response.failed)."""

    def __init__(self):
        self.seq = 0
        self.response: pb.Response | None = None
        self.items: dict[int, pb.Item] = {}
        self.logprobs = False

    def _ev(self, type_: str, **fields) -> dict:
        out = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return out

    def on_event(self, ev: pb.CreateResponseResponse) -> list[dict]:
        kind = ev.WhichOneof("event")
        if kind == "response":
            return self._snapshot(ev.response)
        if kind == "output_item_added":
            a = ev.output_item_added
            self.items[a.output_index] = a.item
            item = item_to_dict(a.item)
            k = a.item.WhichOneof("item")
            out = [self._ev("response.output_item.added", output_index=a.output_index,
                            item={**item, "content": []} if k in ("message", "reasoning") else item)]
            if k == "message":
                out.append(self._ev("response.content_part.added", item_id=a.item.id, output_index=a.output_index,
                                    content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                           "logprobs": []}))
            elif k == "reasoning":
                out.append(self._ev("response.content_part.added", item_id=a.item.id, output_index=a.output_index,
                                    content_index=0, part={"type": "reasoning_text", "text": ""}))
            return out
        if kind == "output_text_delta":
            d = ev.output_text_delta
            return [self._ev("response.output_text.delta", item_id=self.items[d.output_index].id,
                             output_index=d.output_index, content_index=d.content_index, delta=d.delta,
                             logprobs=_logprobs(d.logprobs) if self.logprobs else [])]
        if kind == "reasoning_text_delta":
            d = ev.reasoning_text_delta
            return [self._ev("response.reasoning_text.delta", item_id=self.items[d.output_index].id,
                             output_index=d.output_index, content_index=0, delta=d.delta)]
        if kind == "function_call_arguments_delta":
            d = ev.function_call_arguments_delta
            return [self._ev("response.function_call_arguments.delta", item_id=self.items[d.output_index].id,
                             output_index=d.output_index, delta=d.delta)]
        if kind == "output_item_done":
            return self._item_done(ev.output_item_done)
        return []

    def _snapshot(self, r: pb.Response) -> list[dict]:
        first = self.response is None
        self.response = r
        self.logprobs = r.parameters.output_logprobs
        status = STATUS.get(r.status, "in_progress")
        if first:
            out = [self._ev("response.created", response=response_to_dict(r, output=False))]
            if status in ("queued", "in_progress"):
                out.append(self._ev(f"response.{status}", response=response_to_dict(r, output=False)))
                return out
            return out + [self._ev(TERMINAL_EVENTS[status], response=response_to_dict(r))]
        if status in TERMINAL_EVENTS:
            return [self._ev(TERMINAL_EVENTS[status], response=response_to_dict(r))]
        return [self._ev(f"response.{status}", response=response_to_dict(r, output=False))]

    def _item_done(self, done: pb.OutputItemDone) -> list[dict]:
        item, i = done.item, done.output_index
        self.items[i] = item
        whole = item_to_dict(item, self.logprobs)
        k = item.WhichOneof("item")
        out = []
        if k == "message":
            part = whole["content"][0]
            out.append(self._ev("response.output_text.done", item_id=item.id, output_index=i, content_index=0,
                                text=part["text"], logprobs=part["logprobs"]))
            out.append(self._ev("response.content_part.done", item_id=item.id, output_index=i, content_index=0,
                                part=part))
        elif k == "reasoning":
            part = {"type": "reasoning_text", "text": item.reasoning.text}
            out.append(self._ev("response.reasoning_text.done", item_id=item.id, output_index=i, content_index=0,
                                text=item.reasoning.text))
            out.append(self._ev("response.content_part.done", item_id=item.id, output_index=i, content_index=0,
                                part=part))
            whole["content"] = [part]
        elif k == "function_call":
            fc = item.function_call
            out.append(self._ev("response.function_call_arguments.done", item_id=item.id, output_index=i,
                                name=fc.name, arguments=fc.arguments))
        out.append(self._ev("response.output_item.done", output_index=i, item=whole))
        return out

    def on_error(self, code: str, message: str, param: str | None) -> list[dict]:
        """The end of a stream whose core call failed."""
        out = [self._ev("error", code=code, message=message, param=param)]
        if self.response is not None:
            failed = pb.Response()
            failed.CopyFrom(self.response)
            failed.status = pb.RESPONSE_STATUS_FAILED
            failed.error.code, failed.error.message = code or "server_error", message
            out.append(self._ev("response.failed", response=response_to_dict(failed)))
        return out


def replay_events(r: pb.Response) -> list[pb.CreateResponseResponse]:
    """The core events that the stored response `r` stands for: an IN_PROGRESS snapshot,
    each output item added / one delta with its whole text or arguments / done, then `r`."""
    start = pb.Response()
    start.CopyFrom(r)
    del start.output[:]
    start.status = pb.RESPONSE_STATUS_IN_PROGRESS
    E = pb.CreateResponseResponse
    out = [E(response=start)]
    for i, item in enumerate(r.output):
        k = item.WhichOneof("item")
        added = pb.Item(id=item.id, status=pb.ITEM_STATUS_IN_PROGRESS)
        if k == "message":
            added.message.role = item.message.role
            added.message.content.add(type=pb.ITEM_PART_TYPE_OUTPUT_TEXT)
        elif k == "function_call":
            added.function_call.call_id, added.function_call.name = item.function_call.call_id, item.function_call.name
        else:
            getattr(added, k).SetInParent()
        out.append(E(output_item_added=pb.OutputItemAdded(output_index=i, item=added)))
        if k == "message" and item.message.content:
            part = item.message.content[0]
            out.append(E(output_text_delta=pb.OutputTextDelta(output_index=i, delta=part.text,
                                                              logprobs=part.logprobs)))
        elif k == "reasoning" and item.reasoning.text:
            out.append(E(reasoning_text_delta=pb.ReasoningTextDelta(output_index=i, delta=item.reasoning.text)))
        elif k == "function_call" and item.function_call.arguments:
            out.append(E(function_call_arguments_delta=pb.FunctionCallArgumentsDelta(
                output_index=i, delta=item.function_call.arguments)))
        out.append(E(output_item_done=pb.OutputItemDone(output_index=i, item=item)))
    out.append(E(response=r))
    return out
