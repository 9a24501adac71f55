"""AdminService: live engine counters for operators, monitoring and tests, and the
caller's rate-limit state.

`get_engine_stats` is the one implementation; it also answers the deprecated
GenerationService.GetEngineStats (same messages) until that RPC is removed.
"""
from __future__ import annotations

from genapi.v1 import admin_service_pb2 as pb
from genapi.v1 import admin_service_pb2_grpc as pb_grpc

from genapi.untrusted import MAX_ID_CHARS

from ..errors import GenapiError, abort, not_found, quote, too_long
from ..interceptors.auth import current_owner
from ..limits import Budget, RateLimiter
from ..registry import Registry


def engine_stats(registry: Registry, model: str = "") -> pb.GetEngineStatsResponse:
    """Counters of every served model's engine, or of `model` only; NOT_FOUND (raised as
    GenapiError) when `model` is set and not served."""
    if len(model) > MAX_ID_CHARS:
        raise too_long("model", MAX_ID_CHARS, len(model))
    out = pb.GetEngineStatsResponse()
    for name, sm in registry.models.items():
        if model and name != model:
            continue
        out.engines.add(model=name, **vars(sm.engine.stats()))
    if model and not out.engines:
        raise not_found(f"The model `{quote(model)}` does not exist.", "model", "model_not_found")
    return out


async def get_engine_stats(registry: Registry, request: pb.GetEngineStatsRequest, context):
    """The GetEngineStats handler shared by AdminService and the deprecated
    GenerationService RPC."""
    try:
        return engine_stats(registry, request.model)
    except GenapiError as e:
        await abort(context, e)


def _budget(b: Budget | None) -> pb.RateLimitBudget | None:
    if b is None:
        return None
    return pb.RateLimitBudget(limit=b.limit, remaining=max(0, b.remaining), reset_ms=max(0, round(b.reset_s * 1000)))


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, registry: Registry, limiter: RateLimiter | None = None):
        self.registry = registry
        self.limiter = limiter

    async def GetEngineStats(self, request: pb.GetEngineStatsRequest, context):
        return await get_engine_stats(self.registry, request, context)

    async def GetRateLimits(self, request: pb.GetRateLimitsRequest, context):
        """The caller's budgets, also as x-ratelimit-* initial metadata; UNAVAILABLE when
        the limits storage cannot be reached."""
        if self.limiter is None:
            return pb.GetRateLimitsResponse()
        try:
            state = await self.limiter.state_of(current_owner())
        except GenapiError as e:
            await abort(context, e)
        if md := state.metadata():
            await context.send_initial_metadata(md)
        return pb.GetRateLimitsResponse(requests=_budget(state.requests), tokens=_budget(state.tokens))
