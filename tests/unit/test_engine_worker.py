"""The engine process's pipe, parent side: sending never blocks the caller (the core's
event loop), even while the child reads nothing and the pipe is full. And the child's end:
once its loop stops it calls the loop's close()."""
from __future__ import annotations

import asyncio
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


class Closes:
    """Child loop with a close(): it marks, once its run has returned, that it was called."""

    def __init__(self, name, path, options):
        self.marker = options["marker"]
        self.stopped = False

    def load(self) -> dict:
        return {}

    def run(self, conn) -> None:
        while not isinstance(conn.recv(), Stop):
            pass
        self.stopped = True

    def close(self) -> None:
        with open(self.marker, "w") as f:
            f.write("after run" if self.stopped else "before run returned")


def test_the_child_closes_its_loop_once_the_loop_has_stopped(tmp_path):
    """close() is where a loop waits for its own threads' native work (Scheduler.close:
    xgrammar's compile threads) before the interpreter's teardown, which aborted an engine
    process stopped just after it loaded ("terminate called without an active exception")."""
    marker = tmp_path / "closed"
    worker = WorkerProcess("closes", "", {"marker": str(marker)}, Closes, lambda _: None, lambda: None)
    asyncio.run(worker.start())
    asyncio.run(worker.stop(30))
    assert worker.exitcode == 0
    assert marker.read_text() == "after run"
