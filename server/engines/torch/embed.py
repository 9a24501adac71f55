"""Embeddings and rerank on the torch backend: the Embedder and Scorer capabilities of a
sentence-transformers checkpoint.

This side, in the core's event loop, tokenizes and validates (encoder_inputs.py; in a
thread unless the request is small), admits requests (bounded: `max_queue` requests in flight, else EngineOverloaded)
and awaits each request's result; the model runs in its own process (encoder.py), which
merges concurrent requests into shared forward passes.

Rerank: a cross-encoder scores each (query, document) pair; a bi-encoder embeds the query
and the documents in one request and scores by cosine similarity of the normalized
vectors (their dot product), as Scaleway documents for embedding models.

Options: max_queue (256), max_request_tokens (300000), and the engine process's
(encoder.py: device, dtype, max_batch, max_batch_tokens, max_wait_ms).
"""
from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np

from genapi.config import ENCODER_MAX_QUEUE

from ..base import (
    EmbeddingRequest,
    EmbeddingResult,
    EncoderInfo,
    EngineBase,
    EngineError,
    EngineInvalidRequest,
    EngineOverloaded,
    EngineStats,
    ScoreRequest,
    ScoreResult,
)
from ..worker import Abort, Step, Submit, WorkerEngine, WorkerProcess
from .encoder import EncodeJob, EncoderLoop
from .encoder_inputs import TokenizerSpec, check_total, tokenize_inputs, tokenize_pairs

log = logging.getLogger("genapi.engine.embed")

DEFAULT_MAX_QUEUE = ENCODER_MAX_QUEUE  # genapi.config sizes the shim's threads from it
DEFAULT_MAX_REQUEST_TOKENS = 300_000


class EmbeddingEngine(WorkerEngine, EngineBase):
    """Embedder and Scorer on one sentence-transformers checkpoint (one engine process;
    the registry shares it between an embedding and a rerank model of the same path)."""

    def __init__(self, name: str, path: str, options: dict | None = None):
        self.name = name
        self.path = path
        self.options = dict(options or {})
        self.max_queue = int(self.options.get("max_queue", DEFAULT_MAX_QUEUE))
        self.max_request_tokens = int(self.options.get("max_request_tokens", DEFAULT_MAX_REQUEST_TOKENS))
        self.encoder_info: EncoderInfo | None = None
        self._spec: TokenizerSpec | None = None
        self._lock = threading.Lock()  # guards _waiting and _stats
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._stats = EngineStats()
        self._stopping = False
        self._worker = WorkerProcess(name, path, self.options, EncoderLoop, self._on_step, self._on_exit)

    # ---- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        info = await self._worker.start()
        self.encoder_info = EncoderInfo(info["kind"], info["dimensions"], info["max_input_tokens"],
                                        info["vocab_size"])
        self._spec = TokenizerSpec(info["tokenizer"], info["max_input_tokens"], info["vocab_size"],
                                   info["do_lower_case"])


    # ---- capabilities ------------------------------------------------------------
    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        info = self.encoder_info
        if info.kind == "cross-encoder":
            raise EngineInvalidRequest(f"The model `{self.name}` is a cross-encoder: it scores query/document "
                                       "pairs (rerank) and has no embeddings.", "model")
        if request.dimensions is not None and not 1 <= request.dimensions <= info.dimensions:
            raise EngineInvalidRequest(f"Invalid 'dimensions': expected 1 to {info.dimensions} (this model's "
                                       f"size), got {request.dimensions}.", "dimensions")
        rows, tokens = await _off_loop_if_large(_text_size(request.inputs), tokenize_inputs, self._spec,
                                                request.inputs, request.truncate_prompt_tokens,
                                                self.max_request_tokens)
        vectors = await self._run(EncodeJob(request.request_id, rows, dimensions=request.dimensions))
        return EmbeddingResult(vectors, tokens)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        if self.encoder_info.kind == "cross-encoder":
            ids, types, tokens = await _off_loop_if_large(
                _text_size([request.query, *request.documents]), tokenize_pairs, self._spec, request.query,
                request.documents, request.truncate_prompt_tokens, self.max_request_tokens)
            scores = await self._run(EncodeJob(request.request_id, ids, types))
            return ScoreResult([float(s) for s in scores], tokens)
        rows, tokens = await _off_loop_if_large(_text_size([request.query, *request.documents]),
                                                self._tokenize_query_and_documents, request)
        vectors = await self._run(EncodeJob(request.request_id, rows))
        return ScoreResult([float(s) for s in cosine_scores(vectors[0], vectors[1:])], tokens)

    def _tokenize_query_and_documents(self, request: ScoreRequest) -> tuple[list[list[int]], int]:
        """Bi-encoder rerank inputs: the query's ids first, then each document's."""
        limit, cut = self.max_request_tokens, request.truncate_prompt_tokens
        query, n_query = tokenize_inputs(self._spec, [request.query], cut, limit, "query")
        docs, n_docs = tokenize_inputs(self._spec, request.documents, cut, limit, "documents")
        check_total(n_query + n_docs, limit, "documents")
        return query + docs, n_query + n_docs

    # ---- the engine process --------------------------------------------------------
    async def _run(self, job: EncodeJob) -> np.ndarray:
        """Sends one job and awaits its output; a cancelled caller aborts it."""
        if not self.ready():
            raise EngineError(f"the engine process for {self.name!r} is not running")
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(f"{self.name}: request queue is full ({self.max_queue} in flight)")
            self._waiting[job.request_id] = (loop, fut)
        try:
            self._worker.send(Submit(job))
            return await fut
        except OSError:
            raise EngineError(f"the engine process for {self.name!r} is not running") from None
        except asyncio.CancelledError:
            with self._lock:
                live = self._waiting.pop(job.request_id, None) is not None
                if live:
                    self._stats.requests_aborted += 1
            if live:
                try:
                    self._worker.send(Abort(job.request_id))
                except OSError:
                    pass
            raise
        finally:
            with self._lock:
                self._waiting.pop(job.request_id, None)

    def _on_step(self, step: Step) -> None:
        """Reader thread: the results of one batching round."""
        with self._lock:
            self._stats.forward_passes += step.forward_passes
            done = {rid: self._waiting.pop(rid, None) for rid in step.ended}
            self._stats.requests_finished += sum(1 for rid, w in done.items()
                                                 if w and step.ended[rid] == "finished")
        for rid, waiter in done.items():
            if waiter is None:
                continue  # aborted meanwhile
            outcome = step.events[rid][0] if step.ended[rid] == "finished" else EngineError(step.ended[rid])
            waiter[0].call_soon_threadsafe(_settle, waiter[1], outcome)

    def _on_exit(self) -> None:
        with self._lock:
            lost, self._waiting = self._waiting, {}
        if self._stopping:
            log.info("engine process for %s stopped (%d request(s) still open)", self.name, len(lost))
        else:
            log.error("engine process for %s exited (code %s); failing its requests",
                      self.name, self._worker.exitcode)
        for loop, fut in lost.values():
            loop.call_soon_threadsafe(_settle, fut, EngineError("the engine process exited"))


# Up to this many characters a request is tokenized on the event loop (well under a
# millisecond); larger ones in a thread, so that a 2048-input request never stalls it.
INLINE_TOKENIZE_CHARS = 4096


def _text_size(inputs) -> int:
    return sum(len(s) if isinstance(s, str) else len(s) // 4 for s in inputs)


async def _off_loop_if_large(size: int, fn, *args):
    if size <= INLINE_TOKENIZE_CHARS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _settle(fut: asyncio.Future, outcome) -> None:
    if fut.done():
        return
    if isinstance(outcome, Exception):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def cosine_scores(query: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Cosine similarity of each document row with the query, for L2-normalized vectors:
    their dot product, clipped to [-1, 1] against rounding."""
    return np.clip(documents @ query, -1.0, 1.0)

