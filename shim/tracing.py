"""W3C trace context on the shim: each HTTP request's `traceparent` (or a new trace when it
has none or an invalid one) is continued by a span id of the shim's own and sent to the
core as gRPC metadata `traceparent`; the trace id is in the access line and in every
`genapi.*` log line of the request (genapi/logs.py), and in the core's (server/tracing.py).
"""
from __future__ import annotations

import re
import secrets

from flask import Flask, g, request

HEADER = "traceparent"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace_id, parent_id, flags) of a valid traceparent, else None (W3C Trace Context:
    lowercase hex, version ff and all-zero ids invalid)."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id, flags


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
