"""POST /v1/embeddings: which fields exist and what values they may take.

`validate_embeddings_request(body)` checks a parsed JSON object against OpenAI's
CreateEmbeddingRequest and raises `APIError` (400) naming the first bad field; it returns
the same dict, which `shim.translate.embeddings` maps to a proto.

  implemented        model, input, encoding_format ("float" | "base64"), dimensions
  accepted, ignored  user
  genapi extension   truncate_prompt_tokens (as in vLLM): cut inputs longer than this many
                     tokens (capped at the model's limit; -1 = the model's limit) instead
                     of refusing them with a 400 that names the limit
  anything else      -> 400 unknown_parameter

`input`: a non-empty string, an array of 1 to MAX_INPUTS non-empty strings, an array of
token ids (one tokenized input), or an array of 1 to MAX_INPUTS non-empty arrays of token
ids. The core checks what needs the model: token ids within the vocabulary, each input
within the model's token limit, at most 300,000 tokens per request, `dimensions` at most
the model's size.
"""
from __future__ import annotations

from typing import Any

from shim.protocol.common import (
    UINT32_MAX,
    expect_id,
    expect_int,
    expect_str,
    invalid_type,
    invalid_value,
    is_int,
    missing,
    unknown_parameter,
)

MAX_INPUTS = 2048  # OpenAI's limit per request
KNOWN_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "truncate_prompt_tokens"})
ENCODING_FORMATS = ("float", "base64")
INPUT_TYPES = "a string, an array of strings, an array of token ids or an array of arrays of token ids"


def check_fields(body: dict, known: frozenset) -> None:
    for key in body:
        if key not in known:
            raise unknown_parameter(key)


def _token_ids(value: list, param: str) -> list[int]:
    if not value:
        raise invalid_value(param, f"Invalid '{param}': an array of token ids may not be empty.")
    for t in value:
        if not is_int(t):
            raise invalid_type(param, "an array of token ids (integers)", t)
        if not 0 <= t <= UINT32_MAX:
            raise invalid_value(param, f"Invalid '{param}': token id {t} is out of range.")
    return value


def non_empty_item(value: Any, param: str, index: int) -> str:
    """Item `index` of the array `param`: a non-empty string (the message names the item)."""
    expect_str(value, param)
    if not value:
        raise invalid_value(param, f"Invalid '{param}[{index}]': expected a non-empty string.")
    return value


def check_count(items: list, param: str) -> None:
    if not items:
        raise invalid_value(param, f"Invalid '{param}': expected at least 1 item, got an empty array.")
    if len(items) > MAX_INPUTS:
        raise invalid_value(param, f"Invalid '{param}': expected at most {MAX_INPUTS} items, got {len(items)}.")


def validate_input(value: Any) -> list[str | list[int]]:
    """The inputs as a list: each a string or a list of token ids."""
    if isinstance(value, str):
        return [expect_str(value, "input", non_empty=True)]
    if not isinstance(value, list):
        raise invalid_type("input", INPUT_TYPES, value)
    check_count(value, "input")
    first = value[0]
    if is_int(first):
        return [_token_ids(value, "input")]
    if isinstance(first, str):
        return [non_empty_item(s, "input", i) for i, s in enumerate(value)]
    if isinstance(first, list):
        for item in value:
            if not isinstance(item, list):
                raise invalid_type("input", "an array of arrays of token ids", item)
        return [_token_ids(item, "input") for item in value]
    raise invalid_type("input", INPUT_TYPES, first)


def validate_truncation(body: dict) -> int | None:
    """`truncate_prompt_tokens`: None (refuse long inputs), N >= 1, or -1 (the model's limit)."""
    value = body.get("truncate_prompt_tokens")
    if value is None:
        return None
    expect_int(value, "truncate_prompt_tokens", minimum=-1, maximum=UINT32_MAX)
    if value == 0:
        raise invalid_value("truncate_prompt_tokens", "Invalid 'truncate_prompt_tokens': expected -1 (the model's "
                                                      "limit) or a number of tokens >= 1, got 0.")
    return value


def validate_embeddings_request(body: dict) -> dict:
    check_fields(body, KNOWN_FIELDS)
    if "model" not in body:
        raise missing("model")
    expect_id(body["model"], "model", non_empty=True)
    if "input" not in body:
        raise missing("input")
    validate_input(body["input"])
    fmt = body.get("encoding_format")
    if fmt is not None:
        expect_str(fmt, "encoding_format")
        if fmt not in ENCODING_FORMATS:
            raise invalid_value("encoding_format", "Invalid 'encoding_format': expected 'float' or 'base64'.")
    if body.get("dimensions") is not None:
        expect_int(body["dimensions"], "dimensions", minimum=1, maximum=UINT32_MAX)
    if body.get("user") is not None:
        expect_id(body["user"], "user")
    validate_truncation(body)
    return body
