"""/v1/responses: create (JSON or SSE), retrieve (or replay as SSE), delete, cancel,
input_items. The core keeps the state (ResponseService); this route translates.

Create: the HTTP status is decided before the first byte, as for chat (a refused
request gets the same status and body with or without `stream`). The stream ends after
the terminal event (response.completed / incomplete / failed); a core failure mid-way
is an `error` event followed by response.failed. A client gone mid-stream cancels the
core call (the response is then not stored), except in background mode: a streamed
background response starts with response.queued and runs on without its client."""
from __future__ import annotations

from flask import Blueprint, Response, request

from genapi.v1 import response_service_pb2 as pb
from shim import sse
from shim.body import read_json_object
from shim.errors import APIError, from_grpc_error, json_response
from shim.observe import note_model
from shim.protocol.common import invalid_value
from shim.protocol.files import query_int
from shim.protocol.responses import validate_response_request
from shim.request_id import current_request_id
from shim.routes.common import config, core, metadata, unary
from shim.streaming import CoreStream, internal_error
from shim.translate.files import list_page
from shim.translate.responses import (
    ResponseEventStream,
    create_request,
    item_to_dict,
    replay_events,
    response_to_dict,
)

bp = Blueprint("responses", __name__)


def list_order(args) -> int:
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", "Invalid 'order': expected 'asc' or 'desc'.")
    return pb.LIST_ORDER_ASC if order == "asc" else pb.LIST_ORDER_DESC


@bp.post("/v1/responses")
def create_response():
    body = validate_response_request(read_json_object())
    note_model(body["model"])
    cfg = config()
    request_id = current_request_id()
    call = core().responses.CreateResponse(create_request(body, request_id), metadata=metadata(),
                                           timeout=cfg.request_timeout_s)
    stream = CoreStream(call, environ=request.environ, request_id=request_id, map_error=from_grpc_error)
    first = stream.first()
    if body.get("stream"):
        events = ResponseEventStream()

        def on_error(err: APIError) -> bytes:
            return sse.event_frames(events.on_error(err.code or "server_error", err.message, err.param))

        return stream.sse_response(first, on_event=lambda ev: sse.event_frames(events.on_event(ev)),
                                   finish=lambda: b"", keepalive_s=cfg.keepalive_s, on_error=on_error)
    last: list = []

    def keep(ev):
        if ev.HasField("response"):
            last[:] = [ev.response]

    stream.drain(first, keep)
    if not last:  # the core always ends with a snapshot; never answer without one
        raise internal_error()
    return json_response(response_to_dict(last[0]))


@bp.get("/v1/responses/<response_id>")
def get_response(response_id: str):
    r = unary(core().responses.GetResponse, pb.GetResponseRequest(id=response_id)).response
    if request.args.get("stream") not in ("true", "1"):
        return json_response(response_to_dict(r))
    after = request.args.get("starting_after")
    if after is not None and not after.lstrip("-").isdigit():
        raise invalid_value("starting_after", "Invalid 'starting_after': expected an integer.")
    events = ResponseEventStream()
    out = [e for ev in replay_events(r) for e in events.on_event(ev)]
    if after is not None:
        out = [e for e in out if e["sequence_number"] > int(after)]
    return Response(sse.event_frames(out), status=200, content_type=sse.CONTENT_TYPE, headers=sse.HEADERS)


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str):
    reply = unary(core().responses.DeleteResponse, pb.DeleteResponseRequest(id=response_id))
    return json_response({"id": reply.id, "object": "response", "deleted": True})


@bp.post("/v1/responses/<response_id>/cancel")
def cancel_response(response_id: str):
    return json_response(response_to_dict(
        unary(core().responses.CancelResponse, pb.CancelResponseRequest(id=response_id)).response))


@bp.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str):
    args = request.args
    req = pb.ListInputItemsRequest(id=response_id, page_size=query_int(args, "limit", 20, 100),
                                   page_token=args.get("after") or "", order=list_order(args))
    reply = unary(core().responses.ListInputItems, req)
    return json_response(list_page([item_to_dict(i) for i in reply.items], reply.has_more))
