"""gunicorn answers malformed HTTP itself (bad request line, too many or too large headers,
bad chunked encoding), before the Flask app sees the request. Its stock answer is an
HTML page; this replaces it with the OpenAI error envelope and an `x-request-id`, so
every answer from the shim has the same shape.

gunicorn calls `gunicorn.util.write_error(sock, status, reason, message)` for these;
`install()` swaps that function in the worker (gunicorn_conf.post_worker_init). The shim's
own worker (shim/worker.py) writes its refusals (429 when every request thread is busy,
408 when a request does not arrive in time) with `error_response` too.

Statuses: gunicorn answers an unknown Transfer-Encoding with 501, a 5xx that clients and
SDKs retry; the request is malformed for us, so it is a 400 (REMAPPED). Every one of
these answers says `Connection: close`, and the connection is closed after it.

gunicorn quotes the offending request line or header, up to its 8 KiB limits, both in the
answer and in its "Invalid request from ip=..." warning: both are clipped
(genapi.untrusted.clip) like every other client-supplied value we quote.
"""
from __future__ import annotations

import logging

from gunicorn import util

from genapi.untrusted import QUOTE_CHARS, clip
from shim.errors import error_envelope
from shim.jsonutil import dumps_bytes
from shim.request_id import HEADER, resolve_request_id

# gunicorn status -> the status the shim answers instead.
REMAPPED = {501: (400, "Bad Request")}


def error_response(status: int, reason: str, message: str, *, type: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> bytes:
    """The whole HTTP/1.1 response (Connection: close) for a request refused before the app."""
    kind = type or ("server_error" if status >= 500 else "invalid_request_error")
    code = code or reason.lower().replace(" ", "_") or None  # "Bad Request" -> "bad_request"
    body = dumps_bytes(error_envelope(message or reason, kind, None, code))
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{HEADER}: {resolve_request_id(None)}\r\n{extra}\r\n")
    return head.encode("latin-1") + body


def _write_error(sock, status_int, reason, mesg) -> None:
    status, reason = REMAPPED.get(int(status_int), (int(status_int), str(reason)))
    util.write_nonblock(sock, error_response(status, reason, clip(str(mesg))))


class ClipInvalidRequests(logging.Filter):
    """On gunicorn's error log: its warning about a malformed request, clipped."""

    PREFIX = "Invalid request from ip="

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(self.PREFIX):
            record.msg, record.args = clip(record.getMessage(), 2 * QUOTE_CHARS), ()
        return True


def install(worker) -> None:
    util.write_error = _write_error
    worker.log.error_log.addFilter(ClipInvalidRequests())
