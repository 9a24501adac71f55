"""Fault injection around a real engine, for reliability tests only (never a feature path).

Enabled per model with `[models.options.fault]`:
    first_token_delay_s = 3.0   # hold the first event back (keep-alive tests)
    fail_after_events = 4       # raise after this many events (mid-stream error tests)
    fail_message = "injected"   # message of the injected failure
"""
from __future__ import annotations

import asyncio

from .base import EngineBase, EngineError, GenerationRequest


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

    def generate(self, request: GenerationRequest):
        return self._wrap(self.inner.generate(request))

    async def _wrap(self, events):
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            count = 0
            async for ev in events:
                if self.fail_after is not None and count >= int(self.fail_after):
                    raise InjectedFault(self.message)
                count += 1
                yield ev
        finally:
            await events.aclose()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def stats(self):
        return self.inner.stats()

    def ready(self) -> bool:
        return self.inner.ready()
