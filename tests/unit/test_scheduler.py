"""The torch scheduler driven in-process over a pipe, with the embedded tiny model.

Fault injection only: a runner wrapper makes the prefill of one marked prompt raise
(reliability plan F3, poison request); everything else is the real scheduler and model.
"""
from __future__ import annotations

import multiprocessing
import threading

import pytest

pytest.importorskip("torch")

from server.engines.base import FinishEvent, GenerationRequest, SamplingParams, TextEvent  # noqa: E402
from server.engines.torch.scheduler import Scheduler  # noqa: E402
from server.engines.worker import Abort, Step, Stop, Submit  # noqa: E402

from ..conftest import TINY_MODEL  # noqa: E402

POISON = 7  # a prompt containing this token id makes the prefill raise
MAX_BATCH = 4


class PoisonedPrefill:
    """The real runner, except that prefilling a prompt that holds POISON raises."""

    def __init__(self, inner):
        self.inner = inner

    def prefill(self, slots, prompts, media=None):
        if any(POISON in p for p in prompts):
            raise RuntimeError("poisoned prompt")
        return self.inner.prefill(slots, prompts, media)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Driver:
    """Runs a Scheduler on a thread; sends requests and collects step messages."""

    def __init__(self, path=TINY_MODEL, **options):
        self.scheduler = Scheduler("tiny", str(path), {"max_batch": MAX_BATCH, "device": "cpu", **options})
        self.scheduler.load()
        self.scheduler.runner = PoisonedPrefill(self.scheduler.runner)
        self.conn, child = multiprocessing.Pipe()
        self.thread = threading.Thread(target=self.scheduler.run, args=(child,), daemon=True)
        self.thread.start()
        self.events: dict[str, list] = {}
        self.ended: dict[str, str] = {}
        self.admitted_at: dict[str, int] = {}  # request id -> tokens of `watch` by then
        self.watch = ""

    def submit(self, request_id: str, prompt: list[int], max_tokens: int, n: int = 1, media=(),
               sampling: SamplingParams | None = None) -> None:
        sampling = sampling or SamplingParams(temperature=0.0)  # greedy
        self.conn.send(Submit(GenerationRequest(request_id, prompt, max_tokens, n=n, ignore_eos=True,
                                                sampling=sampling, media=list(media))))

    def ascii_only(self) -> SamplingParams:
        """Greedy onto the token "a": every decode step's token is whole text, so no
        step's event is held back by the detokenizer (a token that is part of a UTF-8
        character is sent with the next one, and would shift counts by a step)."""
        a = self.scheduler.tokenizer.convert_tokens_to_ids("a")
        return SamplingParams(temperature=0.0, logit_bias={a: 100.0})

    def pump_until(self, done, timeout_s: float = 30) -> None:
        while not done():
            assert self.conn.poll(timeout_s), "the scheduler went quiet"
            step = self.conn.recv()
            assert isinstance(step, Step)
            for rid in step.admitted:
                self.admitted_at[rid] = self.completion_tokens(self.watch)
            for rid, evs in step.events.items():
                self.events.setdefault(rid, []).extend(evs)
            self.ended.update(step.ended)

    def wait_ended(self, request_id: str) -> str:
        self.pump_until(lambda: request_id in self.ended)
        return self.ended[request_id]

    def completion_tokens(self, request_id: str) -> int:
        return sum(e.num_tokens for e in self.events.get(request_id, []))

    def texts(self, request_id: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for e in self.events[request_id]:
            if isinstance(e, TextEvent):
                out[e.choice] = out.get(e.choice, "") + e.text
        return out

    def idle(self) -> bool:
        sch = self.scheduler
        return not sch._active and not sch._chunking and sorted(sch._free_slots) == list(range(MAX_BATCH))

    def stop(self) -> None:
        self.conn.send(Stop())
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
    assert driver.idle()


# ---- chunked prefill ------------------------------------------------------------------

LONG_PROMPT = [3 + (37 * i) % 4000 for i in range(61)]
CHUNK = 8


@pytest.fixture(scope="module")
def whole():
    d = Driver(prefill_chunk=0)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def chunked():
    d = Driver(prefill_chunk=CHUNK)
    yield d
    d.stop()


def test_chunked_prefill_generates_what_a_whole_prefill_does(whole, chunked):
    whole.submit("w", LONG_PROMPT, max_tokens=12, n=2)
    chunked.submit("c", LONG_PROMPT, max_tokens=12, n=2)
    assert whole.wait_ended("w") == chunked.wait_ended("c") == "finished"
    expected = whole.texts("w")
    assert expected[0] and expected[0] == expected[1]  # greedy: both choices alike
    assert chunked.texts("c") == expected
    assert chunked.completion_tokens("c") == 24


def test_running_streams_keep_decoding_between_chunks(chunked):
    chunked.watch = "running"
    chunked.submit("running", [1, 40, 41, 42], max_tokens=150, sampling=chunked.ascii_only())
    chunked.pump_until(lambda: chunked.completion_tokens("running") >= 2)
    chunked.submit("long", LONG_PROMPT, max_tokens=2)
    chunked.pump_until(lambda: "long" in chunked.events)  # its first token
    # 61 prompt tokens in chunks of 8: a decode step for "running" after each of the
    # first 7 chunks (the 8th one ends in the long request's first token).
    assert chunked.completion_tokens("running") - chunked.admitted_at["long"] >= 7
    assert chunked.wait_ended("long") == chunked.wait_ended("running") == "finished"


def test_an_abort_during_chunked_prefill_frees_its_slots(chunked):
    chunked.submit("dropped", LONG_PROMPT * 16, max_tokens=5, n=2)  # 122 chunks
    chunked.pump_until(lambda: "dropped" in chunked.admitted_at)
    chunked.conn.send(Abort("dropped"))
    assert chunked.wait_ended("dropped") == "aborted"
    assert "dropped" not in chunked.events  # aborted before its prompt was in
    assert chunked.idle()
