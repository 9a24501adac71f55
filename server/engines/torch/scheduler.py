"""The torch engine's scheduler: runs in its own process, owns the model and its KV-cache
slots, and does continuous batching.

Each step it reads new requests and aborts from the pipe (a request with a constraint
first waits for its grammar, compiled on other threads: `server/chat/grammar.py`, and
is refused when that fails or takes too long), admits waiting requests into
free slots (batched prefill, first token; a prompt longer than `prefill_chunk` instead
gets one chunk prefilled per step), then decodes one token for every active sequence in
a single batched forward pass, and sends back every request's new events. Requests join and leave between steps; an aborted request leaves at
the next step and frees its slots.

It runs in a separate process because the forward pass issues hundreds of small torch
calls per step, each of which must re-take the GIL: sharing a process with the gRPC
event loop made every step wait on it (bench/RESULTS.md).
"""
from __future__ import annotations

import collections
import concurrent.futures
import heapq
import logging
import os
import time
from dataclasses import dataclass, field

import torch

from ...chat.grammar import DEFAULT_CACHE_SIZE, DEFAULT_THREADS, DEFAULT_TIMEOUT_S, GrammarError, Grammars, too_slow
from ..base import FinishEvent, GenerationRequest, TextEvent, TokenLogprob, TopLogprob
from ..detokenizer import Detokenizer, token_bytes
from ..worker import Abort, Rejected, Step, Stop, Submit
from . import slot_runner
from .constrain import apply_masks, fill_masks
from .direct_decode import decoder_for
from .hf_runner import HFRunner
from .host_memory import keep_freed_memory
from .sampling import SeqSampler, logprobs_of, process_logits, sample
from .utf8 import Utf8Table
from ..base import media_kinds
from .multimodal import MediaEncoder, MediaSplice, text_view

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
    freed: bool = False  # its slot went back to the free list
    matcher: object = None  # xgrammar GrammarMatcher of a constrained choice
    utf8: int = 0  # where a constrained choice stands inside a UTF-8 character (utf8.py)


@dataclass
class _Req:
    gen: GenerationRequest
    seqs: list = field(default_factory=list)
    open_choices: int = 0
    ended: bool = False
    prefilled: int = 0  # prompt tokens in the cache so far (chunked prefill)
    grammar: object = None  # compiled grammar of its constraint (xgrammar CompiledGrammar)
    media: MediaSplice | None = None  # its image and audio features, from admission until prefilled


class Scheduler:
    """Child-process side of the torch engine (the loop object of `worker.child_main`).
    Messages on `conn` (worker.py): in Submit(GenerationRequest) | Abort | Stop;
    out Step, one per step that produced events, ends or admissions."""

    def __init__(self, name: str, path: str, options: dict):
        opts = dict(options)
        self.name = name
        self.path = path
        self.device_name = opts.get("device", "auto")
        self.dtype_name = opts.get("dtype", "auto")
        self.max_batch = int(opts.get("max_batch", 32))
        self.max_context_opt = opts.get("max_context")
        self.max_prefill_tokens = int(opts.get("max_prefill_tokens", 4096))
        self.prefill_chunk = int(opts.get("prefill_chunk", 512))  # 0: whole prompts at once
        self.threads = opts.get("threads")
        # Reliability tests only (engines/faults.py): no decode step while this file exists,
        # so a test can hold requests in flight (admitted, first token out) as long as it needs.
        fault = opts.get("fault") or {}
        self.pause_file = fault.get("pause_decode_file")
        self.grammar_timeout_s = float(opts.get("grammar_compile_timeout_s", DEFAULT_TIMEOUT_S))
        self._grammar_opts = {
            "timeout_s": self.grammar_timeout_s,
            "cache_size": int(opts.get("grammar_cache_size", DEFAULT_CACHE_SIZE)),
            "threads": int(opts.get("grammar_compile_threads", DEFAULT_THREADS)),
            "test_delay_s": float(fault.get("grammar_compile_delay_s", 0)),
        }
        self._compiling: list[tuple[_Req, concurrent.futures.Future, float]] = []  # (req, grammar, deadline)
        self._accepted: list[str] = []
        # Fills grammar masks during forward passes; first builds the UTF-8 table.
        self._mask_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="grammar-mask")
        self._utf8_table: concurrent.futures.Future | None = None
        self._waiting: collections.deque[_Req] = collections.deque()
        self._aborts: dict[str, float] = {}  # request id -> when asked
        self._free_slots = list(range(self.max_batch))  # a heap: lowest slot first
        self._active: list[_Seq] = []
        self._chunking: list[_Req] = []  # admitted, prompt being prefilled chunk by chunk
        self._events: dict[str, list] = {}
        self._ended: dict[str, str] = {}
        self._admitted: list[str] = []
        self._decode_s = 0.0  # decode forward time since the last Step sent (the engine step time metric)

    def load(self) -> dict:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMultimodalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        # No progress bars: they are noise in a service log, and tqdm's lock is a named
        # semaphore that the resource tracker reports as leaked whenever this process is
        # stopped before it could release it (a stop during loading).
        hf_logging.disable_progress_bar()

        if self.device_name == "auto":
            self.device_name = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self.device_name)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"option device = {self.device_name!r}: no CUDA device is available "
                             "(use \"cpu\" or \"auto\")")
        if self.dtype_name == "auto":
            self.dtype_name = "bfloat16" if self.device.type == "cuda" else "float32"
        dtype = _DTYPES[self.dtype_name]
        if self.threads:
            torch.set_num_threads(int(self.threads))
        keep_freed_memory()  # step-sized tensors reuse the heap, never fresh pages
        t0 = time.perf_counter()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self._decoder = decoder_for(self.tokenizer)  # what the detokenizers call, per token
        kinds = media_kinds(AutoConfig.from_pretrained(self.path))
        auto = AutoModelForMultimodalLM if kinds else AutoModelForCausalLM
        model = auto.from_pretrained(self.path, dtype=dtype, attn_implementation="sdpa")
        model.to(self.device).eval()
        # Media are encoded at admission (`_encode_media`); the runners see the text model.
        self.media = MediaEncoder(model, self.device, dtype) if kinds else None
        lm = text_view(model)
        cfg = lm.config
        ctx = int(getattr(cfg, "max_position_embeddings", 0) or self.tokenizer.model_max_length)
        if self.max_context_opt:
            ctx = min(ctx, int(self.max_context_opt))
        self.context_length = ctx
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        runner_cls = slot_runner.SlotRunner if slot_runner.supports(lm) else HFRunner
        self.runner = runner_cls(lm if runner_cls is slot_runner.SlotRunner else model, self.max_batch, ctx,
                                 self.device, dtype)
        self.eos_ids = _eos_ids(model, self.tokenizer)
        self.grammars = Grammars(self.tokenizer, self.vocab_size, sorted(self.eos_ids), **self._grammar_opts)
        self._utf8_table = self._mask_pool.submit(self._build_utf8)
        log.info(
            "loaded %s from %s: %s on %s/%s, context %d, %d slots, runner %s in %.1fs",
            self.name, self.path, type(model).__name__, self.device, self.dtype_name, ctx,
            self.max_batch, runner_cls.__name__, time.perf_counter() - t0,
        )
        return {"context_length": ctx, "vocab_size": self.vocab_size, "media": list(kinds)}

    def close(self) -> None:
        """Called once `run` has returned, before the process exits: waits (bounded) for
        the grammar threads' native work, so that the interpreter's teardown does not run
        C++ destructors under it (Grammars.close)."""
        if grammars := getattr(self, "grammars", None):
            grammars.close()
        self._mask_pool.shutdown(wait=True, cancel_futures=True)

    # ---- the loop ------------------------------------------------------------
    def run(self, conn) -> None:
        """Steps until asked to stop or the parent goes away (closed pipe)."""
        prefill_only = False  # the previous step prefilled and skipped its decode
        while True:
            try:
                paused = self.pause_file is not None and os.path.exists(self.pause_file)
                can_admit = bool(self._waiting) and self._waiting[0].gen.n <= len(self._free_slots)
                busy = can_admit or bool(self._chunking) or (bool(self._active) and not paused)
                # Grammars compile on other threads: look for them often, without spinning.
                idle_s = 0.005 if self._compiling else 0.05 if paused else 0.5
                if not self._drain(conn, wait_s=0 if busy else idle_s):
                    return
                self._apply_aborts()
                self._collect_grammars()
                if self._admit() | self._prefill_chunk():  # `|`: both run every step
                    self._send(conn)  # first tokens out now, not after the decode step
                    # Requests that arrived during that prefill (HTTP arrivals trickle in a
                    # few ms apart) are prefilled before decoding, once, so a burst costs
                    # them one prefill instead of a prefill plus a decode step each.
                    if not prefill_only and conn.poll(0):
                        prefill_only = True
                        continue
                prefill_only = False
                if self._active and not paused:
                    t_step = time.perf_counter()
                    self._decode()
                    self._decode_s += time.perf_counter() - t_step
            except (EOFError, OSError):
                return
            except Exception as e:  # a poison request must not take the engine down
                log.exception("scheduler step failed; failing the active requests")
                self._fail(_requests_of(self._active), e)
            self._send(conn)

    def _drain(self, conn, wait_s: float) -> bool:
        """Reads every pending message (waiting up to `wait_s` for one); False on stop."""
        if not conn.poll(wait_s):
            return True
        while True:
            msg = conn.recv()
            if isinstance(msg, Submit):
                self._enqueue(_Req(msg.request))
            elif isinstance(msg, Abort):
                self._aborts[msg.request_id] = time.monotonic()
            elif isinstance(msg, Stop):
                return False
            if not conn.poll(0):
                return True

    def _enqueue(self, req: _Req) -> None:
        """Unconstrained requests wait for slots at once; constrained ones once their
        grammar is compiled (`_collect_grammars`)."""
        c = req.gen.constraint
        if c is None:
            self._waiting.append(req)
        else:
            self._compiling.append((req, self.grammars.submit(c), time.monotonic() + self.grammar_timeout_s))

    def _collect_grammars(self) -> None:
        """Constrained requests whose grammar is ready join the queue for slots; those whose
        grammar failed, or is not ready by their deadline, are refused (INVALID_ARGUMENT)."""
        if not self._compiling:
            return
        now, still = time.monotonic(), []
        for req, fut, deadline in self._compiling:
            if not fut.done():
                if now < deadline:
                    still.append((req, fut, deadline))
                else:
                    self._refuse(req, too_slow(self.grammar_timeout_s))
                continue
            try:
                req.grammar = fut.result()
            except GrammarError as e:
                self._refuse(req, str(e))
                continue
            except Exception as e:  # xgrammar missing or broken: not the caller's fault
                log.exception("grammar compilation failed")
                self._end_request(req, f"structured outputs are unavailable: {type(e).__name__}: {e}")
                continue
            self._accepted.append(req.gen.request_id)
            self._waiting.append(req)
        self._compiling = still

    def _refuse(self, req: _Req, message: str) -> None:
        req.ended = True
        self._ended[req.gen.request_id] = Rejected(message, "response_format")

    def _send(self, conn) -> None:
        if self._events or self._ended or self._admitted or self._accepted:
            conn.send(Step(self._events, self._ended, self._admitted, len(self._active),
                           self.max_batch - len(self._free_slots), self._accepted, decode_seconds=self._decode_s))
            self._events, self._ended, self._admitted, self._accepted = {}, {}, [], []
            self._decode_s = 0.0

    def _apply_aborts(self) -> None:
        if not self._aborts:
            return
        ids = self._aborts
        hit = set()
        for req in [r for r in self._waiting if r.gen.request_id in ids]:
            self._waiting.remove(req)
            hit.add(req.gen.request_id)
            self._end_request(req, "aborted")
        for entry in [e for e in self._compiling if e[0].gen.request_id in ids]:
            self._compiling.remove(entry)  # its compilation goes on: the result is cached
            hit.add(entry[0].gen.request_id)
            self._end_request(entry[0], "aborted")
        for req in [r for r in _requests_of(self._active) + self._chunking if r.gen.request_id in ids]:
            hit.add(req.gen.request_id)
            self._end_request(req, "aborted")
        # An abort for a request that already ended (or never came) is dropped after a while.
        now = time.monotonic()
        self._aborts = {rid: t for rid, t in ids.items() if rid not in hit and now - t < 30}

    def _admit(self) -> bool:
        """Moves waiting requests (FIFO) into free slots and prefills them together, up to
        `max_prefill_tokens` padded prompt tokens per step so decoding is not starved.
        Prompts longer than `prefill_chunk` get their slots now and are prefilled a chunk
        per step (`_prefill_chunk`), between decode steps."""
        batch, free, longest = [], len(self._free_slots), 0
        while self._waiting and self._waiting[0].gen.n <= free:
            req = self._waiting[0]
            chunked = 0 < self.prefill_chunk < len(req.gen.prompt_ids)
            if not chunked:
                size = max(longest, len(req.gen.prompt_ids))
                if batch and size * (len(batch) + 1) > self.max_prefill_tokens:
                    break
                longest = size
            self._waiting.popleft()
            if req.gen.media and not self._encode_media(req):
                continue  # failed alone, before taking slots
            free -= req.gen.n
            self._admitted.append(req.gen.request_id)
            if chunked:
                self._attach(req, [heapq.heappop(self._free_slots) for _ in range(req.gen.n)])
                self._chunking.append(req)
            else:
                batch.append(req)
        if batch:
            try:
                self._prefill(batch)
            except Exception as e:  # fails the requests it was admitting, not the running batch
                log.exception("prefill of %d request(s) failed", len(batch))
                self._fail(batch, e)
        return bool(batch)

    def _encode_media(self, req: _Req) -> bool:
        """Admission of a request with media: runs their encoders (here, between steps,
        never inside a decode step) and keeps the features until its prompt is
        prefilled. False when that failed (the request is ended, the others go on)."""
        try:
            if self.media is None:
                raise ValueError(f"{self.name} takes no media input")
            req.media = self.media.splice_for(req.gen.prompt_ids, req.gen.media)
        except Exception as e:
            log.exception("media encoding of %s failed", req.gen.request_id)
            self._fail([req], e)
            return False
        return True

    def _prefill(self, batch: list[_Req]) -> None:
        # Lowest free slot first keeps the running batch contiguous, so decode attention
        # reads a view of the cache instead of gathering a copy.
        slots = [[heapq.heappop(self._free_slots) for _ in range(r.gen.n)] for r in batch]
        for req, req_slots in zip(batch, slots):
            self._attach(req, req_slots)
        media = [r.media for r in batch] if any(r.media is not None for r in batch) else None
        logits = self.runner.prefill([s[0] for s in slots], [r.gen.prompt_ids for r in batch], media)
        for r in batch:
            r.media = None  # in the cache now
        self._start(batch, logits)

    def _prefill_chunk(self) -> bool:
        """Prefills the next chunk of the oldest chunked prompt. True when that request has
        news to send: its prompt is in (first tokens out), or it failed (alone)."""
        if not self._chunking:
            return False
        req = self._chunking[0]
        ids = req.gen.prompt_ids
        end = min(req.prefilled + self.prefill_chunk, len(ids))
        try:
            logits = self.runner.extend(req.seqs[0].slot, ids[req.prefilled:end], req.prefilled, req.media)
            req.prefilled = end
            if end < len(ids):
                return False
            req.media = None
            self._chunking.pop(0)
            self._start([req], logits)
        except Exception as e:
            log.exception("chunked prefill of %s failed", req.gen.request_id)
            self._fail([req], e)
        return True

    def _attach(self, req: _Req, slots: list[int]) -> None:
        """Gives each choice of `req` its slot, sampler and detokenizer; from here on,
        ending the request frees those slots."""
        g = req.gen
        seed = g.sampling.seed if g.sampling.seed is not None else int.from_bytes(os.urandom(7), "little")
        for i, slot in enumerate(slots):
            sampler = SeqSampler.create(g.sampling, seed + i, self.vocab_size, self.device)
            detok = Detokenizer(self._decoder, g.prompt_ids, g.stop)
            seq = _Seq(req, i, slot, sampler, detok, len(g.prompt_ids))
            if req.grammar is not None:
                seq.matcher = self.grammars.matcher(req.grammar)
            req.seqs.append(seq)
        req.open_choices = g.n

    def _start(self, reqs: list[_Req], logits: torch.Tensor) -> None:
        """Prefilled requests join the decode batch: each request's other choices copy its
        first choice's prompt cache (n > 1), and every choice samples its first token from
        its request's row of `logits`."""
        seqs, rows = [], []
        for row, req in enumerate(reqs):
            for s in req.seqs[1:]:
                self.runner.copy_slot(req.seqs[0].slot, s.slot, len(req.gen.prompt_ids))
            seqs.extend(req.seqs)
            rows.extend([row] * len(req.seqs))
        self._active.extend(seqs)
        self._advance(seqs, logits[torch.tensor(rows, device=logits.device)])

    def _decode(self) -> None:
        seqs = sorted(self._active, key=lambda s: s.slot)
        # The grammar masks are filled on a thread while the forward pass runs.
        masks = None
        if any(s.matcher is not None for s in seqs):
            masks = self._mask_pool.submit(fill_masks, [s.matcher for s in seqs], self.vocab_size)
        try:
            logits = self.runner.decode([s.slot for s in seqs], [s.last for s in seqs], [s.length for s in seqs])
        finally:
            mask = masks.result() if masks is not None else None
        for s in seqs:
            s.length += 1
        self._advance(seqs, logits, mask)

    def _advance(self, seqs: list[_Seq], logits: torch.Tensor, mask=None) -> None:
        """Samples the next token of each sequence and turns it into events. `mask`: the
        grammar masks of the constrained sequences (filled here when not given)."""
        if mask is None:
            mask = fill_masks([s.matcher for s in seqs], self.vocab_size)
        apply_masks(logits, mask)
        if mask is not None:
            utf8 = self._utf8_table.result()
            utf8.mask(logits, mask.rows, [seqs[r].utf8 for r in mask.rows])
        samplers = [s.sampler for s in seqs]
        processed = process_logits(logits, samplers)
        tokens = sample(processed, samplers)
        want_lp = [i for i, s in enumerate(seqs) if s.req.gen.logprobs]
        lp = None
        if want_lp:
            lp = logprobs_of(processed, tokens, [seqs[i].req.gen.top_logprobs for i in want_lp], want_lp)
        off_grammar = []
        for i, (s, tok) in enumerate(zip(seqs, tokens)):
            s.sampler.observe(tok)
            s.generated += 1
            s.unreported += 1
            s.last = tok
            if s.matcher is not None:
                if not s.matcher.accept_token(tok):
                    off_grammar.append(s.req)  # cannot happen with the mask applied: a bug
                    continue
                s.utf8 = utf8.after(s.utf8, tok)
            # The end-of-turn token ends the choice but is not content: it counts in
            # completion_tokens (as vLLM does) but gets no logprobs entry (as OpenAI's).
            if lp is not None and s.req.gen.logprobs and not self._ends_turn(s, tok):
                s.logprobs.append(self._token_logprob(tok, lp, i, s.req.gen.top_logprobs))
            if events := self._events_for(s, tok):
                self._events.setdefault(s.req.gen.request_id, []).extend(events)
        if off_grammar:
            log.error("%d sequence(s) sampled a token their grammar rejects", len(off_grammar))
            self._fail(off_grammar, RuntimeError("a sampled token broke the grammar"))
        for req in _requests_of(seqs):
            if req.open_choices == 0:
                self._end_request(req, "finished")

    def _events_for(self, s: _Seq, tok: int) -> list:
        g = s.req.gen
        is_eos = self._ends_turn(s, tok)
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

    def _ends_turn(self, s: _Seq, tok: int) -> bool:
        # A constrained choice ends when its grammar does: the mask allows an end-of-sequence
        # token only where the grammar can terminate, so it always means "stop".
        return tok in self.eos_ids and (not s.req.gen.ignore_eos or s.matcher is not None)

    def _finish(self, s: _Seq, text: str, reason: str, stop: str = "") -> list:
        events = []
        if text or s.logprobs:
            events.append(TextEvent(s.choice, text, s.unreported, s.logprobs))
            s.unreported, s.logprobs = 0, []
        events.append(FinishEvent(s.choice, reason, s.unreported, stop))
        s.req.open_choices -= 1
        self._release(s)
        return events

    def _release(self, s: _Seq) -> None:
        if s.freed:
            return
        s.freed = True
        if s in self._active:
            self._active.remove(s)
        self.runner.free(s.slot)
        heapq.heappush(self._free_slots, s.slot)

    def _end_request(self, req: _Req, outcome: str) -> None:
        """outcome: "finished", "aborted", or an error message."""
        if req.ended:
            return
        req.ended = True
        if req in self._chunking:
            self._chunking.remove(req)
        for s in req.seqs:
            self._release(s)
        self._ended[req.gen.request_id] = outcome

    def _fail(self, reqs: list[_Req], error: Exception) -> None:
        for req in reqs:
            self._end_request(req, f"generation failed: {type(error).__name__}")

    def _build_utf8(self) -> Utf8Table:
        n = len(self.tokenizer)
        return Utf8Table([token_bytes(self.tokenizer, t) if t < n else b"" for t in range(self.vocab_size)],
                         self.device)

    def _token_logprob(self, tok: int, lp, row: int, k: int) -> TokenLogprob:
        chosen, top_vals, top_ids = lp
        top = []
        if k:
            # Tokens a grammar forbids (-inf) are no alternatives.
            top = [
                TopLogprob(self._piece(t), v, self._token_bytes(t))
                for t, v in zip(top_ids[row][:k], top_vals[row][:k]) if v != float("-inf")
            ]
        piece = self._piece(tok)
        return TokenLogprob(piece, chosen[row], self._token_bytes(tok), top)

    def _piece(self, tok: int) -> str:
        return self.tokenizer.decode([tok], skip_special_tokens=False)

    def _token_bytes(self, tok: int) -> bytes:
        return token_bytes(self.tokenizer, tok)


def _requests_of(seqs: list[_Seq]) -> list[_Req]:
    """The distinct requests the sequences belong to (n choices share one), in order."""
    return list({id(s.req): s.req for s in seqs}.values())


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
