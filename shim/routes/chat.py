"""POST /v1/chat/completions: parse -> validate -> translate -> Generate -> JSON or SSE.

The HTTP status is decided before the first byte: the `started` event (or the error
that replaces it) is awaited first, so a refused request gets the same status and body
with or without `stream`. After that a stream only ends with `data: [DONE]`, preceded
by one `data: {"error": ...}` frame when the core fails mid-way. Client disconnects
(socket closed, or a failed write) cancel the gRPC call so the core aborts generation.
"""
from __future__ import annotations

import logging
import queue
import time

import grpc
from flask import Blueprint, Response, request

from shim import sse
from shim.body import read_json_object
from shim.errors import APIError, GENERIC_MESSAGES, error_envelope, from_grpc_error, json_response
from shim.protocol.chat import validate_chat_request
from shim.request_id import current_request_id
from shim.routes.common import config, core, metadata
from shim.streaming import END, DisconnectWatch, EventPump, send_immediately
from shim.translate.chat import (
    ChatChunkBuilder,
    ChatCompletionAccumulator,
    chat_request_to_proto,
    include_usage_requested,
)

log = logging.getLogger("genapi.shim")

bp = Blueprint("chat", __name__)

POLL_S = 0.25  # how often a waiting request checks for a vanished client
MAX_EVENTS_PER_WRITE = 64  # events already queued are coalesced into one write


class ClientGone(Exception):
    """The HTTP client closed the connection while we waited for the core."""


def _map_error(err: grpc.RpcError, request_id: str | None = None) -> APIError:
    return from_grpc_error(err, not_found_param="model", not_found_code="model_not_found", request_id=request_id)


def _internal_error() -> APIError:
    return APIError(500, GENERIC_MESSAGES[500], "server_error")


def _next_item(pump: EventPump, watch: DisconnectWatch):
    """The next event, END, or raises (APIError for a failed call, ClientGone)."""
    while True:
        try:
            item = pump.get(timeout=POLL_S)
        except queue.Empty:
            if watch.gone(force=True):
                raise ClientGone() from None
            continue
        if watch.gone():
            raise ClientGone()
        if isinstance(item, grpc.RpcError):
            raise _map_error(item)
        if isinstance(item, BaseException):
            raise _internal_error()
        return item


@bp.post("/v1/chat/completions")
def create_chat_completion():
    body = validate_chat_request(read_json_object())
    cfg = config()
    request_id = current_request_id()
    environ = request.environ
    proto = chat_request_to_proto(body, request_id)

    call = core().generation.Generate(proto, metadata=metadata(), timeout=cfg.request_timeout_s)
    pump = EventPump(call)
    watch = DisconnectWatch(environ, POLL_S)
    try:
        first = _next_item(pump, watch)
        if first is END:
            log.error("core ended the stream without events (request_id=%s)", request_id)
            raise _internal_error()
    except ClientGone:
        pump.cancel()
        log.info("client disconnected before the first event (request_id=%s)", request_id)
        return json_response(error_envelope("The client closed the connection.", "invalid_request_error",
                                            None, "client_closed_request"), 499)
    except BaseException:
        pump.cancel()
        raise

    n = body.get("n") or 1
    logprobs = body.get("logprobs") is True
    if body.get("stream"):
        send_immediately(environ)
        builder = ChatChunkBuilder(model=body["model"], n=n, logprobs=logprobs,
                                   include_usage=include_usage_requested(body))
        events = _sse_events(pump, builder, first, watch, cfg.keepalive_s, request_id)
        return Response(SSEBody(events, pump), status=200, content_type=sse.CONTENT_TYPE, headers=sse.HEADERS)

    acc = ChatCompletionAccumulator(model=body["model"], n=n, logprobs=logprobs)
    item = first
    try:
        while item is not END:
            acc.add(item)
            item = _next_item(pump, watch)
    except ClientGone:
        log.info("client disconnected during generation (request_id=%s)", request_id)
        return json_response(error_envelope("The client closed the connection.", "invalid_request_error",
                                            None, "client_closed_request"), 499)
    finally:
        pump.cancel()  # no-op when the call completed
    return json_response(acc.result())


class SSEBody:
    """The streaming response body; closing it (gunicorn does, also on a failed write)
    cancels the gRPC call even when the generator never started."""

    def __init__(self, events, pump: EventPump):
        self._events = events
        self._pump = pump

    def __iter__(self):
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            self._pump.cancel()


def _sse_events(pump: EventPump, builder: ChatChunkBuilder, first, watch: DisconnectWatch, keepalive_s: float,
                request_id: str):
    poll = max(0.01, min(POLL_S, keepalive_s))
    yield sse.frames(builder.on_event(first))
    last_write = time.monotonic()
    while True:
        try:
            item = pump.get(timeout=poll)
        except queue.Empty:
            item = None
        if watch.gone(force=item is None):
            log.info("client disconnected mid-stream (request_id=%s)", request_id)
            pump.cancel()
            return
        if item is None:
            if time.monotonic() - last_write >= keepalive_s:
                yield sse.KEEPALIVE
                last_write = time.monotonic()
            continue

        out: list[bytes] = []
        for count in range(1, MAX_EVENTS_PER_WRITE + 1):
            if item is END:
                out.append(sse.frames(builder.finish()))
                out.append(sse.DONE)
                yield b"".join(out)
                return
            if isinstance(item, BaseException):
                if isinstance(item, grpc.RpcError):
                    err = _map_error(item, request_id)
                else:
                    log.error("core stream failed (request_id=%s): %r", request_id, item)
                    err = _internal_error()
                out.append(sse.frame(err.envelope()))
                out.append(sse.DONE)
                yield b"".join(out)
                return
            out.append(sse.frames(builder.on_event(item)))
            if count == MAX_EVENTS_PER_WRITE:
                break  # write now; the rest is picked up by the next get()
            try:
                item = pump.get(timeout=0)
            except queue.Empty:
                break
        data = b"".join(out)
        if data:
            yield data
            last_write = time.monotonic()
