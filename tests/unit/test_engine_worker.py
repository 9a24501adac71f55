"""The engine process's pipe, parent side: sending never blocks the caller (the core's
event loop), even while the child reads nothing and the pipe is full. And the child's end:
once its loop stops it exits without the interpreter's teardown."""
from __future__ import annotations

import asyncio
import atexit
import os
import threading

from server.engines.worker import Abort, Step, Stop, WorkerProcess

from ..conftest import wait_until


class SlowReader:
    """Child loop that reads nothing until `go` exists (a step that runs long), then
    counts the messages up to Stop and reports the count and the last id."""

    def __init__(self, name, path, options):
        self.go = options["go"]

    def load(self) -> dict:
        return {}

    def run(self, conn) -> None:
        assert wait_until(lambda: os.path.exists(self.go), timeout_s=120, interval_s=0.02)
        count, last = 0, ""
        while not isinstance(msg := conn.recv(), Stop):
            count, last = count + 1, msg.request_id
        conn.send(Step(ended={"count": str(count), "last": last}))


def test_sends_return_while_the_child_reads_nothing_and_arrive_in_order(tmp_path):
    go = tmp_path / "go"
    got: list = []
    worker = WorkerProcess("slow", "", {"go": str(go)}, SlowReader, got.append, lambda: None)
    asyncio.run(worker.start())
    n = 400  # 400 x 4 KiB: far more than a pipe holds
    sent = threading.Event()

    def send_all():
        for i in range(n):
            worker.send(Abort(f"{i:04d}" + "x" * 4096))
        sent.set()
    threading.Thread(target=send_all, daemon=True).start()
    try:
        assert sent.wait(60), "send() blocked on a full pipe"  # the child has read nothing yet
    finally:
        go.touch()
        asyncio.run(worker.stop(30))
    assert got == [Step(ended={"count": str(n), "last": f"{n - 1:04d}" + "x" * 4096})]


class TornDown:
    """Child loop that records, from an atexit handler, whether the interpreter's teardown
    ran after the loop stopped."""

    def __init__(self, name, path, options):
        self.marker = options["marker"]

    def load(self) -> dict:
        atexit.register(lambda: open(self.marker, "w").close())
        return {}

    def run(self, conn) -> None:
        while not isinstance(conn.recv(), Stop):
            pass


def test_the_child_exits_without_the_interpreters_teardown(tmp_path):
    """Teardown runs C++ destructors under daemon threads still in native code (xgrammar
    building its compiler just after load): stopping a core right after it loaded aborted
    its engine process about one time in eight ("terminate called without an active
    exception"). The child skips it, so no atexit handler runs there."""
    marker = tmp_path / "teardown-ran"
    worker = WorkerProcess("torn", "", {"marker": str(marker)}, TornDown, lambda _: None, lambda: None)
    asyncio.run(worker.start())
    asyncio.run(worker.stop(30))
    assert worker.exitcode == 0
    assert not marker.exists()
