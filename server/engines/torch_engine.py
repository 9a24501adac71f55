"""The default engine: Hugging Face checkpoints on PyTorch (CPU or CUDA) with continuous
batching.

One scheduler thread per model owns the model and its KV-cache slots. Each step it admits
waiting requests into free slots (prefill, first token), then decodes one token for every
active sequence in a single batched forward pass. Requests join and leave between steps;
an aborted request leaves at the next step and frees its slots. Events go back to the
asyncio side through `loop.call_soon_threadsafe`, so the event loop never waits on torch.
"""
from __future__ import annotations

import asyncio
import collections
import heapq
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import slot_runner
from .base import (
    Engine,
    EngineError,
    EngineOverloaded,
    EngineStats,
    FinishEvent,
    GenerationRequest,
    TextEvent,
    TokenLogprob,
    TopLogprob,
)
from .detokenizer import Detokenizer, token_bytes
from .hf_runner import HFRunner
from .sampling import SeqSampler, logprobs_of, process_logits, sample

log = logging.getLogger("genapi.engine.torch")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class _Seq:
    """One choice of a request while it is generating."""

    req: "_Req"
    choice: int
    slot: int
    sampler: SeqSampler
    detok: Detokenizer
    length: int  # tokens in the slot (prompt + generated, excluding the pending token)
    last: int = -1  # token to feed at the next decode step
    generated: int = 0
    unreported: int = 0  # tokens generated since the last event of this choice
    logprobs: list = field(default_factory=list)
    done: bool = False


@dataclass
class _Req:
    gen: GenerationRequest
    emit: Callable  # thread-safe: emit(list of events | an exception | None at the end)
    budget: int
    seqs: list = field(default_factory=list)
    open_choices: int = 0
    admitted: bool = False
    ended: bool = False


class TorchEngine(Engine):
    def __init__(self, name: str, path: str, options: dict | None = None):
        opts = dict(options or {})
        self.name = name
        self.path = path
        self.device_name = opts.get("device", "auto")
        self.dtype_name = opts.get("dtype", "auto")
        self.max_batch = int(opts.get("max_batch", 32))
        self.max_queue = int(opts.get("max_queue", 256))
        self.max_budget = int(opts.get("max_budget_tokens", 1_000_000))
        self.max_context_opt = opts.get("max_context")
        self.max_prefill_tokens = int(opts.get("max_prefill_tokens", 4096))
        self.threads = opts.get("threads")
        self.tokenizer = None
        self.context_length = 0
        self._stats = EngineStats(cache_slots_total=self.max_batch)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._aborts: dict[str, float] = {}  # request id -> when asked
        self._lock = threading.Lock()
        self._waiting: collections.deque[_Req] = collections.deque()
        self._budget_used = 0
        self._pending = 0  # admitted, not yet holding slots
        self._free_slots = list(range(self.max_batch))  # a heap: lowest slot first
        self._active: list[_Seq] = []
        self._thread: threading.Thread | None = None
        self._running = False

    # ---- loading -------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=f"sched-{self.name}", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.device_name == "auto":
            self.device_name = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device_name)
        if self.dtype_name == "auto":
            self.dtype_name = "bfloat16" if self.device.type == "cuda" else "float32"
        dtype = _DTYPES[self.dtype_name]
        if self.threads:
            torch.set_num_threads(int(self.threads))
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype, attn_implementation="sdpa")
        model.to(self.device).eval()
        cfg = model.config
        ctx = int(getattr(cfg, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        if self.max_context_opt:
            ctx = min(ctx, int(self.max_context_opt))
        self.context_length = ctx
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        runner_cls = slot_runner.SlotRunner if slot_runner.supports(model) else HFRunner
        self.runner = runner_cls(model, self.max_batch, ctx, self.device, dtype)
        self.eos_ids = _eos_ids(model, self.tokenizer)
        log.info(
            "loaded %s from %s: %s on %s/%s, context %d, %d slots, runner %s in %.1fs",
            self.name, self.path, type(model).__name__, self.device, self.dtype_name, ctx,
            self.max_batch, runner_cls.__name__, time.perf_counter() - t0,
        )

    async def stop(self) -> None:
        self._running = False
        self._inbox.put(None)
        if self._thread:
            await asyncio.to_thread(self._thread.join, 5)

    # ---- asyncio side --------------------------------------------------------
    def generate(self, request: GenerationRequest):
        """Admits the request now (EngineOverloaded when the queue or the token budget is
        full) and returns the async iterator of its events."""
        budget = len(request.prompt_ids) + request.max_tokens * request.n
        with self._lock:
            if self._pending >= self.max_queue:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(f"{self.name}: request queue is full ({self.max_queue} waiting)")
            if self._budget_used and self._budget_used + budget > self.max_budget:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(
                    f"{self.name}: token budget exhausted ({self._budget_used} of {self.max_budget} in use)")
            self._pending += 1
            self._budget_used += budget
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()

        def emit(events):
            loop.call_soon_threadsafe(out.put_nowait, events)

        self._inbox.put(_Req(request, emit, budget))
        return self._stream(request.request_id, out)

    async def _stream(self, request_id: str, out: asyncio.Queue):
        finished = False
        try:
            while (events := await out.get()) is not None:
                if isinstance(events, Exception):
                    raise events
                for ev in events:
                    yield ev
            finished = True
        finally:
            if not finished:  # consumer went away (cancelled RPC, closed iterator)
                await self.abort(request_id)

    async def abort(self, request_id: str) -> None:
        with self._lock:
            self._aborts[request_id] = time.monotonic()
        self._inbox.put(("abort",))

    def stats(self) -> EngineStats:
        with self._lock:
            s = EngineStats(**vars(self._stats))
            s.queued_requests = self._pending
            s.budget_tokens_used = self._budget_used
        # Owned by the scheduler thread; len() of a list is an atomic read.
        s.active_sequences = len(self._active)
        s.cache_slots_used = self.max_batch - len(self._free_slots)
        return s

    def ready(self) -> bool:
        return self._running and self._thread is not None and self._thread.is_alive()

    # ---- scheduler thread ----------------------------------------------------
    def _loop(self) -> None:
        while self._running:
            try:
                self._step()
            except Exception as e:  # a poison request must not take the engine down
                log.exception("scheduler step failed; failing the active requests")
                for req in {id(s.req): s.req for s in self._active}.values():
                    self._end_request(req, error=EngineError(f"generation failed: {type(e).__name__}"))

    def _step(self) -> None:
        block = not self._active and not self._waiting
        self._drain_inbox(block)
        self._apply_aborts()
        self._admit()
        if self._active:
            self._decode()

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if isinstance(item, _Req):
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _apply_aborts(self) -> None:
        with self._lock:
            if not self._aborts:
                return
            ids = dict(self._aborts)
        hit = set()
        for req in [r for r in self._waiting if r.gen.request_id in ids]:
            self._waiting.remove(req)
            hit.add(req.gen.request_id)
            self._end_request(req, aborted=True)
        for req in {id(s.req): s.req for s in self._active if s.req.gen.request_id in ids}.values():
            hit.add(req.gen.request_id)
            self._end_request(req, aborted=True)
        # An abort can overtake its request in the inbox: keep unmatched ids a while.
        now = time.monotonic()
        with self._lock:
            for rid, t in ids.items():
                if rid in hit or now - t > 30:
                    self._aborts.pop(rid, None)

    def _admit(self) -> None:
        """Moves waiting requests (FIFO) into free slots and prefills them together, up to
        `max_prefill_tokens` padded prompt tokens per step so decoding is not starved."""
        batch, free, longest = [], len(self._free_slots), 0
        while self._waiting and self._waiting[0].gen.n <= free:
            req = self._waiting[0]
            size = max(longest, len(req.gen.prompt_ids))
            if batch and size * (len(batch) + 1) > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            free -= req.gen.n
            longest = size
            batch.append(req)
            with self._lock:
                self._pending -= 1
            req.admitted = True
        if batch:
            self._prefill(batch)

    def _prefill(self, batch: list[_Req]) -> None:
        # Lowest free slot first keeps the running batch contiguous, so decode attention
        # reads a view of the cache instead of gathering a copy.
        slots = [[heapq.heappop(self._free_slots) for _ in range(r.gen.n)] for r in batch]
        logits = self.runner.prefill([s[0] for s in slots], [r.gen.prompt_ids for r in batch])
        seqs, rows = [], []
        for row, (req, req_slots) in enumerate(zip(batch, slots)):
            g = req.gen
            for s in req_slots[1:]:  # n > 1: the choices share the prompt's cache
                self.runner.copy_slot(req_slots[0], s, len(g.prompt_ids))
            seed = g.sampling.seed if g.sampling.seed is not None else int.from_bytes(os.urandom(7), "little")
            for i, slot in enumerate(req_slots):
                sampler = SeqSampler.create(g.sampling, seed + i, self.vocab_size, self.device)
                detok = Detokenizer(self.tokenizer, g.prompt_ids, g.stop)
                req.seqs.append(_Seq(req, i, slot, sampler, detok, len(g.prompt_ids)))
                rows.append(row)
            req.open_choices = g.n
            seqs.extend(req.seqs)
        self._active.extend(seqs)
        self._advance(seqs, logits[torch.tensor(rows, device=logits.device)])

    def _decode(self) -> None:
        seqs = sorted(self._active, key=lambda s: s.slot)
        logits = self.runner.decode([s.slot for s in seqs], [s.last for s in seqs], [s.length for s in seqs])
        for s in seqs:
            s.length += 1
        self._advance(seqs, logits)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor) -> None:
        """Samples the next token of each sequence and turns it into events."""
        samplers = [s.sampler for s in seqs]
        processed = process_logits(logits, samplers)
        tokens = sample(processed, samplers)
        want_lp = [s for s in seqs if s.req.gen.logprobs]
        lp = None
        if want_lp:
            k = max(s.req.gen.top_logprobs for s in want_lp)
            lp = logprobs_of(processed, tokens, k)
        by_req: dict[int, list] = {}
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            s.sampler.observe(tok)
            s.generated += 1
            s.unreported += 1
            s.last = tok
            if lp is not None and s.req.gen.logprobs:
                s.logprobs.append(self._token_logprob(tok, lp, i, s.req.gen.top_logprobs))
            events = by_req.setdefault(id(s.req), [s.req])
            events.extend(self._events_for(s, tok))
        for req, *events in by_req.values():
            if events:
                req.emit(events)
            if req.open_choices == 0:
                self._end_request(req)

    def _events_for(self, s: _Seq, tok: int) -> list:
        g = s.req.gen
        is_eos = tok in self.eos_ids and not g.ignore_eos
        if not is_eos:
            s.detok.push(tok)
        text, stop = s.detok.take()
        if stop is not None:
            return self._finish(s, text, "stop", stop)
        if is_eos:
            return self._finish(s, text + s.detok.flush(), "stop")
        if s.generated >= g.max_tokens or s.length + 1 >= self.context_length:
            return self._finish(s, text + s.detok.flush(), "length")
        if text:
            ev = TextEvent(s.choice, text, s.unreported, s.logprobs)
            s.unreported, s.logprobs = 0, []
            return [ev]
        return []

    def _finish(self, s: _Seq, text: str, reason: str, stop: str = "") -> list:
        events = []
        if text or s.logprobs:
            events.append(TextEvent(s.choice, text, s.unreported, s.logprobs))
            s.unreported, s.logprobs = 0, []
        events.append(FinishEvent(s.choice, reason, s.unreported, stop))
        s.done = True
        s.req.open_choices -= 1
        self._release(s)
        return events

    def _release(self, s: _Seq) -> None:
        if s in self._active:
            self._active.remove(s)
            self.runner.free(s.slot)
            heapq.heappush(self._free_slots, s.slot)

    def _end_request(self, req: _Req, aborted: bool = False, error: Exception | None = None) -> None:
        if req.ended:
            return
        req.ended = True
        for s in req.seqs:
            self._release(s)
        with self._lock:
            self._budget_used -= req.budget
            if not req.admitted:  # still waiting: it never left the queue count
                self._pending -= 1
            if aborted or error:
                self._stats.requests_aborted += 1
            else:
                self._stats.requests_finished += 1
        if error:
            req.emit(error)
        req.emit(None)

    def _token_logprob(self, tok: int, lp, row: int, k: int) -> TokenLogprob:
        chosen, top_vals, top_ids = lp
        top = []
        if k:
            top = [
                TopLogprob(self._piece(t), v, self._token_bytes(t))
                for t, v in zip(top_ids[row][:k], top_vals[row][:k])
            ]
        piece = self._piece(tok)
        return TokenLogprob(piece, chosen[row], self._token_bytes(tok), top)

    def _piece(self, tok: int) -> str:
        return self.tokenizer.decode([tok], skip_special_tokens=False)

    def _token_bytes(self, tok: int) -> bytes:
        return token_bytes(self.tokenizer, tok)


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for src in (getattr(model, "generation_config", None), model.config):
        e = getattr(src, "eos_token_id", None) if src is not None else None
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(e)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
