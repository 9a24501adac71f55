"""OpenAI's rate-limit headers on the shim's responses.

The core enforces the per-key limits (server/limits.py) and reports the caller's state as
gRPC metadata: initial metadata of a call it accepted, trailers of one it refused. Both
carry `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` in OpenAI's formats
(integers; resets as Go durations like `1s`, `6m0s`); the shim copies them verbatim:
`remember_call` stores those of a call in `flask.g`, the after-request hook puts them on
the response; an error response gets them from `from_grpc_error` (shim/errors.py).

Every other response of a key with limits (models, files, batches, a 404, the shim's own
400s) gets the state from one AdminService.GetRateLimits call, made by the same hook: so
each response carries them, as OpenAI's do. Keys without limits cost no call.
"""
from __future__ import annotations

import grpc
from flask import Flask, current_app, g

PREFIX = "x-ratelimit-"
LOOKUP_TIMEOUT_S = 2.0


def headers_from_metadata(metadata) -> dict[str, str]:
    """The x-ratelimit-* entries of gRPC metadata (pairs or None) as HTTP headers."""
    out: dict[str, str] = {}
    for item in metadata or ():
        try:
            key, value = item[0], item[1]
        except (TypeError, IndexError):
            continue
        if isinstance(key, str) and key.startswith(PREFIX) and isinstance(value, str) and value.isascii():
            out[key] = value
    return out


def call_headers(call, which: str = "initial_metadata") -> dict[str, str]:
    """x-ratelimit-* of `call`'s initial metadata (or trailers); {} for anything that is not
    a finished or started grpc Call (never raises)."""
    try:
        return headers_from_metadata(getattr(call, which)())
    except Exception:
        return {}


def remember_call(call) -> None:
    """Keeps `call`'s rate-limit headers for this request's response."""
    if headers := call_headers(call):
        try:
            g.ratelimit_headers = headers
        except RuntimeError:  # outside a request context
            pass


def has_limits(principal: str) -> bool:
    """Whether `principal`'s key (or the default) sets an rpm or tpm limit."""
    cfg = current_app.config["GENAPI"]
    return any(current_app.extensions["genapi_keys"].limits_of(principal, cfg.default_rpm, cfg.default_tpm))


def looked_up_headers() -> dict[str, str]:
    """The caller's x-ratelimit-* from the core (GetRateLimits, charging nothing); {} when
    the core does not answer in time (the response goes out without them)."""
    from genapi.v1 import admin_service_pb2
    from shim import grpc_client
    from shim.routes.common import core, metadata

    if grpc_client.is_shut_down():
        return {}
    try:
        _, call = core().admin.GetRateLimits.with_call(admin_service_pb2.GetRateLimitsRequest(),
                                                      metadata=metadata(), timeout=LOOKUP_TIMEOUT_S)
    except grpc.RpcError:
        return {}
    return call_headers(call)


def register_ratelimit_headers(app: Flask) -> None:
    @app.after_request
    def _add(response):
        headers = g.get("ratelimit_headers")
        principal = g.get("principal")
        if (headers is None and principal is not None and response.status_code < 500
                and not any(k.lower().startswith(PREFIX) for k in response.headers.keys()) and has_limits(principal)):
            headers = looked_up_headers()
        for key, value in (headers or {}).items():
            response.headers.setdefault(key, value)
        return response
