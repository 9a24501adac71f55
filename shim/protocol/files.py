"""/v1/files wire rules: purposes, list parameters, file ids in paths."""
from __future__ import annotations

from shim.errors import APIError
from shim.protocol.common import invalid_value

UPLOAD_PURPOSES = ("batch", "user_data", "assistants", "vision")
LIST_PURPOSES = UPLOAD_PURPOSES + ("batch_output",)
MAX_FILES_LIMIT = 10_000
MAX_FILENAME_CHARS = 255


def validate_purpose(value: str | None, allowed=UPLOAD_PURPOSES) -> str:
    if not value:
        raise APIError(400, "Missing required parameter: 'purpose'.", "invalid_request_error", "purpose",
                       "missing_required_parameter")
    if value not in allowed:
        raise invalid_value("purpose", f"Invalid 'purpose': expected one of {', '.join(allowed)}.")
    return value


def validate_filename(name: str | None) -> str:
    if not name or len(name) > MAX_FILENAME_CHARS:
        raise invalid_value("file", f"The uploaded file needs a name of 1 to {MAX_FILENAME_CHARS} characters.")
    return name


def query_int(args, name: str, default: int, maximum: int) -> int:
    """An integer query parameter in 1..maximum."""
    raw = args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise invalid_value(name, f"Invalid '{name}': expected an integer from 1 to {maximum}.")
    return int(raw)


def query_order(args) -> str:
    order = args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_value("order", "Invalid 'order': expected 'asc' or 'desc'.")
    return order
