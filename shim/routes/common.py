"""Helpers every Blueprint uses: the config, the core client, call metadata, unary calls."""
from __future__ import annotations

import grpc
from flask import current_app, request

from shim import grpc_client, observe, ratelimit, tracing
from shim.errors import from_grpc_error
from shim.request_id import current_request_id


def config():
    return current_app.config["GENAPI"]


def core():
    """This worker's CoreClient (created lazily, after the fork)."""
    return grpc_client.get_client(config())


def metadata() -> list[tuple[str, str]]:
    return grpc_client.call_metadata(current_request_id(), request.headers.get("Authorization"),
                                     tracing.current_traceparent())


def short_timeout() -> float:
    """Deadline for quick unary calls (models, health)."""
    return min(30.0, config().request_timeout_s)


def unary(method, req, timeout: float | None = None, model_lookup: bool = False):
    """A unary (or client-streaming) core call with this request's metadata under
    `timeout` (default short_timeout()); a failure becomes the mapped APIError, and with
    `model_lookup` a bare NOT_FOUND names the model."""
    not_found = {"not_found_param": "model", "not_found_code": "model_not_found"} if model_lookup else {}
    try:
        if not hasattr(method, "with_call"):  # a client-streaming stand-in
            return method(req, metadata=metadata(), timeout=timeout or short_timeout())
        reply, call = method.with_call(req, metadata=metadata(), timeout=timeout or short_timeout())
        ratelimit.remember_call(call)  # the x-ratelimit-* state the core reported
        return reply
    except grpc.RpcError as e:
        raise from_grpc_error(e, request_id=current_request_id(), **not_found) from None


def call_core(method, proto):
    """A unary call on a model (embeddings, rerank) under the whole request deadline; its
    usage goes to the access log."""
    reply = unary(method, proto, config().request_timeout_s, model_lookup=True)
    if (rec := observe.current_record()) is not None and reply.HasField("usage"):
        rec.prompt_tokens = reply.usage.prompt_tokens
    return reply
