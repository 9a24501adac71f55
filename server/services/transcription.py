"""TranscriptionService: a server-streaming call on a Whisper engine.

Same path as the other servicers: bounded identifiers, the draining refusal, the model
lookup by task, proto -> engine request (convert/transcription.py), engine errors mapped
once (server.errors.from_engine_error). The audio is decoded before the first event, so
bad audio is an ordinary INVALID_ARGUMENT status with no event sent. Events are written
from a coroutine (as GenerationService does): a caller that leaves cancels it wherever it
waits, and the `finally` closes the engine stream, which aborts the request's windows.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from genapi.config import Task
from genapi.untrusted import clip
from genapi.v1 import transcription_service_pb2_grpc as pb_grpc

from ..convert.embedding import check_ids
from ..convert.transcription import event_protos, transcription_request
from ..drain import Drain, shutting_down
from ..engines.base import EngineError, EngineInvalidRequest, close_events
from ..errors import INTERNAL_ERROR, GenapiError, abort, from_engine_error
from ..limits import UNLIMITED, RateLimiter, admit
from ..registry import Registry
from .generation import request_id_of, with_rate_state
from .lookup import model_for

log = logging.getLogger("genapi.transcription")


class TranscriptionServicer(pb_grpc.TranscriptionServiceServicer):
    def __init__(self, registry: Registry, drain: Drain, limiter: RateLimiter | None = None):
        self.registry, self.drain, self.limiter = registry, drain, limiter  # counts requests; audio has no token charge

    async def Transcribe(self, request, context: grpc.aio.ServicerContext) -> None:
        rid = request_id_of(context, request.request_id)
        if self.drain.draining:
            log.info("request %s refused: the core is draining", clip(rid))
            await abort(context, shutting_down())
            return
        with self.drain.track():
            await self._transcribe(request, context, rid)

    async def _transcribe(self, request, context, rid: str) -> None:
        t0 = time.perf_counter()
        events = None
        ticket = UNLIMITED
        try:
            check_ids(request.model, request.request_id, rid)
            sm = model_for(self.registry, request.model, Task.TRANSCRIPTION)
            ticket = await admit(self.limiter, context, request.model)  # requests per minute
            req = transcription_request(request, f"{rid}#{uuid.uuid4().hex[:8]}")
            events = sm.engine.transcribe(req)
            try:
                first = await events.__anext__()  # decodes the audio: bad input fails here
            except EngineError as e:
                raise from_engine_error(e) from e
        except GenapiError as e:
            log.info("request %s rejected: %s %s", clip(rid), e.code.name, clip(e.message, 1024))
            await abort(context, with_rate_state(e, ticket))
            if events is not None:
                await close_events(events)
            return
        except Exception:
            log.exception("request %s failed before transcription", clip(rid))
            if events is not None:
                await close_events(events)
            await abort(context, with_rate_state(INTERNAL_ERROR, ticket))
            return
        try:
            if md := ticket.metadata():
                await context.send_initial_metadata(md)
            log.info("request %s transcription model=%s task=%s file=%s bytes=%d duration=%.2fs windows=%d", rid,
                     request.model, req.task, clip(request.filename, 64) or "-", len(request.audio),
                     first.duration_s, first.windows)
            for msg in event_protos(first, req.task):
                await context.write(msg)
            async for ev in events:
                for msg in event_protos(ev, req.task):
                    await context.write(msg)
        except asyncio.CancelledError:
            log.info("request %s cancelled by the client", rid)
            raise
        except EngineInvalidRequest as e:
            await abort(context, from_engine_error(e))
        except EngineError as e:
            log.warning("request %s failed mid-stream: %s", rid, clip(e, 1024))
            await abort(context, GenapiError(grpc.StatusCode.INTERNAL, str(e), "engine_error"))
        except grpc.aio.AbortError:
            raise
        except Exception:
            if context.cancelled() or context.done():
                log.info("request %s cancelled by the client", rid)
                return
            log.exception("request %s failed mid-stream", rid)
            await abort(context, INTERNAL_ERROR)
        else:
            log.info("request %s done in %.3fs", rid, time.perf_counter() - t0)
        finally:
            await close_events(events)
