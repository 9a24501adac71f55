"""OpenAI's rate-limit headers on the shim's responses.

The core enforces the per-key limits (server/limits.py) and reports the caller's state as
gRPC metadata: initial metadata of a call it accepted, trailers of one it refused. Both
carry `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` in OpenAI's formats
(integers; resets as Go durations like `1s`, `6m0s`); the shim copies them verbatim:
`remember_call` stores those of a call in `flask.g`, the after-request hook puts them on
the response; an error response gets them from `from_grpc_error` (shim/errors.py).

Every other response of a key with limits (models, files, batches, a 404, the shim's own
400s) gets the state from one AdminService.GetRateLimits call, made by the same hook: so
each response carries them, as OpenAI's do. Keys without limits cost no call.

A key whose requests-per-minute window is spent is answered here, without a gRPC call,
until that window resets (`Refusals`): a flooding key then costs the shim an HTTP parse
and a key check per request, and the core nothing (reliability plan L3). This holds
because a window's request count only grows until it resets (requests are never
refunded; other workers, replicas and gRPC callers can only add to it), as long as every
core the shim balances over counts in the same window: one core, or shared (Redis)
storage (`refusals_hold`). A spent *token* budget is not remembered: refunds of requests
still running free tokens before the reset.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import grpc
from flask import Flask, current_app, g, request

from genapi.durations import go_duration, parse_go_duration
from shim import metrics
from shim.errors import APIError

PREFIX = "x-ratelimit-"
LOOKUP_TIMEOUT_S = 2.0  # generous: under load a busy core still answers, and the headers are on every response
RATE_LIMIT_CODE = "rate_limit_exceeded"
# The requests the core admits against the caller's rpm (server/limits.py: admit).
CHARGED_PATHS = frozenset({
    "/v1/chat/completions", "/v1/responses", "/v1/embeddings", "/v1/rerank", "/rerank", "/v2/rerank",
    "/v1/audio/transcriptions", "/v1/audio/translations",
})


def headers_from_metadata(metadata) -> dict[str, str]:
    """The x-ratelimit-* entries of gRPC metadata (pairs or None) as HTTP headers."""
    out: dict[str, str] = {}
    for item in metadata or ():
        try:
            key, value = item[0], item[1]
        except (TypeError, IndexError):
            continue
        if isinstance(key, str) and key.startswith(PREFIX) and isinstance(value, str) and value.isascii():
            out[key] = value
    return out


def call_headers(call, which: str = "initial_metadata") -> dict[str, str]:
    """x-ratelimit-* of `call`'s initial metadata (or trailers); {} for anything that is not
    a finished or started grpc Call (never raises)."""
    try:
        return headers_from_metadata(getattr(call, which)())
    except Exception:
        return {}


def remember_call(call) -> None:
    """Keeps `call`'s rate-limit headers for this request's response."""
    if headers := call_headers(call):
        try:
            g.ratelimit_headers = headers
        except RuntimeError:  # outside a request context
            pass


def has_limits(principal: str) -> bool:
    """Whether `principal`'s key (or the default) sets an rpm or tpm limit."""
    cfg = current_app.config["GENAPI"]
    return any(current_app.extensions["genapi_keys"].limits_of(principal, cfg.default_rpm, cfg.default_tpm))


def looked_up_headers() -> dict[str, str]:
    """The caller's x-ratelimit-* from the core (GetRateLimits, charging nothing); {} when
    the core does not answer in time (the response goes out without them)."""
    from genapi.v1 import admin_service_pb2
    from shim import grpc_client
    from shim.routes.common import core, metadata

    if grpc_client.is_shut_down():
        return {}
    try:
        _, call = core().admin.GetRateLimits.with_call(admin_service_pb2.GetRateLimitsRequest(),
                                                      metadata=metadata(), timeout=LOOKUP_TIMEOUT_S)
    except grpc.RpcError:
        return {}
    return call_headers(call)


@dataclass(frozen=True)
class Refusal:
    """A key's spent requests window, from the core's 429, kept until the window resets."""

    until: float  # time.monotonic() the window resets
    limit: str  # x-ratelimit-limit-requests


def requests_spent_for(headers: dict[str, str]) -> float | None:
    """Seconds until the requests window resets when `headers` (x-ratelimit-*, lower-case
    names) show it spent (remaining-requests 0 and a positive reset); else None."""
    if headers.get(PREFIX + "remaining-requests") != "0" or not headers.get(PREFIX + "limit-requests", "").isdigit():
        return None
    wait = parse_go_duration(headers.get(PREFIX + "reset-requests", ""))
    return wait if wait else None


class Refusals:
    """Per key name, the requests window that is spent until it resets (one per worker
    process; thread-safe). The answer is made for the request at hand, in the core's words
    for an rpm refusal, without a model (the body is not read); it carries the requests
    headers only: the token budget is the core's to report (refunds move it), and the
    key's next admitted request shows it."""

    def __init__(self) -> None:
        self._by_key: dict[str, Refusal] = {}
        self._lock = threading.Lock()

    def remember(self, key: str, headers: dict[str, str], now: float | None = None) -> bool:
        """Keeps `key`'s spent window when a 429's headers show one."""
        wait = requests_spent_for(headers)
        if wait is None:
            return False
        now = time.monotonic() if now is None else now
        with self._lock:
            self._by_key[key] = Refusal(now + wait, headers[PREFIX + "limit-requests"])
        return True

    def answer(self, key: str, now: float | None = None) -> APIError | None:
        """The 429 to give `key` now, or None when it has no spent window in force."""
        now = time.monotonic() if now is None else now
        with self._lock:
            refusal = self._by_key.get(key)
            if refusal is not None and now >= refusal.until:
                del self._by_key[key]
                refusal = None
        if refusal is None:
            return None
        reset = go_duration(refusal.until - now)
        message = (f"Rate limit reached for key `{key}` on requests per min (RPM): Limit {refusal.limit}, "
                   f"Used {refusal.limit}, Requested 1. Please try again in {reset}.")
        headers = {PREFIX + "limit-requests": refusal.limit, PREFIX + "remaining-requests": "0",
                   PREFIX + "reset-requests": reset, "Retry-After": str(max(1, math.ceil(refusal.until - now)))}
        return APIError(429, message, "rate_limit_error", None, RATE_LIMIT_CODE, headers)

    def clear(self) -> None:
        """Forgets every spent window (the limits were reloaded)."""
        with self._lock:
            self._by_key.clear()


def refusals_hold(config) -> bool:
    """Whether one core's spent rpm window is every core's, so that the shim may answer for
    them: the shim dials one core, or the limits are counted in shared storage. With
    `memory://` counters behind round-robin, each core counts its own window."""
    from shim.grpc_client import uses_round_robin

    return not uses_round_robin(config) or not config.limits_storage.startswith("memory://")


def _remember_refusal(refusals: Refusals, principal: str, response) -> None:
    if "x-should-retry" in response.headers or response.is_streamed:
        return
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == RATE_LIMIT_CODE:
        headers = {k.lower(): v for k, v in response.headers.items() if k.lower().startswith(PREFIX)}
        if refusals.remember(principal, headers):
            metrics.SHIM_RATE_LIMITED.labels(principal, "requests")  # the series exists from the first refusal


def register_ratelimit_headers(app: Flask) -> None:
    refusals = app.extensions["genapi_refusals"] = Refusals()
    replay = refusals_hold(app.config["GENAPI"])

    @app.before_request
    def _refuse_spent_key():
        principal = g.get("principal")
        if replay and principal is not None and request.method == "POST" and request.path in CHARGED_PATHS:
            if (err := refusals.answer(principal)) is not None:
                g.refusal_replayed = True
                metrics.SHIM_RATE_LIMITED.labels(principal, "requests").inc()
                raise err

    @app.after_request
    def _add(response):
        headers = g.get("ratelimit_headers")
        principal = g.get("principal")
        if replay and response.status_code == 429 and principal is not None and not g.get("refusal_replayed"):
            _remember_refusal(refusals, principal, response)
        if (headers is None and principal is not None and response.status_code < 500
                and not any(k.lower().startswith(PREFIX) for k in response.headers.keys()) and has_limits(principal)):
            headers = looked_up_headers()
        for key, value in (headers or {}).items():
            response.headers.setdefault(key, value)
        return response
