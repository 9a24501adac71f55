"""OpenAI's rate-limit headers on the shim's responses.

The core enforces the per-key limits (server/limits.py) and reports the caller's state as
gRPC metadata: initial metadata of a call it accepted, trailers of one it refused. Both
carry `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` in OpenAI's formats
(integers; resets as Go durations like `1s`, `6m0s`); the shim copies them verbatim:
`remember_call` stores those of a call in `flask.g`, the after-request hook puts them on
the response; an error response gets them from `from_grpc_error` (shim/errors.py).
"""
from __future__ import annotations

from flask import Flask, g

PREFIX = "x-ratelimit-"


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


def register_ratelimit_headers(app: Flask) -> None:
    @app.after_request
    def _add(response):
        for key, value in (g.get("ratelimit_headers") or {}).items():
            response.headers.setdefault(key, value)
        return response
