"""Server interceptors: auth (principal and per-key models), trace context (traceparent and
request id into the log lines), metrics, and store outages (UNAVAILABLE store_unavailable)."""
from __future__ import annotations

import contextlib
import inspect
from typing import Callable

import grpc


def wrap_handler(handler, around: Callable[[object], contextlib.AbstractAsyncContextManager]):
    """`handler` whose every call runs inside `around(context)`, an async context manager
    entered in the task that runs the RPC (so it may set context variables, or catch what
    the call raises and abort it); None stays None."""
    if handler is None:
        return None
    for kind, factory in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                          ("unary_stream", grpc.unary_stream_rpc_method_handler),
                          ("stream_unary", grpc.stream_unary_rpc_method_handler),
                          ("stream_stream", grpc.stream_stream_rpc_method_handler)):
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        if inspect.isasyncgenfunction(behavior):
            async def wrapped(request, context, behavior=behavior):
                async with around(context):
                    async for item in behavior(request, context):
                        yield item
        else:
            async def wrapped(request, context, behavior=behavior):
                async with around(context):
                    return await behavior(request, context)
        return factory(wrapped, handler.request_deserializer, handler.response_serializer)
    return handler


def run_with(handler, enter: Callable[[], object]):
    """`handler` whose behaviour first calls `enter()` (which sets context variables) in
    the task that runs the RPC, and runs inside the context manager `enter()` returns, if
    any (a tracing span); None stays None."""
    @contextlib.asynccontextmanager
    async def around(_context):
        with enter() or contextlib.nullcontext():
            yield
    return wrap_handler(handler, around)
