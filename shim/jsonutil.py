"""Strict JSON in, always-valid UTF-8 JSON out.

`loads_body` is the one parser for request bodies: UTF-8 only, no NaN/Infinity, no
overflowing floats; pathological nesting is a clean parse error, not a 500. `dumps`
never produces invalid UTF-8: text that cannot be encoded (lone surrogates) is written
with \\u escapes instead.
"""
from __future__ import annotations

import json
import math
from typing import Any


class BodyParseError(ValueError):
    """The bytes are not one strict JSON document (message is safe to show)."""


def _reject_constant(name: str) -> Any:
    raise BodyParseError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyParseError(f"number {text[:32]} is out of range")
    return value


def loads_body(raw: bytes) -> Any:
    """Parses a request body; raises BodyParseError with a short, input-free reason."""
    if not raw or not raw.strip():
        raise BodyParseError("the body is empty")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BodyParseError("the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except BodyParseError:
        raise
    except json.JSONDecodeError as e:
        raise BodyParseError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise BodyParseError("the JSON is nested too deeply") from None
    except ValueError:  # e.g. integers longer than Python's digit limit
        raise BodyParseError("the body contains a value that cannot be parsed") from None


class RawJSON(str):
    """JSON text already encoded exactly as `dumps` would encode its object (a fast path
    that builds a document from pre-encoded parts); `dumps` passes it through."""


def dumps(obj: Any) -> str:
    """Compact JSON whose UTF-8 encoding always succeeds."""
    if isinstance(obj, RawJSON):
        return str.__str__(obj)
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogate somewhere: fall back to \\u escapes
        text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text


def dumps_bytes(obj: Any) -> bytes:
    return dumps(obj).encode("utf-8")
