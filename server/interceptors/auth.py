"""gRPC authentication: every RPC but health and reflection needs a valid bearer key in
its `authorization` metadata (genapi.keys does the matching)."""
from __future__ import annotations

import grpc

from genapi.keys import KeyChecker

from ..errors import GenapiError


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer key; health and reflection stay open."""

    OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, checker: KeyChecker):
        self.checker = checker

    async def intercept_service(self, continuation, details):
        if details.method.startswith(self.OPEN):
            return await continuation(details)
        auth = dict(details.invocation_metadata or ()).get("authorization")
        if self.checker.identify_header(auth) is not None:
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
