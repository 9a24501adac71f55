"""Counts every RPC once in genapi_requests_total{method, model_name, key, code}: the method
name, the request's model when this core serves it ("" otherwise: client strings never
become label values), the caller's key name and the gRPC status code it ended with."""
from __future__ import annotations

import inspect

import grpc

from .. import metrics
from .auth import current_owner


def _code(context) -> str:
    try:
        code = context.code()
    except Exception:
        code = None
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    SKIP = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, served_models):
        self.served = served_models  # a container of model names

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.SKIP):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        behavior = handler.unary_unary or handler.unary_stream
        if behavior is None:  # client-streaming (file upload): counted without a model
            behavior, kind = handler.stream_unary or handler.stream_stream, None
        else:
            kind = "unary_unary" if handler.unary_unary else "unary_stream"

        def count(request, context):
            model = getattr(request, "model", "") if kind else ""
            metrics.REQUESTS.labels(method, model if model in self.served else "", current_owner(),
                                    _code(context)).inc()

        if inspect.isasyncgenfunction(behavior):
            async def wrapped(request, context):
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    count(request, context)
        else:
            async def wrapped(request, context):
                try:
                    return await behavior(request, context)
                finally:
                    count(request, context)
        factory = {"unary_unary": grpc.unary_unary_rpc_method_handler,
                   "unary_stream": grpc.unary_stream_rpc_method_handler}.get(kind) or (
            grpc.stream_unary_rpc_method_handler if handler.stream_unary else grpc.stream_stream_rpc_method_handler)
        return factory(wrapped, handler.request_deserializer, handler.response_serializer)
