"""Batch durability (reliability plan D1, D5, D7): a 500-line batch survives three kill -9
of the core (one during finalizing) and completes with every custom_id exactly once and
request_counts matching the files; an elapsed completion window expires a batch with
`batch_expired` error lines and keeps the finished ones.

The core and the shim run as separate processes here (`genapi core`, `genapi shim`), so
the core can be killed and restarted on its port while the shim stays up.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import grpc
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import ROOT, Service, wait_until
from .batch_support import CHAT, TERMINAL, assert_exactly_once, chat_line, result_lines, upload, wait_batch

LINES = 500
FINALIZE_PAUSE_S = "3"  # the core pauses in FINALIZING (test-only fault setting) so a kill lands there
# Each line decodes this many tokens (ignore_eos): 2-token lines ran 600 a second on a CI
# machine, faster than polling can catch a batch at a progress mark before it finalizes.
LINE_TOKENS = 32


class Tiers:
    """`genapi core` and `genapi shim` of one config, the core restartable."""

    def __init__(self, svc: Service):
        self.svc = svc
        self.core: subprocess.Popen | None = None
        self.shim: subprocess.Popen | None = None
        self.env = {**svc.env, "GENAPI_FAULT_BATCH_FINALIZE_PAUSE_S": FINALIZE_PAUSE_S}
        self.starts = 0

    def _spawn(self, *args) -> subprocess.Popen:
        log = open(self.svc.log_path, "a")
        return subprocess.Popen([sys.executable, "-m", "genapi", *args, "--config", str(self.svc.config)],
                                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_core(self) -> None:
        self.core = self._spawn("core", "--grpc-port", str(self.svc.grpc_port))
        self.starts += 1
        with grpc.insecure_channel(self.svc.grpc_target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)

            def serving():
                assert self.core.poll() is None, self.svc.log()[-3000:]
                try:
                    return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                        health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    return False
            assert wait_until(serving, timeout_s=180, interval_s=0.2), self.svc.log()[-3000:]

    def start_shim(self) -> None:
        self.shim = self._spawn("shim", "--port", str(self.svc.port), "--core", self.svc.grpc_target)
        import httpx

        def healthy():
            try:
                return httpx.get(f"{self.svc.base_url}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(healthy, timeout_s=120, interval_s=0.2), self.svc.log()[-3000:]

    def kill_core(self) -> None:
        os.killpg(self.core.pid, signal.SIGKILL)
        self.core.wait()

    def stop(self) -> None:
        for p in (self.shim, self.core):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("batchfaults"), "batchfaults", extra_toml="[batches]\nconcurrency = 16\n")
    t = Tiers(svc)
    try:
        t.start_core()
        t.start_shim()
        yield t
    finally:
        t.stop()


def poll(client, batch_id: str):
    """The batch, or None while the core is down (the shim answers 503 then)."""
    try:
        return client.batches.retrieve(batch_id)
    except (openai.APIStatusError, openai.APIConnectionError):
        return None


def test_batch_survives_three_core_kills_and_completes_exactly_once(tiers):
    client = tiers.svc.sdk(timeout=60)
    ids = [f"line-{i:04d}" for i in range(LINES)]
    f = upload(client, [chat_line(cid, max_tokens=LINE_TOKENS, ignore_eos=True) for cid in ids])
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    rng = random.Random()
    # Two kills at random progress points while lines run, the third during finalizing. The
    # marks stay 100 lines apart and 120 from the end: a restarted core runs lines before the
    # shim's first answer, so the batch moves on between the restart and the next poll.
    first = rng.randrange(20, 200)
    for mark in (first, rng.randrange(first + 100, LINES - 120)):
        seen = []
        assert wait_until(lambda: (b := poll(client, batch.id)) is not None and seen.append(b) is None and (
            b.request_counts.completed + b.request_counts.failed >= mark or b.status in TERMINAL),
            timeout_s=600, interval_s=0.05)
        assert seen[-1].status == "in_progress", seen[-1]
        tiers.kill_core()
        tiers.start_core()
    assert wait_until(lambda: (b := poll(client, batch.id)) is not None and b.status in {"finalizing"} | TERMINAL,
                      timeout_s=600, interval_s=0.05)
    assert client.batches.retrieve(batch.id).status == "finalizing"
    tiers.kill_core()
    tiers.start_core()
    done = wait_batch(client, batch.id, timeout_s=300)
    assert done.status == "completed", done
    out, err = assert_exactly_once(client, done, ids)
    assert not err and all(r["response"]["status_code"] == 200 for r in out)
    assert tiers.starts == 4
    # D7: the finalize that ran after the kill wrote the files once, under the same ids.
    assert [x.id for x in client.files.list(purpose="batch_output").data].count(done.output_file_id) == 1


@pytest.fixture(scope="module")
def short_window(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("expiry"), "expiry", env={"GENAPI_BATCH_WINDOW_S": "6"}).start()
    yield svc
    svc.stop()


def test_expired_batch_writes_batch_expired_lines_and_keeps_finished_ones(short_window):
    client = short_window.sdk()
    # Short lines first (some finish inside the window), then far more decode work than any
    # machine does in the 6 s window (ignore_eos keeps every long line at its full length).
    ids = [f"e{i}" for i in range(400)]
    f = upload(client, [chat_line(cid, max_tokens=2) if i < 40 else
                        chat_line(cid, max_tokens=1024, ignore_eos=True) for i, cid in enumerate(ids)])
    batch = client.batches.create(input_file_id=f.id, endpoint=CHAT, completion_window="24h")
    assert batch.expires_at - batch.created_at <= 7
    done = wait_batch(client, batch.id, timeout_s=300)
    assert done.status == "expired" and done.expired_at >= done.expires_at
    out, err = assert_exactly_once(client, done, ids)
    expired = [r for r in err if r["error"] and r["error"]["code"] == "batch_expired"]
    assert expired and all(r["response"] is None for r in expired)
    assert expired[0]["error"]["message"] == ("This request could not be executed before the completion window "
                                              "expired.")
    assert out and all(r["response"]["status_code"] == 200 for r in out)  # finished lines are kept
    assert done.request_counts.completed == len(out) and result_lines(client, done.error_file_id) == err
