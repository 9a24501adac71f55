"""POST /v1/chat/completions: parse -> validate -> translate -> Generate -> JSON or SSE.

The HTTP status is decided before the first byte: the `started` event (or the error
that replaces it) is awaited first, so a refused request gets the same status and body
with or without `stream`. After that a stream only ends with `data: [DONE]`, preceded
by one `data: {"error": ...}` frame when the core fails mid-way. Client disconnects
(socket closed, or a failed write) cancel the gRPC call so the core aborts generation
(see shim.streaming.CoreStream).
"""
from __future__ import annotations

from functools import partial

from flask import Blueprint, request

from genapi.deltas import WHOLE, coalesce
from shim import sse
from shim.body import read_json_object
from shim.errors import from_grpc_error, json_response
from shim.protocol.chat import validate_chat_request
from shim.observe import note_model, note_whole
from shim.request_id import current_request_id
from shim.routes.common import config, core, metadata
from shim.streaming import CoreStream
from shim.translate.chat import (
    ChatChunkBuilder,
    ChatCompletionAccumulator,
    chat_request_to_proto,
    include_obfuscation_requested,
    include_usage_requested,
    uses_legacy_functions,
)

bp = Blueprint("chat", __name__)

# The only lookup of Generate is the model: a bare NOT_FOUND names it.
map_error = partial(from_grpc_error, not_found_param="model", not_found_code="model_not_found")


def tokens_flow(event) -> bool:
    """After `started` events come at the engine's pace: the request thread reads them."""
    return event.WhichOneof("event") != "started"


@bp.post("/v1/chat/completions")
def create_chat_completion():
    body = validate_chat_request(read_json_object())
    note_model(body["model"])
    cfg = config()
    request_id = current_request_id()
    proto = chat_request_to_proto(body, request_id)

    streamed = bool(body.get("stream"))
    # Non-streamed: the core merges the deltas (genapi.deltas.WHOLE), and this thread reads
    # the call itself from the start (no keep-alive to send; the watchdog sees a client leave).
    md = metadata() if streamed else [*metadata(), WHOLE]
    if not streamed:
        note_whole()
    call = core().generation.Generate(proto, metadata=md, timeout=cfg.request_timeout_s)
    stream = CoreStream(call, environ=request.environ, request_id=request_id, map_error=map_error,
                        hand_off=tokens_flow if streamed else None, pump=streamed)
    first = stream.first()

    n = body.get("n") or 1
    logprobs = body.get("logprobs") is True
    legacy = uses_legacy_functions(body)
    if streamed:
        builder = ChatChunkBuilder(model=body["model"], n=n, logprobs=logprobs,
                                   include_usage=include_usage_requested(body), legacy_functions=legacy,
                                   prebuilt=True)
        frames = sse.obfuscated_frames if include_obfuscation_requested(body) else sse.frames
        return stream.sse_response(first, on_event=lambda event: frames(builder.on_event(event)),
                                   finish=lambda: frames(builder.finish()) + sse.DONE,
                                   keepalive_s=cfg.keepalive_s, merge=coalesce)

    acc = ChatCompletionAccumulator(model=body["model"], n=n, logprobs=logprobs, legacy_functions=legacy)
    stream.drain(first, acc.add)
    return json_response(acc.result())
