"""gRPC authentication: every RPC but health and reflection needs a valid bearer key in
its `authorization` metadata (genapi.keys does the matching). The key is the caller's
principal: `current_owner()` gives its name to servicers (stored objects belong to it,
rate limits count per name), `current_key()` its models and limits. Without configured
keys everyone is genapi.keys.ANONYMOUS. The interceptor is always installed and reads
the checker at every call, so a SIGHUP reload (KeyChecker.replace) applies to the next
RPC while those already accepted run to their end."""
from __future__ import annotations

import contextvars

import grpc

from genapi.config import ApiKey
from genapi.keys import ANONYMOUS, KeyChecker

from ..errors import GenapiError
from . import run_with


_principal: contextvars.ContextVar[str] = contextvars.ContextVar("genapi_principal", default=ANONYMOUS)
_key: contextvars.ContextVar[ApiKey | None] = contextvars.ContextVar("genapi_key", default=None)


def current_owner() -> str:
    """The API key name of the RPC being handled (ANONYMOUS without keys)."""
    return _principal.get()


def act_as(owner: str, checker: KeyChecker | None = None) -> None:
    """Makes `owner` the current principal of this asyncio task (and the tasks it starts):
    work done on someone's behalf outside an RPC, such as a batch line. With configured
    keys in `checker`, the owner's key (read now, so a SIGHUP reload applies) also decides
    which models it may use; a key revoked since may use none."""
    _principal.set(owner)
    if checker is not None and checker.enabled:
        _key.set(checker.principal(owner) or ApiKey(owner, "", models=()))


def current_key() -> ApiKey | None:
    """The API key of the RPC being handled (its models and limits); None without keys."""
    return _key.get()


def may_use(model: str) -> bool:
    """Whether the current caller's key may use `model` (always without keys)."""
    key = _key.get()
    return key is None or key.may_use(model)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects RPCs without a valid bearer key; health and reflection stay open."""

    OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, checker: KeyChecker):
        self.checker = checker

    async def intercept_service(self, continuation, details):
        if details.method.startswith(self.OPEN) or not self.checker.enabled:
            return await continuation(details)
        auth = dict(details.invocation_metadata or ()).get("authorization")
        if (name := self.checker.identify_header(auth)) is not None:
            key = self.checker.principal(name)

            def enter():
                _principal.set(name)
                _key.set(key)
            return run_with(await continuation(details), enter)
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
