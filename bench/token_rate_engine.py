"""A benchmark-only chat engine: emits tokens at a set rate without running a model.

Registered only by bench/frontend.py (in the core process it starts), never by tests of
features. It is the torch engine with its scheduler process swapped for `RateLoop`: the
same admission control, tokenizer and chat template in the core, the same pipe, reader
thread and per-step `Step` messages, so everything between the engine and the client is
the real path. Each step gives every running sequence one token of realistic text (word
pieces of an English passage, ~4 characters each); a sequence finishes with "length" at
its max_tokens (EOS and stop strings are not simulated).

Rate: environment variable GENAPI_BENCH_STEP_MS, the time of one step (each running
sequence gets one token per step); 0 (the default) steps as fast as the pipe takes them.
"""
from __future__ import annotations

import os
import re
import time

from server.engines.base import FinishEvent, TextEvent
from server.engines.torch.engine import TorchEngine
from server.engines.worker import Abort, Step, Stop, Submit, WorkerProcess

PASSAGE = (
    "The river runs past the old mill, where the clockmaker keeps a garden of brass gears and "
    "patient seedlings. Travellers ask about the road to the harbour; she answers with a map drawn "
    "on the back of a receipt, then returns to her work. In the evening, lanterns flicker along the "
    "quay and the fishing boats come home, their decks shining with rain."
)
#: What each token's text is, in turn: word pieces with their leading space, as a BPE
#: tokenizer would split them.
TOKENS = re.findall(r" ?[A-Za-z]{1,5}|[^A-Za-z ]", PASSAGE)

STEP_MS_ENV = "GENAPI_BENCH_STEP_MS"


class RateLoop:
    """The child-process loop object (see server/engines/worker.py): one token per running
    sequence per step, a step every `GENAPI_BENCH_STEP_MS` ms."""

    def __init__(self, name: str, path: str, options: dict):
        self.name = name
        self.step_s = float(os.environ.get(STEP_MS_ENV, "0")) / 1000
        self._running: dict[str, list] = {}  # request id -> [request, tokens generated per choice]

    def load(self) -> dict:
        return {"context_length": 1 << 20, "vocab_size": 32000}

    def run(self, conn) -> None:
        next_step = time.monotonic()
        while True:
            wait = max(0.0, next_step - time.monotonic()) if self._running else 0.5
            try:
                if not self._drain(conn, wait):
                    return
                if not self._running:
                    next_step = time.monotonic()
                    continue
                if time.monotonic() < next_step:
                    continue
                next_step += self.step_s
                conn.send(self._step())
            except (EOFError, OSError):
                return

    def _drain(self, conn, wait_s: float) -> bool:
        if not conn.poll(wait_s):
            return True
        admitted, ended = [], {}
        while conn.poll(0):
            msg = conn.recv()
            if isinstance(msg, Submit):
                self._running[msg.request.request_id] = [msg.request, [0] * msg.request.n]
                admitted.append(msg.request.request_id)
            elif isinstance(msg, Abort):
                if self._running.pop(msg.request_id, None) is not None:
                    ended[msg.request_id] = "aborted"
            elif isinstance(msg, Stop):
                return False
        if admitted or ended:
            conn.send(Step(admitted=admitted, ended=ended, active_sequences=len(self._running)))
        return True

    def _step(self) -> Step:
        events, ended = {}, {}
        for rid, (req, generated) in list(self._running.items()):
            evs = []
            for choice, done in enumerate(generated):
                if done >= req.max_tokens:
                    continue
                generated[choice] = done + 1
                evs.append(TextEvent(choice, TOKENS[(done + choice) % len(TOKENS)], 1))
                if done + 1 >= req.max_tokens:  # as the torch scheduler: the last text, then the finish
                    evs.append(FinishEvent(choice, "length"))
            events[rid] = evs
            if all(g >= req.max_tokens for g in generated):
                del self._running[rid]
                ended[rid] = "finished"
        return Step(events, ended, active_sequences=len(self._running), cache_slots_used=len(self._running))


class RateEngine(TorchEngine):
    """TorchEngine whose engine process is a RateLoop (the tokenizer and chat template of
    the model directory still run in the core)."""

    def __init__(self, name: str, path: str, options: dict | None = None):
        super().__init__(name, path, options)
        self._worker = WorkerProcess(name, path, self.options, RateLoop, self._on_step, self._on_exit)
