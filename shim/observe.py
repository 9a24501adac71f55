"""One record per HTTP request: what the access log line and the HTTP metrics say.

`RequestRecord` is created before auth (so refusals are recorded too), filled by the
routes (model), by the core stream (usage, first token: shim/streaming.py) and by the
after-request hook (status, key name); it is written when the response is closed, which
for a stream is after its last byte. The access log (logger `genapi.access`, one line
per request; `[logging] access_log = false` turns it off) holds method, path, status,
model, key name, tokens, TTFT and duration, the request and trace ids, never a prompt, a
header value or a key.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from flask import Flask, g, request

from genapi.untrusted import clip

from shim import metrics

log = logging.getLogger("genapi.access")

SKIP_PATHS = frozenset({"/metrics"})  # scrapes are neither logged nor counted
TOKEN_EVENTS = frozenset({"text", "reasoning", "tool_call"})


@dataclass
class RequestRecord:
    method: str
    path: str
    t0: float  # time.perf_counter() at arrival
    endpoint: str = ""
    model: str = ""
    key: str = ""
    status: int = 0
    request_id: str = ""
    trace_id: str = ""
    streamed: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    ttft_s: float | None = None
    whole: bool = False  # the core sends the answer merged (genapi.deltas.WHOLE): no first-token time
    written: bool = False

    def on_event(self, event) -> None:
        """A core event arrived (GenerateResponse): running usage, the first token's time.
        Called from the stream's reader thread; never raises."""
        try:
            if event.HasField("usage"):
                self.prompt_tokens = event.usage.prompt_tokens
                self.completion_tokens = event.usage.completion_tokens
            if self.ttft_s is None and not self.whole and event.WhichOneof("event") in TOKEN_EVENTS:
                self.ttft_s = time.perf_counter() - self.t0
        except (AttributeError, ValueError, TypeError):
            pass

    def fields(self, duration_s: float) -> dict:
        out = {"method": self.method, "path": self.path, "status": self.status, "model": self.model or "-",
               "key": self.key or "-"}
        if self.prompt_tokens is not None:
            out["prompt_tokens"] = self.prompt_tokens
            out["completion_tokens"] = self.completion_tokens or 0
        if self.ttft_s is not None:
            out["ttft_ms"] = round(self.ttft_s * 1000, 1)
        out["duration_ms"] = round(duration_s * 1000, 1)
        out["request_id"] = self.request_id
        if self.trace_id:
            out["trace_id"] = self.trace_id
        return out

    def finish(self, access_log: bool = True) -> None:
        """Writes the access line and the metrics once (the response was closed)."""
        if self.written:
            return
        self.written = True
        duration = time.perf_counter() - self.t0
        ok = self.status < 400
        model = self.model if ok else ""
        metrics.HTTP_REQUESTS.labels(self.endpoint, self.method, model, self.key, str(self.status)).inc()
        metrics.HTTP_DURATION.labels(self.endpoint).observe(duration)
        if self.streamed and ok and self.ttft_s is not None:
            metrics.HTTP_TTFT.labels(model).observe(self.ttft_s)
        if access_log:
            f = self.fields(duration)
            log.info(" ".join(f"{k}={v}" for k, v in f.items()), extra={"access": f})


def current_record() -> RequestRecord | None:
    try:
        return g.get("record")
    except RuntimeError:  # outside a request context
        return None


def note_model(model) -> None:
    """The route's model (bounded and escaped: it is a client string)."""
    if (rec := current_record()) is not None and isinstance(model, str):
        rec.model = clip(model, 128)


def note_whole() -> None:
    """The request's answer comes from the core in one piece (a non-streamed chat
    completion): its access line has no ttft_ms, which would only be its arrival."""
    if (rec := current_record()) is not None:
        rec.whole = True


def register_observe(app: Flask) -> None:
    """Register right after the request id (before auth, so 401s are recorded)."""
    access_log = bool(getattr(app.config["GENAPI"], "access_log", True))

    @app.before_request
    def _start():
        if request.path not in SKIP_PATHS:
            g.record = RequestRecord(request.method, clip(request.path, 256), time.perf_counter())

    @app.after_request
    def _close(response):
        rec = current_record()
        if rec is None:
            return response
        rec.status = response.status_code
        rec.endpoint = request.url_rule.rule if request.url_rule is not None else "(unmatched)"
        rec.key = g.get("principal") or ""
        rec.request_id = g.get("request_id") or ""
        rec.trace_id = g.get("trace_id") or ""
        rec.streamed = response.is_streamed
        response.call_on_close(lambda: rec.finish(access_log))
        return response
