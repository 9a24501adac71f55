"""GET /v1/models/{model}: the path parameter is an identifier like any other."""
from __future__ import annotations

from genapi.untrusted import MAX_ID_CHARS
from shim.protocol.common import check_max_length, check_text, quote


def validate_model_id(model_id: str) -> str:
    """400 string_above_max_length (param `model`) beyond MAX_ID_CHARS."""
    check_max_length(model_id, "model", MAX_ID_CHARS)
    return check_text(model_id, "model")


def model_not_found_message(model_id: str) -> str:
    return f"The model {quote(model_id, MAX_ID_CHARS)} does not exist."
