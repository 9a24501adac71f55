"""POST /v1/batches body rules (OpenAI CreateBatchRequest). Which endpoints and windows
are served is the core's decision (it answers 400 for others)."""
from __future__ import annotations

from typing import Any

from shim.errors import APIError
from shim.protocol.common import expect_id, expect_int, expect_object, invalid_type, missing, unknown_parameter

KNOWN_FIELDS = {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
MAX_BATCHES_LIMIT = 100


def validate_create_batch(body: Any) -> dict:
    """Raises APIError(400) for the first problem; returns `body`."""
    if not isinstance(body, dict):
        raise invalid_type("body", "an object", body)
    for key in body:
        if key not in KNOWN_FIELDS:
            raise unknown_parameter(key)
    for key in ("input_file_id", "endpoint", "completion_window"):
        if body.get(key) is None:
            raise missing(key)
        expect_id(body[key], key, non_empty=True, max_length=1024)
    if body.get("metadata") is not None:
        for k, v in expect_object(body["metadata"], "metadata").items():
            if not isinstance(v, str):
                raise invalid_type(f"metadata.{k}", "a string", v)
    if body.get("output_expires_after") is not None:
        after = expect_object(body["output_expires_after"], "output_expires_after")
        if after.get("anchor") != "created_at":
            raise APIError(400, "Invalid 'output_expires_after.anchor': expected 'created_at'.",
                           "invalid_request_error", "output_expires_after.anchor", "invalid_value")
        expect_int(after.get("seconds"), "output_expires_after.seconds", minimum=3600, maximum=2_592_000)
    return body
