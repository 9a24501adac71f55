"""GenerationService: typed chat in, neutral event stream out."""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid

import grpc

from genapi.v1 import admin_service_pb2, common_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from genapi.config import Task
from genapi.deltas import WHOLE, WHOLE_EVENTS, coalesce, merge_deltas
from genapi.untrusted import clip

from ..chat.events import ChatEvents
from ..chat.output import THINKING_SWITCH, OutputConventions, check_options
from ..chat.reasoning import prompt_opens_thinking
from ..chat.tool_grammar import think_first, tool_structural_tag
from ..chat.media_request import chat_prompt, check_request_media, load_media
from ..convert.generation import (MAX_N, check_identifiers, check_request, least_budget_tokens, resolve_max_tokens,
                                  with_prompt)
from ..convert.tools import tool_plan
from ..drain import Drain, shutting_down
from ..engines.base import Constraint, EngineError, EngineInvalidRequest, close_events, wait_ready
from ..errors import INTERNAL_ERROR, GenapiError, abort, from_engine_error, invalid, quote
from .. import metrics
from ..limits import UNLIMITED, RateLimiter, Ticket, admit
from ..media.policy import MediaPolicy
from ..registry import Registry
from .admin import get_engine_stats
from .lookup import model_for

log = logging.getLogger("genapi.generation")

# Prompt tokens decoded to see whether the generation prompt opened a thinking block.
PROMPT_TAIL_TOKENS = 16


def request_id_of(context: grpc.aio.ServicerContext, request_id: str) -> str:
    if request_id:
        return request_id
    for k, v in context.invocation_metadata() or ():
        if k == "x-request-id" and v:
            return v
    return f"req_{uuid.uuid4().hex}"


def wants_whole(context: grpc.aio.ServicerContext) -> bool:
    """Whether the caller reads the whole answer before replying (genapi.deltas.WHOLE)."""
    return WHOLE in (context.invocation_metadata() or ())


def chat_model(registry: Registry, name: str):
    return model_for(registry, name, Task.CHAT)


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, registry: Registry, drain: Drain | None = None, limiter: RateLimiter | None = None,
                 media_policy: MediaPolicy | None = None):
        self.registry = registry
        self.drain = drain or Drain()
        self.limiter = limiter
        self.media_policy = media_policy or MediaPolicy()  # [media]: fetching and decoding image parts
        for sm in registry.models.values():
            if sm.config.task is Task.CHAT:
                try:
                    check_options(sm.config.options)
                except ValueError as e:
                    raise ValueError(f"model {sm.config.name!r}: {e}") from None
        self._conventions: dict[str, OutputConventions] = {}

    def conventions(self, sm) -> OutputConventions:
        """The model's tool-call and reasoning conventions (resolved once, from its options
        and chat template)."""
        conv = self._conventions.get(sm.config.name)
        if conv is None:
            template = getattr(sm.engine.chat_info.tokenizer, "chat_template", None)
            conv = self._conventions[sm.config.name] = OutputConventions.resolve(sm.config.options, template)
        return conv

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> None:
        """Writes the events with `context.write` from a coroutine (not an async generator):
        grpc.aio cancels this coroutine wherever it waits when the caller goes away
        (cancel, deadline, disconnect), so the `finally` that ends the engine request
        always runs, at once. An async generator parked at a `yield` would only be closed
        whenever it got garbage-collected, leaving its request generating."""
        rid = request_id_of(context, request.request_id)
        if self.drain.draining:
            log.info("request %s refused: the core is draining", clip(rid))
            await abort(context, shutting_down())
            return
        with self.drain.track():
            await self._generate(request, context, rid)

    async def _generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext, rid: str) -> None:
        # Engine ids are unique even when clients reuse an x-request-id.
        engine_id = f"{rid}#{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        usage = common_pb2.Usage()
        finish = []
        ticket: Ticket = UNLIMITED
        try:
            check_identifiers(request, rid)  # bounded before anything echoes or logs them
            sm = chat_model(self.registry, request.model)
            ticket = await admit(self.limiter, context, request.model)  # requests per minute
            engine, info = sm.engine, sm.engine.chat_info
            max_output = sm.config.max_output_tokens
            gen = check_request(request, engine_id, vocab=info.vocab_size, max_output=max_output,
                                max_n=min(MAX_N, sm.config.max_batch or MAX_N))
            plan = tool_plan(request)
            conv = self.conventions(sm)
            if plan.mode != "none" and conv.tool_parser is None:
                raise invalid(f"The model `{quote(request.model)}` has no tool-call format (set its tool_parser "
                              "option).", "tools", "unsupported_parameter")
            parts = check_request_media(request, info, self.media_policy)  # kinds, roles, counts: no fetch
            try:
                # The cheap refusals (queue full, budget short of n × max_tokens) come
                # before fetching and decoding media (seconds, megabytes), templating and
                # tokenizing (milliseconds each): a burst beyond capacity is refused at
                # once instead of queueing behind that work. A fetch holds the place for
                # at most [media] fetch_timeout_s.
                place = engine.reserve(gen.n, least_budget_tokens(request, gen.n))
                try:
                    media = await load_media(parts, info, self.media_policy)
                    prompt_ids, gen.media = await asyncio.to_thread(
                        chat_prompt, info, request.messages, plan.tools,
                        template_kwargs(conv, request.reasoning_effort), media,
                        lambda n: resolve_max_tokens(request, n, info.context_length, max_output))
                    del media  # the engine request holds the processor's arrays now
                    with_prompt(gen, request, prompt_ids, context=info.context_length, max_output=max_output)
                    # tokens per minute: the prompt and every choice's whole max_tokens, up front
                    await ticket.charge(len(prompt_ids) + gen.n * gen.max_tokens, request.model)
                    thinking = conv.reasoning_markers is not None and prompt_opens_thinking(
                        info.tokenizer.decode(prompt_ids[-PROMPT_TAIL_TOKENS:]), conv.reasoning_markers)
                    tool_constraint = constrain_tools(gen, plan, conv, thinking)
                    if thinking and gen.constraint is not None and not tool_constraint:
                        gen.constraint = think_first(gen.constraint, conv.reasoning_markers[1])
                    events = engine.generate(gen, place)
                    # The engine has the request: this frame, alive for the whole
                    # generation, keeps none of it (its media arrays are megabytes).
                    n, max_tokens, gen = gen.n, gen.max_tokens, None
                finally:
                    place.release()  # the request never got to the engine (a no-op once it did)
            except EngineError as e:
                raise from_engine_error(e) from e
        except GenapiError as e:
            log.info("request %s rejected: %s %s", clip(rid), e.code.name, clip(e.message, 1024))
            await ticket.settle(0)
            await abort(context, with_rate_state(e, ticket))
            return
        except Exception:  # a bug, not bad input: log it, tell the caller nothing internal
            log.exception("request %s failed before generation", clip(rid))
            await ticket.settle(0)
            await abort(context, with_rate_state(INTERNAL_ERROR, ticket))
            return
        mapper = ChatEvents(conv, usage, n, tools=plan.mode != "none", parallel=plan.parallel, thinking=thinking,
                            constrained=tool_constraint)
        # From here on the engine request exists: every way out goes through `finally`.
        try:
            try:
                await wait_ready(events)  # a constraint's grammar compiled (or bad input)
            except EngineInvalidRequest as e:
                err = from_engine_error(e)
                if tool_constraint:  # the grammar that failed is that of the tools
                    err.param = "tools"
                log.info("request %s rejected: %s %s", clip(rid), err.code.name, clip(err.message, 1024))
                await abort(context, err)
            usage.prompt_tokens = usage.total_tokens = len(prompt_ids)
            log.info("request %s model=%s prompt_tokens=%d max_tokens=%d n=%d", rid, request.model,
                     len(prompt_ids), max_tokens, n)
            if md := ticket.metadata():  # the x-ratelimit-* state, before the first event
                await context.send_initial_metadata(md)
            started = pb.GenerateResponse(
                usage=usage, started=pb.Started(request_id=rid, model=request.model, max_tokens=max_tokens))
            whole = wants_whole(context)
            held: list[pb.GenerateResponse] = [started] if whole else []  # a WHOLE caller's events not sent yet
            if not whole:
                await context.write(started)
            last_token_at = None
            ttft, itl = metrics.TTFT.labels(request.model), metrics.ITL.labels(request.model)
            take_ready = getattr(events, "take_ready", None)
            async for ev in events:
                # Events that piled up while the last write waited go out together, their
                # text deltas merged once the backlog says the reader is behind
                # (genapi/deltas.py): fewer, larger messages instead of an unbounded backlog.
                batch = [ev, *take_ready()] if take_ready is not None else [ev]
                if tokens := sum(getattr(e, "num_tokens", 0) for e in batch):
                    now = time.perf_counter()
                    if last_token_at is None:
                        ttft.observe(now - t0)
                    else:
                        itl.observe((now - last_token_at) / tokens)
                    last_token_at = now
                responses = []
                for e in batch:
                    responses += mapper.on_event(e)
                    if mapper.done:
                        break
                if whole:
                    held += responses
                    if len(held) >= WHOLE_EVENTS:
                        for response in merge_deltas(held, interleaved=True):
                            await context.write(response)
                        held = []
                else:
                    for response in coalesce(responses, len(batch)):
                        await context.write(response)
                if mapper.done:  # every choice made its one tool call: end the engine request
                    break
            for response in merge_deltas(held, interleaved=True):
                await context.write(response)
            finish = mapper.finished + ["tool_calls"] * len(mapper.closed)
        except asyncio.CancelledError:  # the caller left (cancel, deadline, disconnect), or shutdown
            if self.drain.expired:
                log.info("request %s cancelled after %d tokens: the drain grace period is over", rid,
                         usage.completion_tokens)
            else:
                log.info("request %s cancelled by the client after %d tokens", rid, usage.completion_tokens)
            raise
        except EngineError as e:
            log.warning("request %s failed mid-stream: %s", rid, clip(e, 1024))
            await abort(context, GenapiError(grpc.StatusCode.INTERNAL, str(e), "engine_error"))
        except grpc.aio.AbortError:
            raise
        except Exception:
            if context.cancelled() or context.done():  # a write raced the caller leaving
                log.info("request %s cancelled by the client after %d tokens", rid, usage.completion_tokens)
                return  # the call is over: nothing to report to anyone
            log.exception("request %s failed mid-stream", rid)
            await abort(context, INTERNAL_ERROR)
        else:
            elapsed = time.perf_counter() - t0
            log.info("request %s done: finish=%s completion_tokens=%d in %.3fs", rid, ",".join(finish),
                     usage.completion_tokens, elapsed)
            metrics.E2E.labels(request.model).observe(elapsed)
            for reason in finish:
                metrics.SUCCESS.labels(request.model, reason).inc()
        finally:
            await close_events(events)  # aborts the engine request unless it ended
            metrics.PROMPT_TOKENS.labels(request.model).inc(usage.prompt_tokens)
            metrics.GENERATION_TOKENS.labels(request.model).inc(usage.completion_tokens)
            await ticket.settle(usage.prompt_tokens + usage.completion_tokens)  # refund the unused

    async def GetEngineStats(self, request: admin_service_pb2.GetEngineStatsRequest, context):
        """Deprecated alias of AdminService.GetEngineStats, kept for one release."""
        return await get_engine_stats(self.registry, request, context)


def with_rate_state(err: GenapiError, ticket: Ticket) -> GenapiError:
    """`err` carrying the caller's x-ratelimit-* state in its trailers (a copy: module-level
    errors are shared)."""
    if err.metadata or not (md := ticket.metadata()):
        return err
    return err.with_metadata(md)


def constrain_tools(gen, plan, conv: OutputConventions, thinking: bool) -> bool:
    """Sets `gen.constraint` to the tool-call grammar (chat.tool_grammar) when tools are in
    use; True when it did. A response_format constraint wins over `auto` (the output is
    then that JSON, not calls); with a forced call the two contradict: INVALID_ARGUMENT."""
    tag = tool_structural_tag(plan, conv.tool_parser, conv.reasoning_markers[1] if thinking else None)
    if tag is None:
        return False
    if gen.constraint is not None:
        if plan.mode == "auto":
            return False
        raise invalid("response_format cannot be combined with tool_choice 'required' or a named function",
                      "response_format")
    gen.constraint = Constraint("structural_tag", json.dumps(tag))
    return True


EFFORT_THINKS = {pb.REASONING_EFFORT_NONE: False}


def template_kwargs(conv: OutputConventions, effort: int) -> dict:
    """`reasoning_effort` -> the template's thinking switch: `none` turns it off, any
    other value on; unset (or a template without a switch) leaves the template's default."""
    if not conv.thinking_switch or effort == pb.REASONING_EFFORT_UNSPECIFIED:
        return {}
    return {THINKING_SWITCH: EFFORT_THINKS.get(effort, True)}
