"""Runs one request through a servicer in-process, the way a gRPC call would: the
interactive code path, with a stand-in for the slice of grpc.aio.ServicerContext the
servicers use (metadata, write, abort, cancelled/done)."""
from __future__ import annotations

import grpc


class LineContext:
    """Collects what a servicer writes; `status` is the grpc.Status it aborted with.
    Batch lines are not counted against per-key rate limits (server/limits.py)."""

    exempt_from_limits = True

    def __init__(self, request_id: str):
        self._metadata = (("x-request-id", request_id),)
        self.events: list = []
        self.status: grpc.Status | None = None

    def invocation_metadata(self):
        return self._metadata

    async def send_initial_metadata(self, metadata) -> None:
        pass

    async def write(self, message) -> None:
        self.events.append(message)

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise grpc.aio.AbortError()

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return self.status is not None


async def run_generate(generation, request, request_id: str) -> LineContext:
    """GenerationService.Generate in-process; the events (or status) are on the result."""
    ctx = LineContext(request_id)
    try:
        await generation.Generate(request, ctx)
    except grpc.aio.AbortError:
        pass
    return ctx


async def run_embed(embedding, request, request_id: str) -> LineContext:
    """EmbeddingService.Embed in-process; the one EmbedResponse (or status) is on the result."""
    ctx = LineContext(request_id)
    try:
        ctx.events.append(await embedding.Embed(request, ctx))
    except grpc.aio.AbortError:
        pass
    return ctx


#: LineCodec.service -> how the runner executes a line of it.
EXECUTORS = {"generation": run_generate, "embedding": run_embed}
