"""An engine's own process: spawn, pipe, typed messages, and the reader and writer threads.

Heavy engines (the torch chat scheduler; embeddings and transcription next) run their
model in a child process, so their many small torch calls never share a GIL with the
core's gRPC event loop (bench/RESULTS.md). Both sides speak the dataclasses below over a
`multiprocessing` pipe:

    parent -> child   Submit(request) | Abort(request_id) | Stop()
    child -> parent   Ready(info) | Fatal(message) | Step(events, ended, accepted, admitted, ...)

The child side is a *loop object* built in the child by a picklable factory
(`factory(name, path, options)`): it has `load() -> dict` (the info sent in `Ready`) and
`run(conn)` (reads requests, sends steps, returns on `Stop` or a closed pipe).
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from genapi import logs
from genapi.config import log_level

from .base import EngineUnavailable

log = logging.getLogger("genapi.engine.worker")


# ---- messages ----------------------------------------------------------------
@dataclass
class Submit:
    """A new request for the child (an engine request dataclass)."""

    request: Any


@dataclass
class Abort:
    request_id: str


@dataclass
class Stop:
    """Finish the current step and exit."""


@dataclass
class Ready:
    """The model is loaded; `info` describes it (context length, vocabulary, ...)."""

    info: dict


@dataclass
class Fatal:
    """Loading failed; the child exits after sending it."""

    message: str


@dataclass
class Rejected:
    """How a request ended when it was bad input found only in the engine (a grammar that
    does not compile): INVALID_ARGUMENT naming `param`."""

    message: str
    param: str | None = None


@dataclass
class Step:
    """What one engine step produced.

    events:   request id -> events of that request, in order
    ended:    request id -> "finished" | "aborted" | Rejected | the error text that failed it
    accepted: request ids with a constraint whose grammar is now ready (they wait for slots)
    admitted: request ids that got their slots in this step
    """

    events: dict[str, list] = field(default_factory=dict)
    ended: dict[str, "str | Rejected"] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)
    active_sequences: int = 0
    cache_slots_used: int = 0
    accepted: list[str] = field(default_factory=list)
    forward_passes: int = 0  # run in this step (encoder engines)
    decode_seconds: float = 0.0  # time spent in decode forward passes since the last Step (chat engines)


# ---- child side ----------------------------------------------------------------
def child_main(conn, factory: Callable, name: str, path: str, options: dict) -> None:
    """Entry point of the engine process: build and load the loop, run it, then call its
    `close()` where it has one (work on its own threads to wait for before the exit)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when this
    # process stops (a Stop message, or its end of the pipe closing).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logs.setup(log_level(), os.environ.get(logs.FORMAT_ENV, "text"))  # the core's format
    try:
        loop = factory(name, path, options)
        info = loop.load()
    except Exception as e:
        # The parent reports it in one line; the traceback is for GENAPI_LOG_LEVEL=debug.
        log.debug("could not load %s", name, exc_info=True)
        conn.send(Fatal(f"could not load model {name!r} from {path}: {type(e).__name__}: {e}"))
        return
    conn.send(Ready(info))
    loop.run(conn)
    if close := getattr(loop, "close", None):
        close()  # before the interpreter's teardown (see Scheduler.close)


# ---- parent side ---------------------------------------------------------------
class WorkerProcess:
    """The parent's handle on an engine process. `on_message` is called on the reader
    thread for every message after Ready; `on_exit` once, when the pipe closes (the child
    stopped or died)."""

    def __init__(self, name: str, path: str, options: dict, factory: Callable,
                 on_message: Callable[[Any], None], on_exit: Callable[[], None]):
        self.name = name
        self._args = (factory, name, path, options)
        self._on_message = on_message
        self._on_exit = on_exit
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()  # to the child, in order
        self._broken = False  # the writer found the pipe closed
        self._proc = None
        self._conn = None
        self._reader: threading.Thread | None = None
        self._writer: threading.Thread | None = None

    async def start(self) -> dict:
        """Spawns the process and waits for its Ready info; EngineUnavailable otherwise."""
        # Spawn, not fork: the core already runs gRPC threads, which a fork would copy.
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=child_main, args=(child, *self._args),
                                 name=f"genapi-engine-{self.name}", daemon=True)
        self._proc.start()
        child.close()
        return await asyncio.to_thread(self._await_ready)

    def _await_ready(self) -> dict:
        try:
            msg = self._conn.recv()
        except EOFError:
            raise EngineUnavailable(f"the engine process for {self.name!r} died while loading") from None
        if not isinstance(msg, Ready):
            raise EngineUnavailable(msg.message if isinstance(msg, Fatal) else f"unexpected message {msg!r}")
        self._reader = threading.Thread(target=self._read, name=f"engine-reader-{self.name}", daemon=True)
        self._reader.start()
        self._writer = threading.Thread(target=self._write, name=f"engine-writer-{self.name}", daemon=True)
        self._writer.start()
        return msg.info

    def send(self, msg) -> None:
        """Queues `msg` for the child without blocking; raises OSError when the process is
        gone. The pipe is written by a thread of its own: while the child is busy with a
        long step it reads nothing, the pipe fills, and a write would hold up the caller
        (the core's event loop: every other call, refusals included) until the step ends."""
        if self._broken or self._reader is None or not self._reader.is_alive():
            raise OSError(f"the engine process for {self.name!r} is gone")
        self._outbox.put(msg)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive() and self._reader is not None \
            and self._reader.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode if self._proc is not None else None

    async def stop(self, timeout_s: float = 10) -> None:
        if self._proc is None:
            return
        if self._writer is not None:
            self._outbox.put(Stop())  # after whatever is still queued
        else:  # stopped while loading: the child reads it once loaded
            try:
                self._conn.send(Stop())
            except OSError:
                pass
        await asyncio.to_thread(self._proc.join, timeout_s)
        if self._proc.is_alive():
            self._proc.kill()

    def _write(self) -> None:
        while not isinstance(msg := self._outbox.get(), Stop):
            try:
                self._conn.send(msg)
            except OSError:  # the child is gone: its reader sees the pipe close and fails what is left
                self._broken = True
                return
        try:
            self._conn.send(msg)
        except OSError:
            pass

    def _read(self) -> None:
        try:
            while True:
                self._on_message(self._conn.recv())
        except (EOFError, OSError):
            pass
        self._on_exit()


class WorkerEngine:
    """stop/ready/stats for an engine whose model runs in a WorkerProcess: expects
    `_worker`, `_lock`, `_stats` (EngineStats) and `_waiting` (requests not yet running);
    `_stopping` tells its exit handler that the process ending is expected."""

    async def stop(self) -> None:
        self._stopping = True
        await self._worker.stop()

    def ready(self) -> bool:
        return self._worker.alive()

    def stats(self):
        with self._lock:
            s = type(self._stats)(**vars(self._stats))
            s.queued_requests = len(self._waiting)
        return s
