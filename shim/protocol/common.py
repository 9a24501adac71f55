"""Validation helpers shared by endpoint protocols: precise OpenAI-style 400s.

Codes used (the `code` of the error envelope):
  missing_required_parameter  a required field is absent
  invalid_type                wrong JSON type (no coercion: "5", 1.5, true are not integers)
  invalid_value               right type, value out of range / not allowed
  unknown_parameter           a field the endpoint does not know
  unsupported_parameter       a known OpenAI field (or value) this server does not implement
  string_above_max_length     a string longer than its bound (identifiers, stop strings, ...)

Client-supplied text quoted in a message (or used as `param`) always goes through
`genapi.untrusted.clip`: escaped and cut, so an error never echoes unbounded input.
"""
from __future__ import annotations

from typing import Any

from genapi.untrusted import MAX_ID_CHARS, clip
from shim.errors import APIError

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "an unsupported value"


def quote(value: str, limit: int = 64) -> str:
    """Client text for an error message: escaped, cut to `limit` characters, in quotes."""
    return f"'{clip(value, limit)}'"


def shown(value: Any, limit: int = 64) -> str:
    """Any client value for an error message: a string quoted (`quote`), else clipped."""
    return quote(value, limit) if isinstance(value, str) else clip(value, limit)


def missing(param: str) -> APIError:
    return APIError(400, f"Missing required parameter: '{param}'.", "invalid_request_error", param,
                    "missing_required_parameter")


def invalid_type(param: str, expected: str, value: Any) -> APIError:
    return APIError(400, f"Invalid type for '{param}': expected {expected}, but got {json_type_name(value)} instead.",
                    "invalid_request_error", param, "invalid_type")


def invalid_value(param: str, message: str) -> APIError:
    return APIError(400, message, "invalid_request_error", param, "invalid_value")


def unknown_parameter(param: str) -> APIError:
    shown = clip(param, 100)
    return APIError(400, f"Unrecognized request argument supplied: {shown}",
                    "invalid_request_error", shown, "unknown_parameter")


def too_long(param: str, limit: int, length: int) -> APIError:
    return APIError(400, f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, "
                         f"but got a string with length {length} instead.",
                    "invalid_request_error", param, "string_above_max_length")


def check_max_length(value: str, param: str, limit: int) -> str:
    if len(value) > limit:
        raise too_long(param, limit, len(value))
    return value


def unsupported(param: str, what: str | None = None) -> APIError:
    """400 unsupported_parameter: "This server does not support `what` yet." (`what`, singular
    or plural, starts with a capital as a sentence would; the default names `param`)."""
    subject = what or f"The '{param}' parameter"
    subject = subject[0].lower() + subject[1:] if subject[:1].isupper() else subject
    return APIError(400, f"This server does not support {subject} yet.", "invalid_request_error", param,
                    "unsupported_parameter")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_range(value, param: str, *, minimum=None, maximum=None, exclusive_minimum=None) -> None:
    if exclusive_minimum is not None and not value > exclusive_minimum:
        raise invalid_value(param, f"Invalid '{param}': expected a value > {exclusive_minimum}, "
                                   f"but got {shown(value)} instead.")
    if minimum is not None and value < minimum:
        raise invalid_value(param, f"Invalid '{param}': expected a value >= {minimum}, but got {shown(value)} instead.")
    if maximum is not None and value > maximum:
        raise invalid_value(param, f"Invalid '{param}': expected a value <= {maximum}, but got {shown(value)} instead.")


def expect_int(value: Any, param: str, **bounds) -> int:
    if not is_int(value):
        raise invalid_type(param, "an integer", value)
    check_range(value, param, **bounds)
    return value


def expect_number(value: Any, param: str, **bounds) -> float:
    if not is_number(value):
        raise invalid_type(param, "a number", value)
    check_range(value, param, **bounds)
    return value


def expect_bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise invalid_type(param, "a boolean", value)
    return value


def check_text(value: str, param: str) -> str:
    """Text bound for the core must be valid Unicode (no lone UTF-16 surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid_value(param, f"Invalid '{param}': the string contains an unpaired UTF-16 surrogate "
                                   "and is not valid Unicode.") from None
    return value


def expect_str(value: Any, param: str, *, non_empty: bool = False, max_length: int | None = None) -> str:
    if not isinstance(value, str):
        raise invalid_type(param, "a string", value)
    if non_empty and not value:
        raise invalid_value(param, f"Invalid '{param}': expected a non-empty string.")
    if max_length is not None:
        check_max_length(value, param, max_length)
    return check_text(value, param)


def expect_id(value: Any, param: str, *, non_empty: bool = False, max_length: int = MAX_ID_CHARS) -> str:
    """An identifier (model, name, call id, user, ...): a string of at most `max_length`
    characters (genapi.untrusted.MAX_ID_CHARS unless the spec says less)."""
    return expect_str(value, param, non_empty=non_empty, max_length=max_length)


def expect_object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise invalid_type(param, "an object", value)
    return value


def expect_array(value: Any, param: str) -> list:
    if not isinstance(value, list):
        raise invalid_type(param, "an array", value)
    return value
