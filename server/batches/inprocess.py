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


async def run_call(method, request, request_id: str) -> LineContext:
    """A servicer method in-process: what a streaming method writes, or the one reply of a
    unary one, is on the result's `events` (its abort status on `status`)."""
    ctx = LineContext(request_id)
    try:
        reply = await method(request, ctx)
        if reply is not None:  # unary: the reply; streaming methods write their events
            ctx.events.append(reply)
    except grpc.aio.AbortError:
        pass
    return ctx


#: LineCodec.service -> (the servicer of it) -> the method a line runs through. Responses
#: run as the current owner (the batch's).
EXECUTORS = {
    "generation": lambda generation, request, rid: run_call(generation.Generate, request, rid),
    "embedding": lambda embedding, request, rid: run_call(embedding.Embed, request, rid),
    "responses": lambda responses, request, rid: run_call(responses.CreateResponse, request, rid),
}
