"""The torch engine's admission control, parent side, without an engine process: what
`max_queue` counts (only requests waiting with no slot free), places taken before a
request is templated (`reserve`), and the token budget of requests with and without a
max_tokens bound.

The pipe is replaced by a list of the messages sent; scheduler steps are fed in by hand.
"""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")

from server.engines.base import EngineInvalidRequest, EngineOverloaded, GenerationRequest, TextEvent  # noqa: E402
from server.engines.torch.engine import TorchEngine  # noqa: E402
from server.engines.worker import Step  # noqa: E402


class Harness:
    """A TorchEngine with its pipe replaced, and one event loop for the test (the engine
    hands events to the loop its requests were admitted on)."""

    def __init__(self, **options):
        self.eng = TorchEngine("tiny", "/nowhere", options)
        self.eng._send = lambda msg: None
        self.eng.ready = lambda: True
        self.loop = asyncio.new_event_loop()

    def admit(self, *reqs: GenerationRequest, place=None) -> None:
        async def run():
            for r in reqs:
                self.eng.generate(r, place)
        self.loop.run_until_complete(run())

    def end(self, *rids: str) -> None:
        self.eng._on_step(Step(ended={rid: "finished" for rid in rids}))

    def stats(self):
        return self.eng.stats()


@pytest.fixture
def harness():
    made = []

    def make(**options) -> Harness:
        made.append(Harness(**options))
        return made[-1]
    yield make
    for h in made:
        h.loop.close()


def request(rid: str, n: int = 1, max_tokens: int = 10, **kw) -> GenerationRequest:
    return GenerationRequest(rid, [1, 2, 3], max_tokens=max_tokens, n=n, **kw)


def test_max_queue_counts_only_requests_that_find_no_free_slot(harness):
    """Four slots and a queue of one: a burst of five is admitted before the scheduler has
    taken any of them (four get slots, one waits), the sixth is refused."""
    h = harness(max_batch=4, max_queue=1)
    h.admit(*(request(f"r{i}") for i in range(5)))
    assert h.stats().queued_requests == 1
    with pytest.raises(EngineOverloaded, match="queue is full"):
        h.admit(request("r5"))
    s = h.stats()
    assert (s.queued_requests, s.requests_rejected) == (1, 1)


def test_a_request_ending_gives_its_slot_to_the_oldest_waiting_one(harness):
    h = harness(max_batch=2, max_queue=1)
    h.admit(request("a"), request("b"), request("c"))  # c waits
    h.end("a")  # c takes a's slot: the queue is empty again
    assert h.stats().queued_requests == 0
    h.admit(request("d"))  # waits
    with pytest.raises(EngineOverloaded, match="queue is full"):
        h.admit(request("e"))
    h.end("b", "c", "d")
    assert h.stats().queued_requests == 0 and h.eng._slotted == 0


def test_choices_hold_slots_and_waiting_requests_keep_their_order(harness):
    h = harness(max_batch=4, max_queue=2)
    h.admit(request("big", n=3))
    h.admit(request("pair", n=2))  # 3 + 2 > 4: waits
    h.admit(request("one"))  # would fit, but waits behind "pair" (first come, first served)
    assert h.stats().queued_requests == 2
    with pytest.raises(EngineOverloaded):
        h.admit(request("late"))
    h.end("big")  # "pair" and "one" both fit now
    assert h.stats().queued_requests == 0 and h.eng._slotted == 3
    with pytest.raises(EngineInvalidRequest):  # more choices than slots: it could never run
        h.eng.reserve(5)


def test_a_place_is_held_from_reserve_and_given_back_when_the_request_never_comes(harness):
    """`reserve` is taken before templating: requests being templated count, and one that
    fails there (or whose caller leaves) gives its place back."""
    h = harness(max_batch=1, max_queue=1)
    first, second = h.eng.reserve(), h.eng.reserve()  # a slot place, then a waiting one
    with pytest.raises(EngineOverloaded, match="queue is full"):
        h.eng.reserve()
    second.release()
    second.release()  # idempotent
    third = h.eng.reserve()
    assert h.stats().queued_requests == 1
    first.release()  # its request failed in templating: the waiting one moves up
    assert h.stats().queued_requests == 0
    h.admit(request("c"), place=third)
    third.release()  # after generate() took it: nothing happens
    assert h.eng._slotted == 1 and h.stats().queued_requests == 0


def test_reserve_refuses_when_the_budget_cannot_hold_the_requested_max_tokens(harness):
    h = harness(max_batch=4, max_budget_tokens=20)
    h.admit(request("a"))  # 3 + 10
    with pytest.raises(EngineOverloaded, match="token budget"):
        h.eng.reserve(1, least_tokens=8)  # 13 + 8 > 20, whatever the prompt
    place = h.eng.reserve(1, least_tokens=7)
    with pytest.raises(EngineOverloaded, match="token budget"):  # the prompt makes it 13 + 3 + 7
        h.admit(request("b", max_tokens=7), place=place)
    s = h.stats()
    assert (s.requests_rejected, s.budget_tokens_used, h.eng._slotted) == (2, 13, 1)  # b's place is back


def test_a_request_without_a_max_tokens_bound_is_charged_what_it_generates(harness):
    h = harness(max_batch=4, max_budget_tokens=100)
    h.admit(request("unbounded", max_tokens=2045, charge_by_use=True), request("bounded", max_tokens=40))
    assert h.stats().budget_tokens_used == 3 + (3 + 40)  # not 3 + 2045
    h.eng._on_step(Step(events={"unbounded": [TextEvent(0, "x", 30)], "bounded": [TextEvent(0, "y", 30)]}))
    assert h.stats().budget_tokens_used == (3 + 30) + (3 + 40)
    h.eng._on_step(Step(events={"unbounded": [TextEvent(0, "x", 30)], "bounded": [TextEvent(0, "y", 10)]}))
    assert h.stats().budget_tokens_used == (3 + 60) + (3 + 40)
    with pytest.raises(EngineOverloaded, match="token budget"):  # 106 in use: nothing more fits
        h.admit(request("next", max_tokens=1))
    h.end("unbounded", "bounded")
    assert h.stats().budget_tokens_used == 0
