"""Errors of the core: canonical gRPC codes plus a google.rpc.ErrorInfo detail whose
`reason` is the OpenAI error code and whose metadata names the offending `param`.
The shim maps these once to HTTP; gRPC callers read the same details.

A status travels in the trailers (its message twice: grpc-message and inside
grpc-status-details-bin), which gRPC caps at 16 KiB: messages are cut to
MAX_STATUS_MESSAGE_BYTES and `param` to QUOTE_CHARS, and client values quoted in a
message go through `genapi.untrusted.clip` (see `quote`)."""
from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from genapi.untrusted import MAX_STATUS_MESSAGE_BYTES, QUOTE_CHARS, cap_utf8, clip

from .engines.base import EngineError, EngineInvalidRequest, EngineOverloaded


class GenapiError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "", param: str | None = None,
                 retry_after_s: float | None = None, metadata: tuple[tuple[str, str], ...] = ()):
        """`metadata`: extra trailers sent with the status (e.g. the x-ratelimit-* state);
        `should_retry = False` marks a refusal the client must not retry."""
        message = cap_utf8(message, MAX_STATUS_MESSAGE_BYTES)
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.param = clip(param, QUOTE_CHARS) if param else param
        self.retry_after_s = retry_after_s
        self.metadata = tuple(metadata)
        self.should_retry: bool | None = None

    def with_metadata(self, metadata: tuple[tuple[str, str], ...]) -> "GenapiError":
        """A copy carrying `metadata` as extra trailers (module-level errors are shared)."""
        err = GenapiError(self.code, self.message, self.reason, self.param, self.retry_after_s, metadata)
        err.should_retry = self.should_retry
        return err

    def to_status(self) -> grpc.Status:
        meta = {}
        if self.param:
            meta["param"] = self.param
        if self.retry_after_s is not None:
            meta["retry_after_s"] = f"{self.retry_after_s:g}"
        if self.should_retry is False:
            meta["should_retry"] = "false"
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=self.reason or self.code.name.lower(), domain="genapi",
                                                metadata=meta))
        status = rpc_status.to_status(status_pb2.Status(code=self.code.value[0], message=self.message,
                                                        details=[detail]))
        if self.metadata:
            status = status._replace(trailing_metadata=tuple(status.trailing_metadata) + self.metadata)
        return status


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """A client value for an error message: escaped and cut (genapi.untrusted.clip)."""
    return clip(value, limit)


def invalid(message: str, param: str | None = None, reason: str = "invalid_value") -> GenapiError:
    return GenapiError(grpc.StatusCode.INVALID_ARGUMENT, message, reason, param)


def too_long(param: str, limit: int, length: int) -> GenapiError:
    return invalid(f"Invalid '{param}': string too long. Expected a string with maximum length {limit}, but got "
                   f"a string with length {length} instead.", param, "string_above_max_length")


def not_found(message: str, param: str | None = None, reason: str = "not_found") -> GenapiError:
    return GenapiError(grpc.StatusCode.NOT_FOUND, message, reason, param)


async def abort(context: grpc.aio.ServicerContext, err: GenapiError):
    await context.abort_with_status(err.to_status())


def from_engine_error(e: Exception) -> GenapiError:
    """The one mapping of engine exceptions to gRPC status for every servicer.

    EngineOverloaded   -> RESOURCE_EXHAUSTED engine_overloaded (+ retry_after_s); distinct
                          from the rate_limit_exceeded of per-key limits, both HTTP 429
    EngineInvalidRequest -> INVALID_ARGUMENT with its reason (default invalid_value) and param
    EngineUnavailable, other EngineError (the engine is down) -> UNAVAILABLE engine_unavailable
    anything else      -> INTERNAL internal_error (a bug; nothing internal is told)
    """
    if isinstance(e, GenapiError):
        return e
    if isinstance(e, EngineOverloaded):
        return GenapiError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "engine_overloaded",
                           retry_after_s=e.retry_after_s)
    if isinstance(e, EngineInvalidRequest):
        return GenapiError(grpc.StatusCode.INVALID_ARGUMENT, str(e), e.reason, e.param)
    if isinstance(e, EngineError):
        return GenapiError(grpc.StatusCode.UNAVAILABLE, str(e), "engine_unavailable", retry_after_s=5)
    return INTERNAL_ERROR


INTERNAL_ERROR = GenapiError(grpc.StatusCode.INTERNAL, "internal error", "internal_error")

# A store or object storage call failed because it is down or unreachable (store.outage).
STORE_UNAVAILABLE = GenapiError(grpc.StatusCode.UNAVAILABLE, "The state store is unavailable; retry shortly.",
                                "store_unavailable", retry_after_s=5)
