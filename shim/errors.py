"""The one error model of the shim: gRPC status -> HTTP status + OpenAI error envelope.

Every error response body is `{"error": {"message", "type", "param", "code"}}` with all
four keys present. The core reports failures as canonical gRPC codes, optionally with a
`google.rpc.ErrorInfo` detail (domain "genapi") whose `reason` is the OpenAI `code` and
whose metadata may carry `param`, `retry_after_s` and `should_retry` ("false" marks a
429/503 the client must not retry: no Retry-After, `x-should-retry: false`).

Only the core's own RESOURCE_EXHAUSTED (with its ErrorInfo) is a 429: the same code
raised by the gRPC transport between shim and core (a message over the size limit:
413; trailers over the metadata limit, a memory quota, ...) is never a rate limit.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from genapi.untrusted import clip
from shim import grpc_client
from shim.jsonutil import dumps_bytes

log = logging.getLogger("genapi.shim")

ERROR_DOMAIN = "genapi"
DEFAULT_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class StatusMapping:
    http_status: int
    type: str
    code: str | None  # default OpenAI code when the core gives no ErrorInfo
    trust_message: bool  # show grpc details() to the client even without ErrorInfo


# google/rpc/code.proto HTTP mapping; anything not listed is a 500.
GRPC_STATUS_MAP: dict[grpc.StatusCode, StatusMapping] = {
    grpc.StatusCode.INVALID_ARGUMENT: StatusMapping(400, "invalid_request_error", None, True),
    grpc.StatusCode.FAILED_PRECONDITION: StatusMapping(400, "invalid_request_error", None, True),
    grpc.StatusCode.OUT_OF_RANGE: StatusMapping(400, "invalid_request_error", None, True),
    grpc.StatusCode.UNAUTHENTICATED: StatusMapping(401, "authentication_error", "invalid_api_key", True),
    grpc.StatusCode.PERMISSION_DENIED: StatusMapping(403, "permission_error", None, True),
    grpc.StatusCode.NOT_FOUND: StatusMapping(404, "invalid_request_error", None, True),
    grpc.StatusCode.ALREADY_EXISTS: StatusMapping(409, "invalid_request_error", "conflict", True),
    grpc.StatusCode.ABORTED: StatusMapping(409, "invalid_request_error", "conflict", True),
    grpc.StatusCode.RESOURCE_EXHAUSTED: StatusMapping(429, "rate_limit_error", "rate_limit_exceeded", True),
    grpc.StatusCode.CANCELLED: StatusMapping(499, "invalid_request_error", "request_cancelled", False),
    grpc.StatusCode.UNIMPLEMENTED: StatusMapping(501, "server_error", "not_implemented", True),
    grpc.StatusCode.UNAVAILABLE: StatusMapping(503, "server_error", "service_unavailable", False),
    grpc.StatusCode.DEADLINE_EXCEEDED: StatusMapping(504, "server_error", "timeout", False),
}
INTERNAL_MAPPING = StatusMapping(500, "server_error", None, False)

# Messages for statuses whose gRPC details are not shown (they may name internal addresses).
GENERIC_MESSAGES = {
    499: "The request was cancelled.",
    500: "internal error",
    503: "The service is temporarily unavailable; please retry shortly.",
    504: "The request timed out before the model finished.",
}

# What a client is told while the service drains (the core's words too).
SHUTTING_DOWN_MESSAGE = "The server is shutting down; retry the request shortly."

# HTTP statuses a client may retry; only these carry Retry-After.
RETRYABLE_WITH_RETRY_AFTER = {429, 503}


class APIError(Exception):
    """An error that becomes an OpenAI error response (validation, auth, mapped gRPC)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def envelope(self) -> dict:
        return error_envelope(self.message, self.type, self.param, self.code)

    def response(self) -> Response:
        return json_response(self.envelope(), self.status, self.headers)

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def error_envelope(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    """The OpenAI error body; all four keys are always present."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_response(obj, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    resp = Response(dumps_bytes(obj), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def _error_info(err: grpc.RpcError):
    """The ErrorInfo detail of a failed call, or None (never raises)."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(err)
        if status is None:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return info
    except Exception:  # malformed trailers, not a Call, mismatching status: ignore
        return None
    return None


def _retry_after(value: str | None) -> str:
    try:
        seconds = float(value) if value else DEFAULT_RETRY_AFTER_S
    except ValueError:
        seconds = DEFAULT_RETRY_AFTER_S
    if not math.isfinite(seconds):
        seconds = DEFAULT_RETRY_AFTER_S
    return str(max(1, math.ceil(seconds)))


def _code_of(err) -> grpc.StatusCode:
    try:
        code = err.code()
    except Exception:
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _details_of(err) -> str:
    try:
        return err.details() or ""
    except Exception:
        return ""


def from_grpc_error(
    err: grpc.RpcError,
    *,
    not_found_param: str | None = None,
    not_found_code: str | None = None,
    not_found_message: str | None = None,
    request_id: str | None = None,
) -> APIError:
    """Maps a failed gRPC call to an APIError (the single mapping table lives above).

    `not_found_*` are the defaults for NOT_FOUND without ErrorInfo / details (endpoints
    whose only lookup is the model pass "model"/"model_not_found").
    """
    code = _code_of(err)
    if code == grpc.StatusCode.CANCELLED and grpc_client.is_shut_down():
        # This worker cancelled it: its drain grace period is over (shim/worker.py).
        return APIError(503, SHUTTING_DOWN_MESSAGE, "server_error", None, "server_shutting_down",
                        {"Retry-After": str(DEFAULT_RETRY_AFTER_S)})
    details = _details_of(err)
    info = _error_info(err)
    from_core = info is not None and info.domain == ERROR_DOMAIN
    meta = dict(info.metadata) if from_core else {}

    mapping = GRPC_STATUS_MAP.get(code, INTERNAL_MAPPING)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and not from_core:
        # A message over the gRPC size limit is the caller's request being too large,
        # not a rate limit (F6): report it as 413.
        if "larger than max" in details:
            return APIError(413, "The request is too large to be processed.", "invalid_request_error",
                            None, "request_too_large")
        # Any other transport-level exhaustion (trailers over the metadata limit, ...) is
        # a failure between shim and core, not the client's rate: 500, details only logged.
        mapping = INTERNAL_MAPPING
    status = mapping.http_status
    err_type = mapping.type
    err_code = mapping.code
    param = None

    if code == grpc.StatusCode.NOT_FOUND:
        param, err_code = not_found_param, not_found_code or err_code
    if from_core:
        err_code = info.reason or err_code
        param = meta.get("param") or param

    if status == 500:
        message = GENERIC_MESSAGES[500]
        err_code = None
        param = None
    elif mapping.trust_message or from_core:
        fallback = not_found_message if status == 404 and not_found_message else None
        message = details or fallback or GENERIC_MESSAGES.get(status, "The request failed.")
    else:
        message = GENERIC_MESSAGES.get(status, "The request failed.")

    from shim.ratelimit import call_headers

    headers: dict[str, str] = call_headers(err, "trailing_metadata")  # x-ratelimit-* of a refusal
    if status in RETRYABLE_WITH_RETRY_AFTER:
        if meta.get("should_retry", "").lower() == "false":
            headers["x-should-retry"] = "false"
        else:
            headers["Retry-After"] = _retry_after(meta.get("retry_after_s"))

    if status >= 500:
        log.warning("core call failed: %s %s (request_id=%s)", code.name, clip(details, 500),
                    clip(request_id or _request_id() or "-"))
    return APIError(status, message, err_type, param, err_code, headers)


def _request_id() -> str | None:
    try:
        return g.get("request_id")
    except RuntimeError:  # outside a request context (stream generator)
        return None


# ---------------------------------------------------------------------------------------
# Flask handlers: APIError, werkzeug HTTP errors, gRPC errors, and a last resort.

_HTTP_CODES = {
    404: None,
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
}


def _http_exception_response(e: HTTPException) -> Response:
    status = e.code or 500
    if status >= 500:
        return APIError(status, GENERIC_MESSAGES.get(status, "internal error"), "server_error").response()
    if status == 404:
        message = f"Invalid URL ({request.method} {request.path})"
    elif status == 405:
        message = f"Method {request.method} is not allowed for {request.path}."
    elif status == 413:
        message = "The request body is too large."
    else:
        message = e.description or e.name
    resp = APIError(status, message, "invalid_request_error", None, _HTTP_CODES.get(status)).response()
    # Keep protocol headers werkzeug computed (e.g. Allow for 405), not its HTML content type.
    for key, value in e.get_headers():
        if key.lower() not in ("content-type", "content-length"):
            resp.headers[key] = value
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(e: APIError):
        return e.response()

    @app.errorhandler(grpc.RpcError)
    def _grpc_error(e: grpc.RpcError):
        return from_grpc_error(e).response()

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        return _http_exception_response(e)

    @app.errorhandler(Exception)
    def _unhandled(e: Exception):
        if isinstance(e, HTTPException):  # pragma: no cover - handled above
            return _http_exception_response(e)
        log.exception("unhandled error (request_id=%s)", _request_id())
        return APIError(500, GENERIC_MESSAGES[500], "server_error").response()
