"""Structured-output grammars: compilation and its cache (server/chat/grammar.py), and the
torch scheduler decoding constrained and unconstrained sequences in one batch, driven
in-process over a pipe with the embedded tiny model (real xgrammar, real model)."""
from __future__ import annotations

import json
import multiprocessing
import re
import threading

import pytest

pytest.importorskip("torch")
pytest.importorskip("xgrammar")

from transformers import AutoTokenizer  # noqa: E402

from server.chat.grammar import GrammarError, Grammars  # noqa: E402
from server.engines.base import Constraint, FinishEvent, GenerationRequest, SamplingParams, TextEvent  # noqa: E402
from server.engines.torch.scheduler import Scheduler  # noqa: E402
from server.engines.worker import Rejected, Step, Stop, Submit  # noqa: E402

from ..conftest import TINY_MODEL, wait_until  # noqa: E402

SCHEMA = json.dumps({
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "n": {"type": "integer", "minimum": 0, "maximum": 99},
                   "kind": {"enum": ["a", "b"]}},
    "required": ["name", "n", "kind"],
})


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_MODEL)


def grammars(tokenizer, **kw) -> Grammars:
    return Grammars(tokenizer, 4096, [tokenizer.eos_token_id], **kw)


def test_compiles_each_kind_and_shares_one_compilation(tokenizer):
    g = grammars(tokenizer)
    for c in (Constraint("json_object"), Constraint("json_schema", SCHEMA), Constraint("regex", r"[ab]{1,3}"),
              Constraint("ebnf", 'root ::= "yes" | "no"')):
        assert g.submit(c).result(timeout=60) is not None
    assert g.submit(Constraint("json_schema", SCHEMA)) is g.submit(Constraint("json_schema", SCHEMA))


@pytest.mark.parametrize("constraint", [
    Constraint("json_schema", "{not json"),
    Constraint("regex", "(unclosed"),
    Constraint("ebnf", "root ::= missing_rule"),
])
def test_bad_grammars_fail_with_a_reason(tokenizer, constraint):
    with pytest.raises(GrammarError, match="could not be compiled: .+"):
        grammars(tokenizer).submit(constraint).result(timeout=60)


def test_cache_is_bounded_lru(tokenizer):
    g = grammars(tokenizer, cache_size=2)
    a, b = Constraint("regex", "a+"), Constraint("regex", "b+")
    fa = g.submit(a)
    g.submit(b)
    assert g.submit(a) is fa  # a is now the most recent
    g.submit(Constraint("regex", "c+"))  # evicts b
    assert g.submit(a) is fa and len(g._cache) == 2 and ("regex", "b+") not in g._cache


def test_a_compilation_past_the_limit_is_cached_as_a_failure(tokenizer):
    g = grammars(tokenizer, timeout_s=0.05, test_delay_s=0.2)
    fut = g.submit(Constraint("regex", "x+"))
    with pytest.raises(GrammarError, match="did not compile within 0.05 s"):
        fut.result(timeout=60)
    assert g.submit(Constraint("regex", "x+")) is fut


def test_close_cancels_queued_compilations_and_waits_for_running_ones(tokenizer):
    """The engine process calls close() before its exit: teardown under a thread still in
    xgrammar's native code aborts the process."""
    g = grammars(tokenizer, threads=1, test_delay_s=0.5)
    running = g.submit(Constraint("regex", "r+"))
    assert wait_until(running.running, timeout_s=60, interval_s=0.01)
    queued = g.submit(Constraint("regex", "q+"))  # waits for the one slot
    g.close()
    assert running.done() and not running.cancelled()
    assert queued.cancelled()
    assert wait_until(lambda: not g._threads, timeout_s=5, interval_s=0.01)


def test_close_waits_no_longer_than_its_limit(tokenizer):
    g = grammars(tokenizer, test_delay_s=5)
    slow = g.submit(Constraint("regex", "s+"))
    assert wait_until(slow.running, timeout_s=60, interval_s=0.01)
    g.close(timeout_s=0.1)
    assert not slow.done()


# ---- the scheduler ------------------------------------------------------------------
class Driver:
    def __init__(self, **options):
        self.scheduler = Scheduler("tiny", str(TINY_MODEL), {"max_batch": 8, "device": "cpu", **options})
        self.scheduler.load()
        self.conn, child = multiprocessing.Pipe()
        self.thread = threading.Thread(target=self.scheduler.run, args=(child,), daemon=True)
        self.thread.start()
        self.events: dict[str, list] = {}
        self.ended: dict = {}
        self.accepted: list[str] = []

    def submit(self, rid: str, constraint=None, *, n=1, seed=0, max_tokens=128, logprobs=False, stop=(),
               ignore_eos=False):
        prompt = self.scheduler.tokenizer.encode("Answer in JSON, please.")
        self.conn.send(Submit(GenerationRequest(
            rid, prompt, max_tokens, n=n, stop=list(stop), ignore_eos=ignore_eos, logprobs=logprobs,
            top_logprobs=3 if logprobs else 0,
            sampling=SamplingParams(temperature=1.0, seed=seed), constraint=constraint)))

    def pump_until(self, done, timeout_s: float = 120) -> None:
        while not done():
            assert self.conn.poll(timeout_s), "the scheduler went quiet"
            step = self.conn.recv()
            assert isinstance(step, Step)
            self.accepted += step.accepted
            for rid, evs in step.events.items():
                self.events.setdefault(rid, []).extend(evs)
            self.ended.update(step.ended)

    def wait(self, *rids: str) -> None:
        self.pump_until(lambda: all(r in self.ended for r in rids))

    def texts(self, rid: str) -> dict[int, str]:
        out: dict[int, str] = {}
        for e in self.events.get(rid, []):
            if isinstance(e, TextEvent):
                out[e.choice] = out.get(e.choice, "") + e.text
        return out

    def finishes(self, rid: str) -> dict[int, str]:
        return {e.choice: e.reason for e in self.events.get(rid, []) if isinstance(e, FinishEvent)}

    def close(self):
        self.conn.send(Stop())
        self.thread.join(30)


@pytest.fixture(scope="module")
def driver():
    d = Driver(grammar_compile_timeout_s=30)
    yield d
    d.close()


def test_constrained_and_free_sequences_share_a_batch(driver):
    driver.submit("free-alone", seed=5, max_tokens=24)
    driver.wait("free-alone")
    driver.submit("json", Constraint("json_schema", SCHEMA), n=3, seed=1, logprobs=True)
    driver.submit("free", seed=5, max_tokens=24)
    driver.submit("obj", Constraint("json_object"), seed=2, max_tokens=256)
    driver.wait("json", "free", "obj")
    assert driver.ended["json"] == "finished" and "json" in driver.accepted
    assert driver.finishes("json") == {0: "stop", 1: "stop", 2: "stop"}
    for text in driver.texts("json").values():
        doc = json.loads(text)
        assert set(doc) == {"name", "n", "kind"} and len(doc["name"]) <= 8 and 0 <= doc["n"] <= 99
        assert doc["kind"] in ("a", "b")
    # Logprobs are those of the masked distribution: every alternative is allowed (finite).
    lps = [lp for e in driver.events["json"] if isinstance(e, TextEvent) for lp in e.logprobs]
    assert lps and all(t.logprob > float("-inf") for lp in lps for t in lp.top)
    # The unconstrained row is untouched: same seed, same text as when it ran alone.
    assert driver.texts("free") == driver.texts("free-alone")
    if driver.finishes("obj")[0] == "stop":
        assert isinstance(json.loads(driver.texts("obj")[0]), dict)
    else:  # any object may be long: what came is an object's prefix
        assert driver.texts("obj")[0].startswith("{")


def test_stop_strings_and_aborts_apply_to_constrained_choices(driver):
    driver.submit("stopped", Constraint("json_schema", SCHEMA), seed=3, stop=['"n"'])
    driver.wait("stopped")
    assert driver.finishes("stopped") == {0: "stop"} and '"n"' not in driver.texts("stopped")[0]


def test_bad_or_slow_grammars_are_refused_while_others_decode():
    d = Driver(grammar_compile_timeout_s=0.5, fault={"grammar_compile_delay_s": 10.0})
    try:
        d.submit("bad", Constraint("json_schema", '{"type": "object", "properties": 5}'))
        d.submit("free", seed=1, max_tokens=1000, ignore_eos=True)
        slow = Constraint("regex", "[0-9]+")
        d.submit("slow", slow)
        d.wait("slow", "bad")
        assert isinstance(d.ended["bad"], Rejected) and d.ended["bad"].param == "response_format"
        assert re.search("could not be compiled|did not compile", d.ended["bad"].message)
        refused = d.ended["slow"]
        assert isinstance(refused, Rejected) and "did not compile within 0.5 s" in refused.message
        # Refused at the limit, not when the compilation ends (it sleeps 10 s first).
        assert not d.scheduler.grammars.submit(slow).done()
        assert "free" not in d.ended and d.texts("free")  # it kept decoding meanwhile
    finally:
        d.close()


def test_utf8_table_forbids_what_python_cannot_decode():
    import torch

    from server.engines.torch.utf8 import Utf8Table

    pieces = [b"a", b"\xe0", b"\x80", b"\xa0", b"\xed", b"\x9f", b"\xc3\xa9", b"\xff"]
    table = Utf8Table(pieces, torch.device("cpu"))

    def spell(seq: list[int]) -> bool:  # True when the table lets every token through
        state = 0
        for tok in seq:
            if not table.allowed[state, tok]:
                return False
            state = table.after(state, tok)
        return state == 0

    for seq in ([0], [1, 3, 2], [4, 5, 2], [6, 0], [1, 2, 2], [4, 3, 2], [7], [2]):
        raw = b"".join(pieces[t] for t in seq)
        try:
            raw.decode("utf-8")
            decodes = True
        except UnicodeDecodeError:
            decodes = False
        assert spell(seq) == decodes, raw
    logits = torch.zeros(2, len(pieces))
    table.mask(logits, [1], [4])  # after E0 only A0..BF may follow
    assert logits[0].isfinite().all() and logits[1].isfinite().tolist() == [0, 0, 0, 1, 0, 0, 0, 0]
