"""gRPC authentication: every RPC but health and reflection needs a valid bearer key in
its `authorization` metadata (genapi.keys does the matching). The key's name is the
caller's principal: `current_owner()` gives it to servicers (stored objects belong to
it); without configured keys (no interceptor) everyone is genapi.keys.ANONYMOUS."""
from __future__ import annotations

import contextvars
import inspect

import grpc

from genapi.keys import ANONYMOUS, KeyChecker

from ..errors import GenapiError


_principal: contextvars.ContextVar[str] = contextvars.ContextVar("genapi_principal", default=ANONYMOUS)


def current_owner() -> str:
    """The API key name of the RPC being handled (ANONYMOUS without keys)."""
    return _principal.get()


def act_as(owner: str) -> None:
    """Makes `owner` the current principal of this asyncio task (and the tasks it starts):
    work done on someone's behalf outside an RPC, such as a batch line."""
    _principal.set(owner)


def _with_principal(handler, name: str):
    """`handler` whose behaviour runs with `name` as the current principal."""
    for kind, factory in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                          ("unary_stream", grpc.unary_stream_rpc_method_handler),
                          ("stream_unary", grpc.stream_unary_rpc_method_handler),
                          ("stream_stream", grpc.stream_stream_rpc_method_handler)):
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        if inspect.isasyncgenfunction(behavior):
            async def wrapped(request, context, behavior=behavior):
                _principal.set(name)
                async for item in behavior(request, context):
                    yield item
        else:
            async def wrapped(request, context, behavior=behavior):
                _principal.set(name)
                return await behavior(request, context)
        return factory(wrapped, handler.request_deserializer, handler.response_serializer)
    return handler


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer key; health and reflection stay open."""

    OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, checker: KeyChecker):
        self.checker = checker

    async def intercept_service(self, continuation, details):
        if details.method.startswith(self.OPEN):
            return await continuation(details)
        auth = dict(details.invocation_metadata or ()).get("authorization")
        if (name := self.checker.identify_header(auth)) is not None:
            handler = await continuation(details)
            return None if handler is None else _with_principal(handler, name)
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
