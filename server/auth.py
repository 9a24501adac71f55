"""API keys: stored and compared as SHA-256 digests, in constant time. Shared by the shim
(HTTP Authorization header) and the core (gRPC `authorization` metadata)."""
from __future__ import annotations

import hashlib
import hmac

import grpc

from .errors import GenapiError


class KeyChecker:
    def __init__(self, digests: list[str]):
        self.digests = [bytes.fromhex(d) for d in digests]

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    def check(self, key: str | bytes) -> bool:
        """True when the key's digest matches a stored one. Every digest is compared (no
        early exit), so timing does not depend on which key, or how much of it, matched."""
        raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(raw).digest()
        ok = False
        for d in self.digests:
            ok |= hmac.compare_digest(digest, d)
        return ok

    def check_header(self, value: str | None) -> bool:
        """Validates an `Authorization: Bearer <key>` value."""
        if not value or value[:7].lower() != "bearer ":  # the scheme is case-insensitive (RFC 9110)
            return False
        key = value[len("Bearer "):]
        return bool(key) and self.check(key)


def mask(key: str) -> str:
    """What may be shown of a presented key: `sk-1****cdef` for long printable keys."""
    if len(key) >= 16 and key.isascii() and key.isprintable():
        return f"{key[:4]}****{key[-4:]}"
    return "****"


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer key; health and reflection stay open."""

    OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, checker: KeyChecker):
        self.checker = checker

    async def intercept_service(self, continuation, details):
        if details.method.startswith(self.OPEN):
            return await continuation(details)
        auth = dict(details.invocation_metadata or ()).get("authorization")
        if self.checker.check_header(auth):
            return await continuation(details)
        err = GenapiError(grpc.StatusCode.UNAUTHENTICATED, "Incorrect or missing API key.", "invalid_api_key")
        handler = await continuation(details)

        async def deny_unary(request, context):
            await context.abort_with_status(err.to_status())

        async def deny_stream(request, context):
            await context.abort_with_status(err.to_status())
            yield  # pragma: no cover  (makes this an async generator)

        if handler is None:
            return None
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(
                deny_stream, handler.request_deserializer, handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(
            deny_unary, handler.request_deserializer, handler.response_serializer)
