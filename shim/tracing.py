"""W3C trace context on the shim: each HTTP request's `traceparent` (or a new trace when it
has none or an invalid one) is continued by a span id of the shim's own and sent to the
core as gRPC metadata `traceparent`; the trace id is in the access line and in every
`genapi.*` log line of the request (genapi/logs.py), and in the core's (server/tracing.py).
"""
from __future__ import annotations

import secrets

from flask import Flask, g, request

from genapi.traceparent import parse_traceparent

HEADER = "traceparent"


def continue_trace(header: str | None) -> tuple[str, str]:
    """(trace_id, traceparent to send on): the caller's trace with a new span id of ours, or
    a new sampled trace."""
    parsed = parse_traceparent(header)
    trace_id, flags = (parsed[0], parsed[2]) if parsed else (secrets.token_hex(16), "01")
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def current_traceparent() -> str | None:
    try:
        return g.get("traceparent")
    except RuntimeError:
        return None


def log_context() -> dict:
    """This request's ids for genapi.logs.ContextFilter ({} outside a request)."""
    try:
        return {"request_id": g.get("request_id", ""), "trace_id": g.get("trace_id", "")}
    except RuntimeError:
        return {}


def register_tracing(app: Flask) -> None:
    @app.before_request
    def _trace():
        g.trace_id, g.traceparent = continue_trace(request.headers.get(HEADER))
