"""Graceful drain of the core: once draining, new work is refused with UNAVAILABLE (the
shim answers 503 with Retry-After) while the calls already in flight run to their end.

`Drain` is shared by the servicers that start work (Generate today; embeddings,
transcription and batches next) and by `app.serve`, which flips it on SIGTERM/SIGINT,
waits for `in_flight` to reach zero (bounded by the grace period), then stops.
"""
from __future__ import annotations

import asyncio
import contextlib

import grpc

from .errors import GenapiError

#: What a client is told while the core drains; it may retry at once elsewhere (another
#: replica behind the balancer) or here after a restart.
RETRY_AFTER_S = 1.0


def shutting_down() -> GenapiError:
    return GenapiError(grpc.StatusCode.UNAVAILABLE, "The server is shutting down; retry the request shortly.",
                       "server_shutting_down", retry_after_s=RETRY_AFTER_S)


class Drain:
    """The draining flag and the count of calls in flight (event-loop thread only)."""

    def __init__(self) -> None:
        self.draining = False
        self.expired = False  # the grace period ran out: what is left gets cancelled
        self.in_flight = 0
        self._idle: asyncio.Event | None = None

    @contextlib.contextmanager
    def track(self):
        """Counts one call in flight for as long as the `with` block runs. Callers check
        `draining` first (no await in between: the loop is single-threaded)."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    def start(self) -> None:
        self.draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """True when every call in flight ended within `timeout_s`."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.expired = self.in_flight > 0
            return not self.expired
        return True
