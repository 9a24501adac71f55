"""Fault injection around a real engine, for reliability tests only (never a feature path).

Enabled per model with `[models.options.fault]`:
    first_token_delay_s = 3.0   # hold the first event back (keep-alive tests)
    fail_after_events = 4       # raise after this many events (mid-stream error tests)
    fail_message = "injected"   # message of the injected failure
    pause_decode_file = "/tmp/x" # no decode step while this file exists (torch scheduler):
                                 # requests stay admitted, holding their slots, as long as
                                 # a test needs them in flight
    grammar_compile_delay_s = 3.0 # sleep before compiling each response_format grammar
                                 # (torch scheduler), so a test can exceed
                                 # grammar_compile_timeout_s with any schema
Any other key is refused at load (genapi/config.py FAULT_OPTIONS, where a new one goes).
"""
from __future__ import annotations

import asyncio

from .base import EngineBase, EngineError, GenerationRequest, wait_ready


class InjectedFault(EngineError):
    """The failure a fault-injecting engine raises mid-stream (-> INTERNAL)."""


class FaultInjectingEngine(EngineBase):
    def __init__(self, inner: EngineBase, fault: dict):
        self.inner = inner
        self.delay = float(fault.get("first_token_delay_s", 0))
        self.fail_after = fault.get("fail_after_events")
        self.message = str(fault.get("fail_message", "injected engine failure"))

    def __getattr__(self, name):  # name, chat_info, ...
        return getattr(self.inner, name)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    def generate(self, request: GenerationRequest, reservation=None):
        return _FaultyStream(self, self.inner.generate(request, reservation))

    async def _wrap(self, events):
        if self.delay:
            await asyncio.sleep(self.delay)
        count = 0
        async for ev in events:
            if self.fail_after is not None and count >= int(self.fail_after):
                raise InjectedFault(self.message)
            count += 1
            yield ev

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def stats(self):
        return self.inner.stats()

    def ready(self) -> bool:
        return self.inner.ready()


class _FaultyStream:
    """The inner engine's stream seen through the faults. Closing it closes the inner
    stream (which aborts the request) even when iteration never started."""

    def __init__(self, engine: FaultInjectingEngine, inner):
        self._inner = inner
        self._events = engine._wrap(inner)

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._events.__anext__()

    async def ready(self) -> None:
        await wait_ready(self._inner)

    def close(self) -> None:
        if hasattr(self._inner, "close"):
            self._inner.close()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._inner.aclose()
