"""The torch scheduler driven in-process over a pipe, with the embedded tiny model.

Fault injection only: a runner wrapper makes the prefill of one marked prompt raise
(reliability plan F3, poison request); everything else is the real scheduler and model.
"""
from __future__ import annotations

import multiprocessing
import threading

import pytest

pytest.importorskip("torch")

from server.engines.base import FinishEvent, GenerationRequest  # noqa: E402
from server.engines.scheduler import Scheduler  # noqa: E402

from ..conftest import TINY_MODEL  # noqa: E402

POISON = 7  # a prompt containing this token id makes the prefill raise
MAX_BATCH = 4


class PoisonedPrefill:
    """The real runner, except that prefilling a prompt that holds POISON raises."""

    def __init__(self, inner):
        self.inner = inner

    def prefill(self, slots, prompts):
        if any(POISON in p for p in prompts):
            raise RuntimeError("poisoned prompt")
        return self.inner.prefill(slots, prompts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Driver:
    """Runs a Scheduler on a thread; sends requests and collects step messages."""

    def __init__(self):
        self.scheduler = Scheduler("tiny", str(TINY_MODEL), {"max_batch": MAX_BATCH, "device": "cpu"})
        self.scheduler.load()
        self.scheduler.runner = PoisonedPrefill(self.scheduler.runner)
        self.conn, child = multiprocessing.Pipe()
        self.thread = threading.Thread(target=self.scheduler.run, args=(child,), daemon=True)
        self.thread.start()
        self.events: dict[str, list] = {}
        self.ended: dict[str, str] = {}

    def submit(self, request_id: str, prompt: list[int], max_tokens: int) -> None:
        self.conn.send(("request", GenerationRequest(request_id, prompt, max_tokens, ignore_eos=True)))

    def pump_until(self, done, timeout_s: float = 30) -> None:
        while not done():
            assert self.conn.poll(timeout_s), "the scheduler went quiet"
            kind, events, ended, *_ = self.conn.recv()
            assert kind == "step"
            for rid, evs in events.items():
                self.events.setdefault(rid, []).extend(evs)
            self.ended.update(ended)

    def wait_ended(self, request_id: str) -> str:
        self.pump_until(lambda: request_id in self.ended)
        return self.ended[request_id]

    def completion_tokens(self, request_id: str) -> int:
        return sum(e.num_tokens for e in self.events.get(request_id, []))

    def stop(self) -> None:
        self.conn.send(("stop",))
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def driver():
    d = Driver()
    yield d
    d.stop()


def test_a_poisoned_prefill_fails_only_its_request(driver):
    driver.submit("running", [1, 20, 21, 22], max_tokens=40)
    driver.pump_until(lambda: driver.completion_tokens("running") >= 2)  # decoding, not being prefilled
    driver.submit("poison", [1, 20, POISON, 22], max_tokens=5)
    assert driver.wait_ended("poison") == "generation failed: RuntimeError"
    assert driver.wait_ended("running") == "finished"
    assert driver.completion_tokens("running") == 40
    assert isinstance(driver.events["running"][-1], FinishEvent)


def test_the_engine_serves_and_holds_no_slot_afterwards(driver):
    driver.submit("after", [1, 30, 31], max_tokens=8)
    assert driver.wait_ended("after") == "finished"
    assert driver.completion_tokens("after") == 8
    sch = driver.scheduler
    assert sch._active == [] and sorted(sch._free_slots) == list(range(MAX_BATCH))
