"""The default engine: Hugging Face checkpoints on PyTorch (CPU or CUDA) with continuous
batching.

The model and its scheduler live in a child process (`scheduler.py`); this side, in the
core's event loop, keeps the chat tokenizer, does admission control (bounded queue,
token budget), sends requests and aborts down a pipe, and hands each step's events to
the requests' asyncio queues from one reader thread.

Admission counts places, not the scheduler's queue: a request holds a slot place when its
choices fit in the `max_batch` slots beside every request already holding one (and none
waits before it), else it waits, and at most `max_queue` requests wait; when a request
ends, the waiting ones take its place in order. A place is taken (`reserve`) before the
request is templated and tokenized, so a full engine refuses at once.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from ..base import (
    observe,
    BudgetCharge,
    ChatModelInfo,
    EngineBase,
    EngineError,
    EngineInvalidRequest,
    EngineOverloaded,
    EngineStats,
    GenerationRequest,
    Reservation,
)
from ..worker import Abort, Rejected, Step, Submit, WorkerProcess
from .scheduler import Scheduler

log = logging.getLogger("genapi.engine.torch")

#: Queued on a constrained request's stream once its grammar compiled (see `ready`).
_ACCEPTED = object()


class _Place(Reservation):
    """A request's admission place: holding slots (`slotted`) or waiting for them."""

    slotted = False


@dataclass
class _Stream:
    """What this side keeps of a request until the scheduler says it ended."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    place: _Place
    charge: BudgetCharge
    abort_sent: bool = False
    submitted: float = field(default_factory=time.monotonic)  # for the queue-time metric


class RequestStream:
    """The events of one engine request (an async iterator), tied to the request's life:
    `close()` (or `aclose()`) aborts the request unless it already ended, whether or not
    iteration ever started, and at most once. The caller closes it when it is done with
    the request, however it got there (finished, cancelled, failed). `ready()` returns
    once a constrained request's grammar compiled (at once for the others) and raises
    EngineInvalidRequest when it did not."""

    def __init__(self, engine: "TorchEngine", request_id: str, queue: asyncio.Queue, constrained: bool = False):
        self._engine = engine
        self.request_id = request_id
        self._queue = queue
        self._buffer: collections.deque = collections.deque()
        self._ended = False  # the engine said the request ended (finished or failed)
        self._error: Exception | None = None  # what ended it, taken by take_ready, raised after its events
        self._accepted = not constrained

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._buffer:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._ended:
                raise StopAsyncIteration
            self._take(await self._queue.get())
        return self._buffer.popleft()

    def take_ready(self) -> list:
        """The events already here, without waiting (Generator streams may have it: the
        core sends them together when it fell behind). An error or the end that follows
        them is reported by the next `__anext__`."""
        while self._error is None and not self._ended:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if isinstance(item, Exception):
                self._ended = True
                self._error = item
            else:
                self._take(item)
        out = list(self._buffer)
        self._buffer.clear()
        return out

    async def ready(self) -> None:
        while not (self._accepted or self._ended):
            self._take(await self._queue.get())

    def _take(self, item) -> None:
        if item is None:
            self._ended = True
        elif item is _ACCEPTED:
            self._accepted = True
        elif isinstance(item, Exception):
            self._ended = True
            raise item
        else:
            self._buffer.extend(item)

    def close(self) -> None:
        """Synchronous, so it also runs in a `finally` under cancellation."""
        if not self._ended:
            self._ended = True
            self._engine.abort_now(self.request_id)

    async def aclose(self) -> None:
        self.close()


class TorchEngine(EngineBase):
    """Chat (the Generator capability) on a Hugging Face causal LM."""

    def __init__(self, name: str, path: str, options: dict | None = None):
        self.name = name
        self.path = path
        self.options = dict(options or {})
        self.max_batch = int(self.options.get("max_batch", 32))
        self.max_queue = int(self.options.get("max_queue", 256))
        self.max_budget = int(self.options.get("max_budget_tokens", 1_000_000))
        self.chat_info: ChatModelInfo | None = None
        self._stats = EngineStats(cache_slots_total=self.max_batch)
        self._lock = threading.Lock()  # guards the counters, places and _streams
        self._streams: dict[str, _Stream] = {}
        self._slotted = 0  # choices of the requests holding slot places
        self._waiting: dict[_Place, None] = {}  # places waiting for slots, oldest first
        self._budget_used = 0
        self._stopping = False  # stop() was called: the process exiting is expected
        self._worker = WorkerProcess(name, path, self.options, Scheduler, self._on_step, self._on_exit)

    # ---- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        from transformers import AutoTokenizer

        info, tokenizer = await asyncio.gather(
            self._worker.start(), asyncio.to_thread(AutoTokenizer.from_pretrained, self.path))
        media, processor = tuple(info.get("media") or ()), None
        if media:  # a vision-language checkpoint: its processor expands images in the core
            from ...chat.processors import load_processor

            processor = await asyncio.to_thread(load_processor, self.path)
        self.chat_info = ChatModelInfo(tokenizer, info["context_length"], info["vocab_size"], media, processor)

    async def stop(self) -> None:
        self._stopping = True
        await self._worker.stop()

    def ready(self) -> bool:
        return self._worker.alive()

    # ---- requests --------------------------------------------------------------
    def reserve(self, n: int = 1, least_tokens: int = 0) -> Reservation:
        """An admission place for a request of `n` choices (Generator.reserve):
        EngineOverloaded when `max_queue` requests already wait for slots and this one
        would wait too, or when the budget in use plus `least_tokens` exceeds the budget."""
        with self._lock:
            return self._reserve(n, least_tokens)

    def _reserve(self, n: int, least_tokens: int) -> _Place:
        if n > self.max_batch:  # could never get its slots
            raise EngineInvalidRequest(f"n={n} is above {self.name}'s {self.max_batch} batch slots")
        slot_free = not self._waiting and self._slotted + n <= self.max_batch
        if not slot_free and len(self._waiting) >= self.max_queue:
            raise self._refuse(f"request queue is full ({self.max_queue} waiting)")
        self._check_budget(least_tokens)
        place = _Place(n, self._give_back)
        if slot_free:
            place.slotted = True
            self._slotted += n
        else:
            self._waiting[place] = None
        return place

    def _check_budget(self, tokens: int) -> None:
        # A request larger than the whole budget still runs when nothing else does.
        if self._budget_used and self._budget_used + tokens > self.max_budget:
            raise self._refuse(f"token budget exhausted ({self._budget_used} of {self.max_budget} in use)")

    def _refuse(self, why: str) -> EngineOverloaded:
        self._stats.requests_rejected += 1
        return EngineOverloaded(f"{self.name}: {why}")

    def _give_back(self, place: _Place) -> None:
        with self._lock:
            self._leave(place)

    def _leave(self, place: _Place) -> None:
        """Under the lock: `place` is free again; the oldest waiting ones that now fit
        take slot places (in order: the scheduler admits first come, first served)."""
        if place.slotted:
            place.slotted = False
            self._slotted -= place.n
        elif place in self._waiting:
            del self._waiting[place]
        else:
            return  # left already
        while self._waiting:
            head = next(iter(self._waiting))
            if self._slotted + head.n > self.max_batch:
                break
            del self._waiting[head]
            head.slotted = True
            self._slotted += head.n

    def generate(self, request: GenerationRequest, reservation: Reservation | None = None) -> RequestStream:
        """Admits the request now, in `reservation`'s place or a new one (EngineOverloaded
        when the queue or the token budget is full), sends it to the scheduler and
        returns its RequestStream. The request lives until the scheduler ends it or the
        stream is closed (which aborts it)."""
        charge = BudgetCharge.of(request)
        with self._lock:
            place = reservation
            try:
                if not self.ready():
                    raise EngineError(f"the engine process for {self.name!r} is not running")
                if place is None:
                    place = self._reserve(request.n, 0)
                self._check_budget(charge.tokens)
            except BaseException:
                if place is not None:  # refused: its place is free again
                    place.take()
                    self._leave(place)
                raise
            place.take()
            self._budget_used += charge.tokens
            stream = _Stream(asyncio.get_running_loop(), asyncio.Queue(), place, charge)
            self._streams[request.request_id] = stream
        try:
            self._send(Submit(request))
        except OSError:  # the process died just now: take the request back
            with self._lock:
                if self._streams.pop(request.request_id, None) is not None:
                    self._end(stream)
            raise EngineError(f"the engine process for {self.name!r} is not running") from None
        return RequestStream(self, request.request_id, stream.queue, request.constraint is not None)

    def _end(self, stream: _Stream) -> None:
        """Under the lock: the request is over; its place and budget are free."""
        self._budget_used -= stream.charge.tokens
        self._leave(stream.place)

    def abort_now(self, request_id: str) -> None:
        """Asks the scheduler to drop the request (its slots are freed at the next step).
        Sends one Abort per live request, however often it is called; nothing for a
        request that already ended."""
        with self._lock:
            st = self._streams.get(request_id)
            if st is None or st.abort_sent:
                return
            st.abort_sent = True
        try:
            self._send(Abort(request_id))
        except OSError:  # engine gone: its exit fails the request
            pass

    async def abort(self, request_id: str) -> None:
        self.abort_now(request_id)

    def stats(self) -> EngineStats:
        with self._lock:
            s = EngineStats(**vars(self._stats))
            s.queued_requests = len(self._waiting)
            s.budget_tokens_used = self._budget_used
        return s

    # ---- the engine process ------------------------------------------------------
    def _send(self, msg) -> None:
        self._worker.send(msg)

    def _on_step(self, step: Step) -> None:
        """Reader thread: one message per scheduler step."""
        if step.decode_seconds:
            observe("step", self.name, step.decode_seconds)
        now = time.monotonic()
        for rid in step.admitted:
            if st := self._streams.get(rid):
                observe("queue", self.name, now - st.submitted)
        self._dispatch(step.events, step.ended, step.active_sequences, step.cache_slots_used, step.accepted)

    def _on_exit(self) -> None:
        with self._lock:
            lost = list(self._streams)
        if self._stopping:
            log.info("engine process for %s stopped (%d request(s) still open)", self.name, len(lost))
        else:
            log.error("engine process for %s exited (code %s); failing its requests",
                      self.name, self._worker.exitcode)
        self._dispatch({}, {rid: "the engine process exited" for rid in lost}, 0, 0)

    def _dispatch(self, events: dict, ended: dict, active: int, slots_used: int, accepted: list = ()) -> None:
        with self._lock:
            self._stats.active_sequences, self._stats.cache_slots_used = active, slots_used
            for rid, evs in events.items():  # requests charged by use grow with their output
                if st := self._streams.get(rid):
                    self._budget_used += st.charge.add(sum(ev.num_tokens for ev in evs))
            finished = {rid: self._streams.pop(rid, None) for rid in ended}
            for rid, st in finished.items():
                if st is None:
                    continue
                self._end(st)
                if ended[rid] == "finished":
                    self._stats.requests_finished += 1
                elif isinstance(ended[rid], Rejected):
                    self._stats.requests_rejected += 1
                else:
                    self._stats.requests_aborted += 1
            live = {rid: self._streams.get(rid) or finished.get(rid) for rid in [*events, *accepted]}
        # One wake-up of each event loop per step, not one per request: at a few hundred
        # requests per step the self-pipe writes alone cost more than the events.
        puts: dict[asyncio.AbstractEventLoop, list] = {}
        for rid in accepted:
            if st := live[rid]:
                puts.setdefault(st.loop, []).append((st.queue, _ACCEPTED))
        for rid, evs in events.items():
            if st := live[rid]:
                puts.setdefault(st.loop, []).append((st.queue, evs))
        for rid, st in finished.items():
            if st is None:
                continue
            put = puts.setdefault(st.loop, []).append
            outcome = ended[rid]
            if isinstance(outcome, Rejected):
                put((st.queue, EngineInvalidRequest(outcome.message, outcome.param)))
            elif outcome not in ("finished", "aborted"):
                put((st.queue, EngineError(outcome)))
            put((st.queue, None))
        for loop, items in puts.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that loop is closed (shutdown): nobody is waiting
                pass


def _put_all(items: list) -> None:
    """In the event loop: each (queue, item), in order."""
    for queue, item in items:
        queue.put_nowait(item)
