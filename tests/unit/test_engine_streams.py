"""The torch engine's request streams, parent side, without an engine process: a request
lives exactly as long as its caller holds its stream (issue 18 item 1).

The pipe is replaced by a list of the messages sent; scheduler steps are fed in by hand.
"""
from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("torch")

from server.engines.base import FinishEvent, GenerationRequest, TextEvent, close_events  # noqa: E402
from server.engines.faults import FaultInjectingEngine  # noqa: E402
from server.engines.torch.engine import TorchEngine  # noqa: E402
from server.engines.worker import Abort, Step, Submit  # noqa: E402


def engine() -> tuple[TorchEngine, list]:
    eng = TorchEngine("tiny", "/nowhere", {"max_batch": 4})
    sent: list = []
    eng._send = sent.append
    eng.ready = lambda: True
    return eng, sent


def request(rid: str = "r1") -> GenerationRequest:
    return GenerationRequest(rid, [1, 2, 3], max_tokens=10)


def kinds(sent) -> list[str]:
    return [type(m).__name__ for m in sent]


def test_closing_a_stream_never_iterated_aborts_its_request_once():
    eng, sent = engine()

    async def run():
        stream = eng.generate(request())
        stream.close()  # the caller left before reading anything (cancel at `started`)
        stream.close()
        await close_events(stream)
        s = eng.stats()
        assert s.budget_tokens_used == 13  # until the scheduler says the request ended
        eng._on_step(Step(ended={"r1": "aborted"}))
    asyncio.run(run())
    assert kinds(sent) == ["Submit", "Abort"] and sent[1] == Abort("r1")
    s = eng.stats()
    assert (s.queued_requests, s.budget_tokens_used, s.requests_aborted, s.requests_finished) == (0, 0, 1, 0)


def test_a_stream_closed_mid_way_aborts_once_and_a_finished_one_not_at_all():
    eng, sent = engine()

    async def run():
        a, b = eng.generate(request("a")), eng.generate(request("b"))
        eng._on_step(Step(events={"a": [TextEvent(0, "x", 1)], "b": [TextEvent(0, "y", 1), FinishEvent(0, "length", 1)]},
                          ended={"b": "finished"}, admitted=["a", "b"], active_sequences=1, cache_slots_used=1))
        assert (await a.__anext__()).text == "x"
        await close_events(a)
        assert [type(e).__name__ async for e in b] == ["TextEvent", "FinishEvent"]
        await close_events(b)  # ended in the engine: nothing to abort
    asyncio.run(run())
    assert kinds(sent) == ["Submit", "Submit", "Abort"] and sent[2] == Abort("a")
    assert isinstance(sent[0], Submit) and sent[0].request.request_id == "a"


def test_an_abort_for_a_request_that_already_ended_is_not_sent():
    eng, sent = engine()

    async def run():
        stream = eng.generate(request())
        eng._on_step(Step(ended={"r1": "aborted"}))  # e.g. the engine process went away
        await eng.abort("r1")
        await close_events(stream)
    asyncio.run(run())
    assert kinds(sent) == ["Submit"]


def test_the_fault_wrapper_passes_closing_through_even_before_iteration():
    eng, sent = engine()
    wrapped = FaultInjectingEngine(eng, {"first_token_delay_s": 5})

    async def run():
        await close_events(wrapped.generate(request()))
    asyncio.run(run())
    assert kinds(sent) == ["Submit", "Abort"]


def test_a_constrained_stream_is_ready_once_its_grammar_compiled_or_refused():
    from server.engines.base import Constraint, EngineInvalidRequest, wait_ready
    from server.engines.worker import Rejected

    eng, sent = engine()

    async def run():
        ok = eng.generate(GenerationRequest("ok", [1], max_tokens=4, constraint=Constraint("json_object")))
        bad = eng.generate(GenerationRequest("bad", [1], max_tokens=4, constraint=Constraint("regex", "(")))
        free = eng.generate(request("free"))
        await wait_ready(free)  # unconstrained: at once
        eng._on_step(Step(accepted=["ok"], ended={"bad": Rejected("no good", "response_format")}))
        await wait_ready(ok)
        with pytest.raises(EngineInvalidRequest) as ei:
            await wait_ready(bad)
        assert ei.value.param == "response_format" and str(ei.value) == "no good"
        eng._on_step(Step(events={"ok": [FinishEvent(0, "stop", 1)]}, ended={"ok": "finished", "free": "aborted"}))
        assert [e.reason async for e in ok] == ["stop"]
        for s in (ok, bad, free):
            await close_events(s)
    asyncio.run(run())
    assert kinds(sent) == ["Submit"] * 3  # nothing left to abort
    assert eng.stats().requests_rejected == 1


def test_take_ready_returns_what_piled_up_and_the_error_after_it_comes_next():
    eng, _ = engine()

    async def run():
        s = eng.generate(request("a"))
        assert s.take_ready() == []
        for i in range(3):  # three steps arrived while the reader was busy
            eng._on_step(Step(events={"a": [TextEvent(0, str(i), 1)]}, admitted=["a"] if i == 0 else []))
        eng._on_step(Step(ended={"a": "the engine process exited"}))
        await asyncio.sleep(0)  # the reader thread's one wake-up per step is delivered
        first = await s.__anext__()
        assert [first.text] + [e.text for e in s.take_ready()] == ["0", "1", "2"]
        assert s.take_ready() == []
        with pytest.raises(Exception, match="engine process exited"):
            await s.__anext__()
        with pytest.raises(StopAsyncIteration):
            await s.__anext__()
        await close_events(s)
    asyncio.run(run())
