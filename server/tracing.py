"""Trace context in the core: the W3C `traceparent` and `x-request-id` of each RPC's
metadata (the shim forwards the HTTP request's) go into context variables that every log
line of that RPC carries (genapi/logs.py), and, when `[tracing] otlp_endpoint` is set, into
an OpenTelemetry server span per RPC, child of the caller's span, exported over OTLP/gRPC
(optional extra: pip install 'genapi[otel]')."""
from __future__ import annotations

import contextlib
import contextvars

import grpc

from genapi.traceparent import parse_traceparent

from .interceptors import run_with


_trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("genapi_trace_id", default="")
_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("genapi_request_id", default="")


def log_context() -> dict:
    """The current RPC's ids for genapi.logs.ContextFilter."""
    return {"request_id": _request_id.get(), "trace_id": _trace_id.get()}


def log_context_of(work_id: str) -> contextvars.Context:
    """A fresh context whose log lines carry `work_id` (a batch id) as their request id and
    no trace id: for a background task, which would otherwise copy the context variables
    of whatever request created it."""
    ctx = contextvars.Context()
    ctx.run(_request_id.set, work_id)
    return ctx


def current_trace_id() -> str:
    return _trace_id.get()


class TraceInterceptor(grpc.aio.ServerInterceptor):
    """Sets the trace and request ids of every RPC; with a tracer, runs it in a span."""

    SKIP = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, tracer=None):
        self.tracer = tracer

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.SKIP):
            return handler
        md = dict(details.invocation_metadata or ())
        parent = md.get("traceparent")
        parsed = parse_traceparent(parent)
        request_id = md.get("x-request-id", "")
        method = details.method

        def enter():
            _trace_id.set(parsed[0] if parsed else "")
            _request_id.set(request_id if isinstance(request_id, str) else "")
            if self.tracer is None:
                return None
            return _span(self.tracer, method, parent if parsed else None)
        return run_with(handler, enter)


@contextlib.contextmanager
def _span(tracer, method: str, traceparent: str | None):
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    ctx = extract({"traceparent": traceparent}) if traceparent else None
    service, _, name = method.lstrip("/").partition("/")
    with tracer.start_as_current_span(method.lstrip("/"), context=ctx, kind=SpanKind.SERVER,
                                      attributes={"rpc.system": "grpc", "rpc.service": service,
                                                  "rpc.method": name}) as span:
        _trace_id.set(format(span.get_span_context().trace_id, "032x"))
        yield span


def otel_tracer(endpoint: str, service_name: str = "genapi-core"):
    """An OpenTelemetry tracer exporting to `endpoint` (OTLP/gRPC); ImportError naming the
    extra when OpenTelemetry is not installed."""
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ImportError("[tracing] otlp_endpoint is set but OpenTelemetry is not installed "
                          "(pip install 'genapi[otel]')") from None
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    trace.set_tracer_provider(provider)
    return trace.get_tracer("genapi.core")
