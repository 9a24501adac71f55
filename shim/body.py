"""Reading a JSON request body: media type (415), size cap (413), strict parse (400).

The cap is enforced here, byte-exact, for both framings:
  * Content-Length above the cap -> 413 before reading anything;
  * chunked (no Content-Length) -> at most cap + 1 bytes are read, then 413.
(werkzeug's own max_content_length silently truncates chunked bodies at the cap, which
would turn an oversized body into a misleading JSON error.) Before answering 413 the
rest of a moderately oversized body is read and discarded (bounded in bytes and time),
so that clients which send the whole body before reading get the 413 instead of a
connection reset; memory stays bounded by the cap.
"""
from __future__ import annotations

import time

from flask import current_app, request

from shim.errors import APIError
from shim.jsonutil import BodyParseError, loads_body

READ_CHUNK = 64 * 1024
DRAIN_MAX_BYTES = 64 * 1024 * 1024  # discard at most this much of an oversized body
DRAIN_MAX_SECONDS = 10.0
DRAIN_IDLE_SECONDS = 1.0


def _too_large(cap: int) -> APIError:
    return APIError(413, f"The request body is too large (limit {cap} bytes).", "invalid_request_error", None,
                    "request_too_large")


def _unreadable() -> APIError:
    return APIError(400, "The request body could not be read.", "invalid_request_error", None, "invalid_body")


def _discard(environ: dict, stream, max_bytes: int) -> None:
    """Reads and drops up to `max_bytes`; stops at EOF, after DRAIN_MAX_SECONDS, or
    when the client pauses for DRAIN_IDLE_SECONDS (a client waiting for the answer)."""
    sock = environ.get("gunicorn.socket")
    old_timeout = None
    try:
        if sock is not None:
            old_timeout = sock.gettimeout()
            sock.settimeout(DRAIN_IDLE_SECONDS)
        deadline = time.monotonic() + DRAIN_MAX_SECONDS
        left = max_bytes
        while left > 0 and time.monotonic() < deadline:
            chunk = stream.read(min(READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
    except Exception:
        return
    finally:
        if sock is not None:
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass


def discard_oversized(environ: dict, content_length: int) -> None:
    """Before a 413 for a body announced larger than the cap: read and drop it when it is
    moderately large (bounded as above), so the client gets the answer, not a reset."""
    stream = environ.get("wsgi.input")
    if stream is not None and content_length <= DRAIN_MAX_BYTES:
        _discard(environ, stream, content_length)


def read_capped(environ: dict, content_length: int | None, cap: int) -> bytes:
    """The raw body, or APIError 413 when it is longer than `cap` bytes."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        if content_length is not None:
            if content_length > cap:
                if content_length <= DRAIN_MAX_BYTES:
                    _discard(environ, stream, content_length)
                raise _too_large(cap)
            buf = bytearray()
            while len(buf) < content_length:
                chunk = stream.read(min(READ_CHUNK, content_length - len(buf)))
                if not chunk:
                    break
                buf += chunk
            return bytes(buf)
        if not environ.get("wsgi.input_terminated"):
            return b""  # a server that cannot delimit a chunked body: nothing is safe to read
        buf = bytearray()
        while True:
            chunk = stream.read(min(READ_CHUNK, cap + 1 - len(buf)))
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > cap:
                _discard(environ, stream, DRAIN_MAX_BYTES)
                raise _too_large(cap)
    except APIError:
        raise
    except TimeoutError:  # the body did not arrive by the read deadline (shim/gunicorn_http.py)
        raise APIError(408, "The request body was not received in time.", "invalid_request_error", None,
                       "request_timeout") from None
    except Exception:  # client went away mid-body, malformed chunking
        raise _unreadable() from None


def _check_content_type() -> None:
    if request.mimetype != "application/json":
        raise APIError(
            415,
            "Unsupported Content-Type: the request body must be JSON sent with "
            "'Content-Type: application/json'.",
            "invalid_request_error",
            None,
            "unsupported_media_type",
        )
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower().replace("-", "") != "utf8":
        raise APIError(415, "Unsupported charset: JSON bodies must be UTF-8.", "invalid_request_error",
                       None, "unsupported_media_type")


def read_json_object() -> dict:
    """The request body as a dict, or an APIError (415, 413, 400)."""
    _check_content_type()
    cap = current_app.config["GENAPI"].max_body_mb * 1024 * 1024
    raw = read_capped(request.environ, request.content_length, int(cap))
    try:
        body = loads_body(raw)
    except BodyParseError as e:
        raise APIError(
            400,
            f"We could not parse the JSON body of your request ({e}). The API expects a JSON object.",
            "invalid_request_error",
            None,
            "invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", "invalid_request_error", None, "invalid_type")
    return body
