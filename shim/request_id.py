"""Request ids: taken from the client's `x-request-id` when sane, else generated.

The id is echoed on every response (errors included), sent to the core as gRPC
metadata `x-request-id` and in `GenerateRequest.request_id`.
"""
from __future__ import annotations

import re
import uuid

from flask import Flask, g, request

HEADER = "x-request-id"
_SANE = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def resolve_request_id(client_value: str | None) -> str:
    """The client's id if it is 1-128 chars of [A-Za-z0-9._:-], else `req_<uuid4 hex>`."""
    if client_value and _SANE.fullmatch(client_value):
        return client_value
    return "req_" + uuid.uuid4().hex


def current_request_id() -> str:
    rid = g.get("request_id")
    if rid is None:
        rid = g.request_id = resolve_request_id(request.headers.get(HEADER))
    return rid


def register_request_id(app: Flask) -> None:
    """Must be registered before any other before_request hook (auth uses it)."""

    @app.before_request
    def _assign_request_id():
        current_request_id()

    @app.after_request
    def _echo_request_id(resp):
        resp.headers[HEADER] = current_request_id()
        return resp
