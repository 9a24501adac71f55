"""TensorRT-LLM backend: a thin adapter over `tensorrt_llm.LLM` (the LLM API, PyTorch
backend).

Follows the TensorRT-LLM 1.2 LLM API (1.2.0rc2; see mapping.py's docstring for the
fields used, the rules relied on and the 1.0 differences): `LLM(model=<HF dir>, ...)`,
`llm.generate_async({"prompt_token_ids": ids[, "multi_modal_data": ...]}, SamplingParams(...), streaming=True)`
returning a RequestOutput that is async-iterated (one cumulative snapshot per step)
and has `.abort()`, and `llm.shutdown()`.

Everything that decides *what* to send or emit is in `mapping` (pure, unit
tested); this module only moves data between it and TensorRT-LLM. `tensorrt_llm` is
imported in `start()`, so the module imports fine where the extra is not installed.
"""
from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, AsyncIterator, Callable

from ..base import (
    BudgetCharge,
    ChatModelInfo,
    EngineBase,
    EngineError,
    EngineEvent,
    EngineOverloaded,
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    Reservation,
    media_kinds,
)
from ..detokenizer import token_bytes
from .mapping import (
    DEFAULT_MAX_QUEUE,
    OPTION_KEYS,
    StreamState,
    UnsupportedRequest,
    batch_limit,
    choice_snapshot,
    close_stream,
    context_limit,
    engine_choices,
    events_from_output,
    llm_kwargs,
    logit_bias_spec,
    multimodal_inputs,
    prompt_token_limit,
    replicate,
    sampling_kwargs,
    token_logprob,
    validate,
)

log = logging.getLogger(__name__)

MISSING_EXTRA = ("TensorRT-LLM backend needs the 'trtllm' extra: pip install 'genapi[trtllm]' "
                 "on a machine with an NVIDIA GPU and CUDA")


class TrtllmEngine(EngineBase):
    """A chat model served by TensorRT-LLM. Options: see README "TensorRT-LLM backend"."""

    def __init__(self, name: str, path: str, options: dict | None = None):
        self.name = name
        self.path = path
        self.options = dict(options or {})
        for key in sorted(set(self.options) - OPTION_KEYS):
            log.warning("model %s: option %r is not used by the trtllm backend", name, key)
        self.max_batch = batch_limit(self.options)
        self.max_queue = int(self.options.get("max_queue", DEFAULT_MAX_QUEUE))
        self.max_budget_tokens = int(self.options.get("max_budget_tokens") or 0)  # 0 = no limit
        self.tokenizer = None
        self.context_length = 0
        self.vocab_size: int | None = None
        self.eos_token_ids: list[int] = []
        self.sample_rate = 16_000  # Hz of the audio parts it is given (the processor's)
        self.chat_info: ChatModelInfo | None = None
        self._trt: Any = None  # the tensorrt_llm module
        self._llm: Any = None
        self._results: dict[str, Any] = {}  # request_id -> RequestOutput
        self._aborted: set[str] = set()
        self._inflight_requests = 0
        self._inflight_seqs = 0
        self._budget_used = 0
        self._stats = EngineStats(cache_slots_total=self.max_batch)
        self._token_cache: dict[int, tuple[str, bytes]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._llm is not None:
            return
        if str(self.options.get("device", "cuda")).lower() == "cpu":
            raise EngineUnavailable("the trtllm backend runs on CUDA GPUs only; "
                                    "use backend = \"torch\" for CPU")
        try:
            import tensorrt_llm
        except ImportError as e:
            raise EngineUnavailable(MISSING_EXTRA) from e
        except Exception as e:  # broken install: missing CUDA/MPI libraries, stub package
            raise EngineUnavailable(f"{MISSING_EXTRA} (importing tensorrt_llm failed: {e})") from e
        try:
            import torch
            has_cuda = torch.cuda.is_available()
        except Exception:
            has_cuda = False
        if not has_cuda:
            raise EngineUnavailable("TensorRT-LLM backend needs an NVIDIA GPU with CUDA; "
                                    "none is visible")
        try:
            kwargs, kv = llm_kwargs(self.path, self.options)
        except ValueError as e:
            raise EngineUnavailable(f"model {self.name}: {e}") from e
        self._trt = tensorrt_llm
        self._load_hf()
        if kv:
            from tensorrt_llm.llmapi import KvCacheConfig
            kwargs["kv_cache_config"] = KvCacheConfig(**kv)
        # Built on the loop's thread on purpose: the LLM constructor may spawn MPI
        # workers and install handlers that expect the main thread. start() runs once,
        # before the server takes traffic.
        try:
            self._llm = tensorrt_llm.LLM(**kwargs)
        except Exception as e:
            raise EngineUnavailable(f"TensorRT-LLM could not load {self.path}: {e}") from e
        log.info("model %s: TensorRT-LLM %s loaded %s (context %d, max_batch %d)", self.name,
                 getattr(tensorrt_llm, "__version__", "?"), self.path, self.context_length,
                 self.max_batch)

    def _load_hf(self) -> None:
        """Tokenizer (chat template), context length, vocabulary size, EOS ids."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        trust = bool(self.options.get("trust_remote_code", False))
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust)
        cfg = AutoConfig.from_pretrained(self.path, trust_remote_code=trust)
        text_cfg = getattr(cfg, "text_config", None) or cfg
        max_pos = getattr(text_cfg, "max_position_embeddings", None)
        self.context_length = context_limit(self.options, max_pos)
        self.vocab_size = int(getattr(text_cfg, "vocab_size", None) or len(self.tokenizer))
        eos: list[int] = []
        if self.tokenizer.eos_token_id is not None:
            eos.append(int(self.tokenizer.eos_token_id))
        try:
            gen_eos = GenerationConfig.from_pretrained(self.path).eos_token_id
        except Exception:  # no generation_config.json
            gen_eos = None
        for i in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
            if int(i) not in eos:
                eos.append(int(i))
        self.eos_token_ids = eos
        # A vision- or audio-language checkpoint: the core expands its media with the HF
        # processor (usage, context checks) and hands us the decoded parts as well, which
        # TensorRT-LLM's own input processor takes (mapping.multimodal_inputs).
        kinds, processor = media_kinds(cfg), None
        if kinds:
            from ...chat.processors import load_processor

            processor = load_processor(self.path, trust_remote_code=trust)
        self.sample_rate = int(getattr(getattr(processor, "feature_extractor", None), "sampling_rate", 16_000))
        self.chat_info = ChatModelInfo(self.tokenizer, self.context_length, self.vocab_size, kinds, processor,
                                       raw_media=bool(kinds))

    def ready(self) -> bool:
        return self._llm is not None

    async def stop(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            for result in list(self._results.values()):
                try:
                    result.abort()
                except Exception:
                    pass
            await asyncio.to_thread(llm.shutdown)

    # ------------------------------------------------------------------ requests

    def reserve(self, n: int = 1, least_tokens: int = 0) -> Reservation:
        """An admission place (Generator.reserve). TensorRT-LLM's own scheduler decides
        which requests run, so the queue here counts the requests in flight beyond
        max_batch: EngineOverloaded past max_batch + max_queue, or when the budget in use
        plus `least_tokens` exceeds max_budget_tokens (when set)."""
        if self._inflight_requests >= self.max_batch + self.max_queue:
            self._stats.requests_rejected += 1
            raise EngineOverloaded(
                f"model {self.name} is at capacity ({self._inflight_requests} requests in flight)")
        self._check_budget(least_tokens)
        self._inflight_requests += 1
        return Reservation(n, self._unreserve)

    def _unreserve(self, _place: Reservation) -> None:
        self._inflight_requests -= 1

    def _check_budget(self, tokens: int) -> None:
        if (self.max_budget_tokens and self._budget_used
                and self._budget_used + tokens > self.max_budget_tokens):
            self._stats.requests_rejected += 1
            raise EngineOverloaded(f"model {self.name} token budget is exhausted")

    def generate(self, request: GenerationRequest, reservation: Reservation | None = None
                 ) -> AsyncIterator[EngineEvent]:
        """Validates and admits the request now, in `reservation`'s place or a new one
        (raising UnsupportedRequest or EngineOverloaded, which give the place back), then
        returns the event stream."""
        place = reservation
        try:
            if self._llm is None:
                raise EngineUnavailable(f"model {self.name} is not loaded")
            validate(request, vocab_size=self.vocab_size, max_batch=self.max_batch,
                     context_length=self.context_length,
                     max_prompt_tokens=prompt_token_limit(self.options))
            if place is None:
                place = self.reserve(request.n)
            release, charge = self._admit(request)
        except BaseException:
            if place is not None:
                place.release()
            raise
        place.take()  # from here `release` gives the place back
        stream = self._stream(request, release, charge)
        weakref.finalize(stream, release)  # dropped without being iterated
        return stream

    def _admit(self, req: GenerationRequest) -> tuple[Callable[[], None], BudgetCharge]:
        """Charges the budget (the request holds a place already)."""
        seqs, _ = engine_choices(req)
        charge = BudgetCharge.of(req, seqs)
        self._check_budget(charge.tokens)
        if req.request_id in self._results:
            raise UnsupportedRequest(f"request id {req.request_id!r} is already running")
        self._inflight_seqs += seqs
        self._budget_used += charge.tokens
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._inflight_requests -= 1
                self._inflight_seqs -= seqs
                self._budget_used -= charge.tokens

        return release, charge

    async def _stream(self, req: GenerationRequest, release: Callable[[], None],
                      charge: BudgetCharge) -> AsyncIterator[EngineEvent]:
        rid = req.request_id
        result = None
        completed = False
        state = StreamState.for_request(req)
        _, copies = engine_choices(req)
        logprobs: list[list] = [[] for _ in range(state.num_choices)]
        try:
            result = self._submit(req)
            self._results[rid] = result
            try:
                async for output in result:
                    if rid in self._aborted:
                        break
                    snaps = [self._snapshot(o, logprobs, req) for o in output.outputs
                             if 0 <= o.index < state.num_choices]
                    events, state = events_from_output(state, snaps)
                    self._budget_used += charge.add(sum(ev.num_tokens for ev in events))
                    for ev in replicate(events, copies):
                        yield ev
                    if state.done:
                        break
            except (EngineError, GeneratorExit):
                raise
            except Exception as e:  # RequestError and friends from the executor
                raise EngineError(f"TensorRT-LLM failed request {rid}: {e}") from e
            if rid in self._aborted:
                return
            if not all(c.finished for c in state.choices):
                if not state.any_finished:
                    raise EngineError(f"TensorRT-LLM ended request {rid} without finishing it")
                events, state = close_stream(state)
                for ev in replicate(events, copies):
                    yield ev
            completed = True
        finally:
            self._results.pop(rid, None)
            if completed:
                self._stats.requests_finished += 1
            elif result is not None and rid not in self._aborted \
                    and not getattr(result, "finished", False):
                # Consumer went away (client disconnect, cancelled task) or we failed.
                try:
                    result.abort()
                except Exception:
                    log.exception("aborting TensorRT-LLM request %s", rid)
                self._stats.requests_aborted += 1
            self._aborted.discard(rid)
            release()

    def _submit(self, req: GenerationRequest) -> Any:
        kwargs = sampling_kwargs(req, self.eos_token_ids)
        bias = logit_bias_spec(req)
        if bias is not None:
            import torch
            kwargs["embedding_bias"] = torch.tensor(bias.dense(self.vocab_size),
                                                    dtype=torch.float32)
        try:
            params = self._trt.SamplingParams(**kwargs)
            inputs = multimodal_inputs(req.prompt_ids, req.media, self.sample_rate)
            req.media = []  # TensorRT-LLM holds what it needs of them: not this stream, for the whole generation
            return self._llm.generate_async(inputs, params, streaming=True)
        except ValueError as e:  # SamplingParams._validate, BaseLLM._check_arguments
            raise UnsupportedRequest(str(e)) from e
        except Exception as e:  # RequestError from an in-process executor, shutting down
            raise EngineError(f"TensorRT-LLM refused request {req.request_id}: {e}") from e

    def _snapshot(self, output: Any, logprobs: list[list], req: GenerationRequest):
        converted = logprobs[output.index]
        if req.logprobs and output.logprobs:
            ids = output.token_ids
            for pos in range(len(converted), min(len(output.logprobs), len(ids))):
                converted.append(token_logprob(ids[pos], output.logprobs[pos],
                                               req.top_logprobs, self._token_text))
        return choice_snapshot(output, converted)

    def _token_text(self, token_id: int) -> tuple[str, bytes]:
        hit = self._token_cache.get(token_id)
        if hit is None:
            # Same token text and raw bytes as the torch engine reports.
            hit = (self.tokenizer.decode([token_id], skip_special_tokens=False),
                   token_bytes(self.tokenizer, token_id))
            if len(self._token_cache) < 200_000:
                self._token_cache[token_id] = hit
        return hit

    async def abort(self, request_id: str) -> None:
        result = self._results.get(request_id)
        if result is None or request_id in self._aborted:
            return
        self._aborted.add(request_id)
        self._stats.requests_aborted += 1
        result.abort()

    def stats(self) -> EngineStats:
        s = self._stats
        active = min(self._inflight_seqs, self.max_batch)
        return EngineStats(
            active_sequences=active,
            queued_requests=max(0, self._inflight_requests - self.max_batch),
            cache_slots_used=active,
            cache_slots_total=self.max_batch,
            requests_finished=s.requests_finished,
            requests_aborted=s.requests_aborted,
            requests_rejected=s.requests_rejected,
            budget_tokens_used=self._budget_used,
        )
