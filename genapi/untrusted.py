"""Client-supplied text on its way into error messages, gRPC metadata and log lines.

Both tiers use these (they import neither tier): the identifier bounds every request
is checked against (the shim answers 400, the core INVALID_ARGUMENT), and `clip()`,
the one helper through which any client-supplied value is quoted in an error message
or written to a log line. Unbounded input must never reach gRPC status messages (the
core's trailers are capped at 16 KiB, beyond which the call breaks) nor a log line
(a newline in a model name would forge a log entry).
"""
from __future__ import annotations

# Identifiers: model names, message and function names, tool call ids, `user`, ...
MAX_ID_CHARS = 256
# Request ids (x-request-id header or GenerateRequest.request_id).
MAX_REQUEST_ID_CHARS = 128
# One stop string (the detokenizer holds back up to this much text).
MAX_STOP_CHARS = 1024
# How much of a client value an error message or a log line quotes.
QUOTE_CHARS = 256

# Error messages the core sends are capped in UTF-8 bytes (they travel twice in the
# trailers, percent-encoded in grpc-message and inside grpc-status-details-bin).
MAX_STATUS_MESSAGE_BYTES = 1024


_SHORT_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def clip(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` made safe to quote in an error message or a log line.

    Non-printable characters (CR, LF, TAB, NUL and other controls, U+2028/U+2029, bidi
    overrides, lone surrogates) and backslashes are escaped Python-style, so one value
    is always one line and cannot pass for something else; at most `limit` characters
    of the value are kept, followed by a marker counting the characters dropped. The
    result is at most ~10 x `limit` + 24 characters long, whatever the input.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except ValueError:  # an integer beyond Python's digit limit
            text = f"<a {type(value).__name__} too large to show>"
    dropped = len(text) - limit
    head = text[:limit] if dropped > 0 else text
    out = "".join(map(_escape_char, head)) if not (head.isprintable() and "\\" not in head) else head
    return f"{out}...(+{dropped} chars)" if dropped > 0 else out


def cap_utf8(message: str, max_bytes: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """`message` cut to at most `max_bytes` UTF-8 bytes (on a character boundary)."""
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return message
    return data[:max_bytes - 3].decode("utf-8", "ignore") + "..."
