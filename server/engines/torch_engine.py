"""The default engine: Hugging Face checkpoints on PyTorch (CPU or CUDA) with continuous
batching.

The model and its scheduler live in a child process (`scheduler.py`); this side, in the
core's event loop, keeps the chat tokenizer, does admission control (bounded queue,
token budget), sends requests and aborts down a pipe, and hands each step's events to
the requests' asyncio queues from one reader thread.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from dataclasses import dataclass

from .base import Engine, EngineError, EngineOverloaded, EngineStats, EngineUnavailable, GenerationRequest
from .scheduler import worker_main

log = logging.getLogger("genapi.engine.torch")


@dataclass
class _Stream:
    """What this side keeps of a request until the scheduler says it ended."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    budget: int
    admitted: bool = False


class TorchEngine(Engine):
    def __init__(self, name: str, path: str, options: dict | None = None):
        self.name = name
        self.path = path
        self.options = dict(options or {})
        self.max_batch = int(self.options.get("max_batch", 32))
        self.max_queue = int(self.options.get("max_queue", 256))
        self.max_budget = int(self.options.get("max_budget_tokens", 1_000_000))
        self.tokenizer = None
        self.context_length = 0
        self.vocab_size = 0
        self._stats = EngineStats(cache_slots_total=self.max_batch)
        self._lock = threading.Lock()  # guards the counters and _streams
        self._send_lock = threading.Lock()  # one writer at a time on the pipe
        self._streams: dict[str, _Stream] = {}
        self._pending = 0  # admitted here, not yet holding slots in the scheduler
        self._budget_used = 0
        self._proc = None
        self._conn = None
        self._reader: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        from transformers import AutoTokenizer

        # Spawn, not fork: the core already runs gRPC threads, which a fork would copy.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=worker_main, args=(child, self.name, self.path, self.options),
                                 name=f"genapi-engine-{self.name}", daemon=True)
        self._proc.start()
        child.close()
        self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, self.path)
        try:
            kind, info = await asyncio.to_thread(self._conn.recv)
        except EOFError:
            raise EngineUnavailable(f"the engine process for {self.name!r} died while loading") from None
        if kind != "ready":
            raise EngineUnavailable(info)
        self.context_length, self.vocab_size = info["context_length"], info["vocab_size"]
        self._reader = threading.Thread(target=self._read, name=f"engine-reader-{self.name}", daemon=True)
        self._reader.start()

    async def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._send(("stop",))
        except OSError:
            pass
        await asyncio.to_thread(self._proc.join, 10)
        if self._proc.is_alive():
            self._proc.kill()

    def ready(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._reader is not None \
            and self._reader.is_alive()

    # ---- requests --------------------------------------------------------------
    def generate(self, request: GenerationRequest):
        """Admits the request now (EngineOverloaded when the queue or the token budget is
        full) and returns the async iterator of its events."""
        if not self.ready():
            raise EngineError(f"the engine process for {self.name!r} is not running")
        budget = len(request.prompt_ids) + request.max_tokens * request.n
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), budget)
        with self._lock:
            if self._pending >= self.max_queue:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(f"{self.name}: request queue is full ({self.max_queue} waiting)")
            # A request larger than the whole budget still runs when nothing else does.
            if self._budget_used and self._budget_used + budget > self.max_budget:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(
                    f"{self.name}: token budget exhausted ({self._budget_used} of {self.max_budget} in use)")
            self._pending += 1
            self._budget_used += budget
            self._streams[request.request_id] = stream
        self._send(("request", request))
        return self._events(request.request_id, stream.queue)

    async def _events(self, request_id: str, queue: asyncio.Queue):
        finished = False
        try:
            while (events := await queue.get()) is not None:
                if isinstance(events, Exception):
                    raise events
                for ev in events:
                    yield ev
            finished = True
        finally:
            if not finished:  # consumer went away (cancelled RPC, closed iterator)
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        try:
            self._send(("abort", request_id))
        except OSError:  # engine gone: nothing left to abort
            pass

    def stats(self) -> EngineStats:
        with self._lock:
            s = EngineStats(**vars(self._stats))
            s.queued_requests = self._pending
            s.budget_tokens_used = self._budget_used
        return s

    # ---- the pipe --------------------------------------------------------------
    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _read(self) -> None:
        """Reader thread: one message per scheduler step."""
        try:
            while True:
                _, events, ended, admitted, active, slots_used = self._conn.recv()
                self._dispatch(events, ended, admitted, active, slots_used)
        except (EOFError, OSError):
            pass
        log.error("engine process for %s exited (code %s); failing its requests", self.name, self._proc.exitcode)
        with self._lock:
            lost = list(self._streams)
        self._dispatch({}, {rid: "the engine process exited" for rid in lost}, [], 0, 0)

    def _dispatch(self, events: dict, ended: dict, admitted: list, active: int, slots_used: int) -> None:
        with self._lock:
            self._stats.active_sequences, self._stats.cache_slots_used = active, slots_used
            for rid in admitted:
                if (st := self._streams.get(rid)) and not st.admitted:
                    st.admitted = True
                    self._pending -= 1
            finished = {rid: self._streams.pop(rid, None) for rid in ended}
            for rid, st in finished.items():
                if st is None:
                    continue
                self._budget_used -= st.budget
                if not st.admitted:
                    self._pending -= 1
                if ended[rid] == "finished":
                    self._stats.requests_finished += 1
                else:
                    self._stats.requests_aborted += 1
            live = {rid: self._streams.get(rid) or finished.get(rid) for rid in events}
        for rid, evs in events.items():
            if st := live[rid]:
                st.loop.call_soon_threadsafe(st.queue.put_nowait, evs)
        for rid, st in finished.items():
            if st is None:
                continue
            if ended[rid] not in ("finished", "aborted"):
                st.loop.call_soon_threadsafe(st.queue.put_nowait, EngineError(ended[rid]))
            st.loop.call_soon_threadsafe(st.queue.put_nowait, None)
