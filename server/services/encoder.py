"""EmbeddingService and RerankService: unary calls on the embedding/rerank engines.

Both follow the same path: bounded identifiers, the draining refusal, the model lookup
by task (services/lookup.py), proto -> engine request (convert/embedding.py), the
engine call, engine errors mapped once (server.errors.from_engine_error)."""
from __future__ import annotations

import logging
import time
import uuid
from typing import Awaitable, Callable

import grpc

from genapi.config import Task
from genapi.untrusted import clip
from genapi.v1 import embedding_service_pb2_grpc, rerank_service_pb2_grpc

from ..convert.embedding import check_ids, embed_response, embedding_request, rerank_response, score_request
from ..drain import Drain, shutting_down
from ..engines.base import EngineError
from ..errors import INTERNAL_ERROR, GenapiError, abort, from_engine_error
from .. import metrics
from ..limits import UNLIMITED, RateLimiter, admit
from ..registry import Registry, ServedModel
from .generation import request_id_of, with_rate_state
from .lookup import model_for

log = logging.getLogger("genapi.encoder")


async def _unary(registry: Registry, drain: Drain, request, context: grpc.aio.ServicerContext, task: Task,
                 call: Callable[[ServedModel, str], Awaitable], limiter: RateLimiter | None = None):
    """Rate limits: the request counts when it arrives; its input tokens after it ran."""
    rid = request_id_of(context, request.request_id)
    if drain.draining:
        log.info("request %s refused: the core is draining", clip(rid))
        await abort(context, shutting_down())
        return None
    with drain.track():
        t0 = time.perf_counter()
        ticket = UNLIMITED
        try:
            check_ids(request.model, request.request_id, rid)
            sm = model_for(registry, request.model, task)
            ticket = await admit(limiter, context, request.model)
            try:
                reply = await call(sm, f"{rid}#{uuid.uuid4().hex[:8]}")  # unique even when ids repeat
            except EngineError as e:
                raise from_engine_error(e) from e
        except GenapiError as e:
            log.info("request %s rejected: %s %s", clip(rid), e.code.name, clip(e.message, 1024))
            await abort(context, with_rate_state(e, ticket))
            return None
        except Exception:
            log.exception("request %s failed", clip(rid))
            await abort(context, with_rate_state(INTERNAL_ERROR, ticket))
            return None
        await ticket.settle(reply.usage.prompt_tokens)
        metrics.PROMPT_TOKENS.labels(request.model).inc(reply.usage.prompt_tokens)
        if md := ticket.metadata():
            await context.send_initial_metadata(md)
        log.info("request %s %s model=%s prompt_tokens=%d in %.3fs", rid, task.value, request.model,
                 reply.usage.prompt_tokens, time.perf_counter() - t0)
        return reply


class EmbeddingServicer(embedding_service_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: Registry, drain: Drain, limiter: RateLimiter | None = None):
        self.registry, self.drain, self.limiter = registry, drain, limiter

    async def Embed(self, request, context):
        async def call(sm: ServedModel, engine_id: str):
            result = await sm.engine.embed(embedding_request(request, engine_id))
            return embed_response(request.model, result)

        return await _unary(self.registry, self.drain, request, context, Task.EMBEDDING, call, self.limiter)


class RerankServicer(rerank_service_pb2_grpc.RerankServiceServicer):
    def __init__(self, registry: Registry, drain: Drain, limiter: RateLimiter | None = None):
        self.registry, self.drain, self.limiter = registry, drain, limiter

    async def Rerank(self, request, context):
        async def call(sm: ServedModel, engine_id: str):
            result = await sm.engine.score(score_request(request, engine_id))
            return rerank_response(request, result)

        return await _unary(self.registry, self.drain, request, context, Task.RERANK, call, self.limiter)
