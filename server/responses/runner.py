"""Running responses: one in-process GenerationService.Generate call per response (the
interactive code path, as batch lines use it), foreground or as a background task.

`execute` drives one generation into an OutputBuilder and hands each response event to
`emit`; a refusal before generation started comes back as the grpc.Status to abort
with (a foreground caller sees it as its own error), a failure after it sets the
response FAILED. With truncation AUTO, a prompt past the context drops the oldest
conversation message (never the instructions) and tries again.

`BackgroundRunner` runs background responses as asyncio tasks: QUEUED -> IN_PROGRESS ->
final status, each step a compare-and-set in the store, so a cancel from any replica
(status CANCELLED in the store) wins; a task sees such a cancel within POLL_S and stops
its generation. A running response is leased to its runner (LEASE_S, renewed while it
runs): a runner resumes the background responses a previous run of its node left
unfinished at once, and those of another node once that node's lease expired (run again
from their stored input). A background response the engine refuses for capacity
(RESOURCE_EXHAUSTED, UNAVAILABLE) waits and tries again instead of failing. Callers streaming a background response
listen to its task: they get its events as they happen and, once it ended, its stored
final state; a listener that leaves does not stop the response.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import re
import socket
import time
import uuid
from dataclasses import dataclass, replace
from typing import Awaitable, Callable

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from genapi.v1 import content_pb2
from genapi.v1 import response_service_pb2 as pb

from ..batches.inprocess import LineContext
from ..store import ResponseRecord, Store
from ..store.outage import describe, is_outage
from .conversations import append_items
from .items import input_param, items_from_json, items_to_messages, response_from_json, response_to_json
from .output import OutputBuilder
from .request import generate_request

log = logging.getLogger("genapi.responses")

POLL_S = 0.5  # how often a background task looks for a cancel made elsewhere
CLAIM_S = 2.0  # how often the store is asked for background responses nobody runs
LEASE_S = 30.0  # a running response's lease, renewed every LEASE_S / 3
TRANSIENT = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)  # retried in the background
RETRY_S = (0.1, 0.5, 1.0, 2.0, 5.0)
STATUS_NAMES = {
    pb.RESPONSE_STATUS_QUEUED: "queued", pb.RESPONSE_STATUS_IN_PROGRESS: "in_progress",
    pb.RESPONSE_STATUS_COMPLETED: "completed", pb.RESPONSE_STATUS_INCOMPLETE: "incomplete",
    pb.RESPONSE_STATUS_FAILED: "failed", pb.RESPONSE_STATUS_CANCELLED: "cancelled",
}
Emit = Callable[[pb.CreateResponseResponse], Awaitable[None]]


class ForwardContext(LineContext):
    """The slice of grpc.aio.ServicerContext that Generate uses (batches.inprocess), with
    writes going to `on_write`. A response counts against its key's rate limits (its
    x-ratelimit-* metadata is not forwarded: the Responses endpoints do not send it)."""

    exempt_from_limits = False

    def __init__(self, request_id: str, on_write):
        super().__init__(request_id)
        self._on_write = on_write

    async def write(self, message) -> None:
        await self._on_write(message)


def status_reason(status: grpc.Status) -> str:
    """The ErrorInfo reason of a core status ("" when it has none)."""
    try:
        st = rpc_status.from_call(_Trailers(status))
    except Exception:
        return ""
    for detail in st.details if st else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


class _Trailers:
    """grpc.Status seen as a call (what rpc_status.from_call reads)."""

    def __init__(self, status: grpc.Status):
        self._s = status

    def trailing_metadata(self):
        return self._s.trailing_metadata

    def code(self):
        return self._s.code

    def details(self):
        return self._s.details


# Generate's parameter names -> the Responses API's (an error's ErrorInfo `param`).
PARAMS = {"messages": "input", "max_tokens": "max_output_tokens", "response_format": "text.format",
          "logprobs": "include", "reasoning_effort": "reasoning.effort"}


def renamed_params(status: grpc.Status, rename_input=None) -> grpc.Status:
    """`status` with a Generate parameter named as the Responses API names it
    (max_tokens -> max_output_tokens, ...; messages[3].content[1] -> what
    `rename_input(param)` says, e.g. input[2].content[1], or `input` when it says None)."""
    try:
        st = rpc_status.from_call(_Trailers(status))
    except Exception:
        return status
    if st is None:
        return status
    changed, named = False, {}
    for detail in st.details:
        info = error_details_pb2.ErrorInfo()
        if not detail.Unpack(info):
            continue
        param = info.metadata.get("param", "")
        head = param.split("[", 1)[0].split(".", 1)[0]
        if head in PARAMS:
            info.metadata["param"] = ((rename_input and rename_input(param)) or PARAMS[head] if head == "messages"
                                      else PARAMS[head] + param[len(head):])
            if head == "messages" and param != head:
                named[param] = info.metadata["param"]
            detail.Pack(info)
            changed = True
    if changed:  # and the message in the same words ("max_tokens is ..." -> "max_output_tokens is ...")
        for old, new in named.items():  # "... (messages[2].content[1])" -> "... (input[1].content[1])"
            st.message = st.message.replace(old, new)
        st.message = renamed_words(st.message)
    return rpc_status.to_status(st) if changed else status


_WORDS = re.compile(r"\bmax_tokens\b|\bthe messages\b")


def renamed_words(message: str) -> str:
    """A Generate error message in the Responses API's words (max_tokens ->
    max_output_tokens, the messages -> the input)."""
    return _WORDS.sub(lambda m: "max_output_tokens" if m.group() == "max_tokens" else "the input", message)


class Refused(Exception):
    """Generation was refused before it started: `status` is the core's answer (its
    param named as the Responses API names it)."""

    def __init__(self, status: grpc.Status, rename_input=None):
        super().__init__(status.details)
        self.status = renamed_params(status, rename_input)


@dataclass
class Conversation:
    """A response's chat messages and where each came from (items_to_messages origins):
    the history items (a previous response's or a conversation's, named `history_param`
    in errors) come first, then the request's `input`."""

    messages: list
    origins: list
    n_history: int
    history_param: str

    def input_param(self, param: str) -> str | None:
        return input_param(param, self.origins, self.n_history, self.history_param)


def conversation_messages(response: pb.Response, history, new_input) -> Conversation:
    origins: list = []
    messages = items_to_messages(list(history) + list(new_input), response.parameters.instructions, origins)
    named = ("previous_response_id" if response.previous_response_id else
             "conversation" if response.conversation_id else "input")
    return Conversation(messages, origins, len(history), named)


async def execute(generation, response: pb.Response, conversation: Conversation, emit: Emit,
                  request_id: str) -> None:
    """Runs `response` (status IN_PROGRESS on entry) over the conversation's messages; its
    output, usage and final status are set on it. `emit(event)` gets the IN_PROGRESS
    snapshot once generation started, then every item and delta event. Raises Refused
    (its param named as in the Responses request) when generation was refused before it
    started."""
    conversation = replace(conversation, messages=list(conversation.messages), origins=list(conversation.origins))
    messages = conversation.messages
    auto = response.parameters.truncation == pb.TRUNCATION_AUTO
    while True:
        builder = OutputBuilder(response)
        started = False

        async def on_write(ev):
            nonlocal started
            if ev.HasField("started"):
                started = True
                if ev.HasField("usage"):
                    builder.on_event(ev)
                await emit(pb.CreateResponseResponse(response=response))
                return
            for event in builder.on_event(ev):
                await emit(event)

        ctx = ForwardContext(request_id, on_write)
        try:
            await generation.Generate(generate_request(response.parameters, messages, request_id), ctx)
        except grpc.aio.AbortError:
            pass
        if ctx.status is None:
            builder.finish(content_pb2.FINISH_REASON_STOP)  # no-op when `finished` came
            return
        if not started:
            first = 1 if messages and messages[0].role == content_pb2.ROLE_SYSTEM else 0
            if auto and len(messages) > first + 1 and status_reason(ctx.status) == "context_length_exceeded":
                del messages[first], conversation.origins[first]
                continue
            raise Refused(ctx.status, conversation.input_param)
        builder.abandon()
        response.status = pb.RESPONSE_STATUS_FAILED
        response.error.code = status_reason(ctx.status) or "server_error"
        response.error.message = ctx.status.details
        return


def finish_time(response: pb.Response) -> None:
    response.completed_at = int(time.time())


class BackgroundRunner:
    def __init__(self, store: Store, generation, holder: str | None = None):
        self.store = store
        self.generation = generation
        self.holder = holder or socket.gethostname()
        self.tasks: dict[str, asyncio.Task] = {}
        self._poller: asyncio.Task | None = None
        # Queues of the callers streaming a running response (stream_background): each gets
        # every event, then None once the response ended (or its run stopped).
        self.listeners: dict[str, list[asyncio.Queue]] = {}

    def start(self) -> None:
        """Resumes the background responses a previous run left queued or in progress, and
        takes over those whose runner's lease expired (a replica that died)."""
        self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        store_down = False  # an outage is logged once, not at every poll
        while True:
            try:
                for response_id in await asyncio.to_thread(self.store.claimable_responses, self.holder,
                                                           time.time()):
                    if response_id not in self.tasks:
                        log.info("response %s: resumed (left unfinished by a stopped runner)", response_id)
                        self.kick(response_id)
                if store_down:
                    log.info("background responses: the store is reachable again")
                store_down = False
            except Exception as e:
                if not is_outage(e):
                    log.exception("looking for background responses to resume failed")
                elif not store_down:
                    log.warning("background responses: store unavailable (%s); retrying every %gs", describe(e),
                                CLAIM_S)
                    store_down = True
            await asyncio.sleep(CLAIM_S)

    async def stop(self) -> None:
        tasks = [t for t in (self._poller, *self.tasks.values()) if t]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def kick(self, response_id: str, listener: asyncio.Queue | None = None) -> None:
        """Runs the response unless it is running already; `listener` gets its events."""
        if listener is not None:
            self.listeners.setdefault(response_id, []).append(listener)
        if response_id not in self.tasks:
            self.tasks[response_id] = asyncio.create_task(self._run(response_id))

    def unlisten(self, response_id: str, listener: asyncio.Queue) -> None:
        queues = self.listeners.get(response_id, [])
        if listener in queues:
            queues.remove(listener)

    def _emit(self, response_id: str, event) -> None:
        for q in self.listeners.get(response_id, ()):
            q.put_nowait(event)

    def cancel(self, response_id: str) -> None:
        task = self.tasks.get(response_id)
        if task is not None:
            task.cancel()

    async def _run(self, response_id: str) -> None:
        try:
            rec = await asyncio.to_thread(self.store.get_response, None, response_id)
            if rec is None or rec.status not in ("queued", "in_progress") or not await asyncio.to_thread(
                    self.store.claim_response, rec.id, self.holder, LEASE_S, time.time()):
                return  # finished, or another runner holds it
            response = response_from_json(rec.data)
            response.status = pb.RESPONSE_STATUS_IN_PROGRESS
            if not await asyncio.to_thread(self.store.set_response_status, rec.id, ("queued", "in_progress"),
                                           "in_progress", response_to_json(response)):
                return  # cancelled meanwhile
            watcher = asyncio.create_task(self._watch_cancel(rec.id, asyncio.current_task()))
            try:
                await self._execute(rec, response)
            finally:
                watcher.cancel()
            await self._save(rec, response)
        except asyncio.CancelledError:
            log.info("response %s: background run stopped", response_id)
        except Exception:
            log.exception("response %s: background run failed", response_id)
        finally:
            self.tasks.pop(response_id, None)
            self._final_snapshot(response_id)

    def _final_snapshot(self, response_id: str) -> None:
        """Ends the listeners' streams: the stored response (its final state), then None."""
        queues = self.listeners.pop(response_id, [])
        if not queues:
            return

        async def send():
            rec = await asyncio.to_thread(self.store.get_response, None, response_id)
            for q in queues:
                if rec is not None:
                    q.put_nowait(pb.CreateResponseResponse(response=response_from_json(rec.data)))
                q.put_nowait(None)
        asyncio.get_running_loop().create_task(send())

    async def _execute(self, rec: ResponseRecord, response: pb.Response) -> None:
        async def emit(event):
            self._emit(rec.id, event)

        messages = conversation_messages(response, items_from_json(rec.history), items_from_json(rec.input))
        for attempt in itertools.count():
            try:
                await execute(self.generation, response, messages, emit, f"req_{uuid.uuid4().hex}")
                return
            except Refused as e:
                if e.status.code not in TRANSIENT:
                    response.status = pb.RESPONSE_STATUS_FAILED
                    response.error.code = status_reason(e.status) or "invalid_request"
                    response.error.message = e.status.details
                    return
                # The engine is full or briefly unavailable: a background response waits its turn.
                await asyncio.sleep(RETRY_S[min(attempt, len(RETRY_S) - 1)])

    async def _save(self, rec: ResponseRecord, response: pb.Response) -> None:
        finish_time(response)
        name = STATUS_NAMES[response.status]
        if await asyncio.to_thread(self.store.set_response_status, rec.id, ("in_progress",), name,
                                   response_to_json(response)):
            log.info("response %s: background run %s", rec.id, name)
            if response.conversation_id:
                await append_items(self.store, response.conversation_id, response.output)

    async def _watch_cancel(self, response_id: str, task: asyncio.Task) -> None:
        """Stops `task` once its response is cancelled or deleted (by any replica), and
        renews its lease; a lease lost to another runner stops it too."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(POLL_S)
            try:
                rec = await asyncio.to_thread(self.store.get_response, None, response_id)
                if rec is not None and rec.status == "in_progress" and time.monotonic() - renewed > LEASE_S / 3:
                    if not await asyncio.to_thread(self.store.claim_response, response_id, self.holder, LEASE_S,
                                                   time.time()):
                        log.warning("response %s: lease lost to another runner; stopping", response_id)
                        rec = None
                    renewed = time.monotonic()
            except Exception:
                continue
            if rec is None or rec.status == "cancelled":
                task.cancel()
                return
