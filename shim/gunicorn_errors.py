"""gunicorn answers malformed HTTP itself (bad request line, too many or too large headers,
bad chunked encoding), before the Flask app sees the request. Its stock answer is an
HTML page; this replaces it with the OpenAI error envelope and an `x-request-id`, so
every answer from the shim has the same shape.

gunicorn calls `gunicorn.util.write_error(sock, status, reason, message)` for these;
`install()` swaps that function in the worker (gunicorn_conf.post_worker_init).
"""
from __future__ import annotations

from gunicorn import util

from shim.errors import error_envelope
from shim.jsonutil import dumps_bytes
from shim.request_id import HEADER, resolve_request_id


def error_response(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP/1.1 response gunicorn writes for a request it refused."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = reason.lower().replace(" ", "_") or None  # "Bad Request" -> "bad_request"
    body = dumps_bytes(error_envelope(message or reason, kind, None, code))
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{HEADER}: {resolve_request_id(None)}\r\n\r\n")
    return head.encode("latin-1") + body


def _write_error(sock, status_int, reason, mesg) -> None:
    util.write_nonblock(sock, error_response(int(status_int), str(reason), str(mesg)))


def install() -> None:
    util.write_error = _write_error
