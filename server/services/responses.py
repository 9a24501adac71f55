"""ResponseService: responses and conversations of the caller (its API key name).

CreateResponse builds the conversation (the stored chain of `previous_response_id`, or
the conversation's items, then the new input), runs it through GenerationService's own
code (server/responses/runner.py) and stores the result unless `store` is false. A
background response is stored QUEUED and run by the BackgroundRunner; its only event is
that QUEUED snapshot, unless `stream_background` asks to follow the run. Another owner's response or conversation answers exactly like a
missing one (NOT_FOUND)."""
from __future__ import annotations

import asyncio
import re
import time
import uuid

from genapi.v1 import content_pb2
from genapi.v1 import response_service_pb2 as pb
from genapi.v1 import response_service_pb2_grpc as pb_grpc

from ..errors import GenapiError, abort, invalid, not_found, quote
from ..interceptors.auth import current_owner
from ..responses.conversations import append_items
from ..responses.items import (
    item_from_json,
    items_from_json,
    items_to_json,
    response_from_json,
    response_to_json,
    with_ids,
)
from ..responses.runner import STATUS_NAMES, BackgroundRunner, Refused, conversation_messages, execute, finish_time
from ..store import ConversationRecord, ResponseRecord, Store
from .generation import chat_model, request_id_of

RESPONSE_ID = re.compile(r"resp_[0-9a-f]{32}")
CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{32}")
MAX_METADATA_PAIRS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_PAGE, DEFAULT_PAGE = 100, 20
MAX_ITEMS_PER_ADD = 20
MAX_TOP_LOGPROBS = 20
VALID_ROLES = (content_pb2.ROLE_SYSTEM, content_pb2.ROLE_DEVELOPER, content_pb2.ROLE_USER, content_pb2.ROLE_ASSISTANT)


def response_not_found(response_id: str, param: str = "response_id") -> GenapiError:
    return not_found(f"Response with id {quote(response_id)} not found.", param, "response_not_found")


def conversation_not_found(conversation_id: str, param: str = "conversation_id") -> GenapiError:
    return not_found(f"Conversation with id {quote(conversation_id)} not found.", param, "conversation_not_found")


def check_metadata(metadata, param: str = "metadata") -> None:
    if len(metadata) > MAX_METADATA_PAIRS or any(
            len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE for k, v in metadata.items()):
        raise invalid(f"Invalid '{param}': at most {MAX_METADATA_PAIRS} pairs, keys up to {MAX_METADATA_KEY} "
                      f"and values up to {MAX_METADATA_VALUE} characters.", param)


def check_items(items, param: str) -> None:
    """Every item has a kind; messages a role the input may use; outputs a call id."""
    for i, item in enumerate(items):
        kind = item.WhichOneof("item")
        where = f"{param}[{i}]"
        if kind is None:
            raise invalid(f"Invalid '{where}': the item has no type.", where)
        if kind == "message" and item.message.role not in VALID_ROLES:
            raise invalid(f"Invalid '{where}.role'.", f"{where}.role")
        if kind == "function_call_output" and not item.function_call_output.call_id:
            raise invalid(f"Missing '{where}.call_id'.", f"{where}.call_id")
        if kind == "function_call" and not (item.function_call.call_id and item.function_call.name):
            raise invalid(f"Invalid '{where}': a function_call needs call_id and name.", where)


def check_links(history, items, param: str, answers_need_calls: bool = True) -> None:
    """`items` (after `history`) repeat no item id, and with `answers_need_calls` every
    function_call_output answers a function_call made before it (as OpenAI: "No tool call
    found for function call output with call_id ...")."""
    seen = {item.id for item in history if item.id}
    calls = {item.function_call.call_id for item in history if item.WhichOneof("item") == "function_call"}
    for i, item in enumerate(items):
        where = f"{param}[{i}]"
        if item.id:
            if item.id in seen:
                raise invalid(f"Duplicate item found with id {quote(item.id)}.", f"{where}.id")
            seen.add(item.id)
        kind = item.WhichOneof("item")
        if kind == "function_call":
            calls.add(item.function_call.call_id)
        elif kind == "function_call_output" and answers_need_calls and item.function_call_output.call_id not in calls:
            raise invalid(f"No tool call found for function call output with call_id "
                          f"{quote(item.function_call_output.call_id)}.", f"{where}.call_id")


def page(items: list, size: int | None, after: str, order: int) -> tuple[list, bool]:
    """One page of `items` (oldest first as given): `order` DESC (default) newest first,
    starting after the item `after` (when it is in the list)."""
    size = DEFAULT_PAGE if size is None else size
    if not 1 <= size <= MAX_PAGE:
        raise invalid(f"Invalid 'limit': expected 1 to {MAX_PAGE}.", "limit")
    ordered = list(items) if order == pb.LIST_ORDER_ASC else list(reversed(items))
    if after:
        ids = [i.id for i in ordered]
        if after not in ids:
            raise invalid(f"Invalid 'after': no item {quote(after)} in this list.", "after")
        ordered = ordered[ids.index(after) + 1:]
    return ordered[:size], len(ordered) > size


class ResponseServicer(pb_grpc.ResponseServiceServicer):
    def __init__(self, store: Store, generation, runner: BackgroundRunner):
        self.store = store
        self.generation = generation
        self.runner = runner

    # ---- lookups -----------------------------------------------------------------------
    async def _response(self, response_id: str, param: str = "response_id") -> ResponseRecord:
        rec = await asyncio.to_thread(self.store.get_response, current_owner(), response_id) \
            if RESPONSE_ID.fullmatch(response_id) else None
        if rec is None or not rec.stored:
            raise response_not_found(response_id, param)
        return rec

    async def _conversation(self, conversation_id: str, param: str = "conversation_id") -> ConversationRecord:
        rec = await asyncio.to_thread(self.store.get_conversation, current_owner(), conversation_id) \
            if CONVERSATION_ID.fullmatch(conversation_id) else None
        if rec is None:
            raise conversation_not_found(conversation_id, param)
        return rec

    # ---- create ------------------------------------------------------------------------
    async def CreateResponse(self, request: pb.CreateResponseRequest, context):
        rid = request_id_of(context, request.request_id)
        try:
            response, rec, history, new_input = await self._prepare(request)
        except GenapiError as e:
            await abort(context, e)
            return
        params = response.parameters
        if params.background:
            await asyncio.to_thread(self.store.put_response, rec)
            if response.conversation_id:
                await append_items(self.store, response.conversation_id, new_input)
            await context.write(pb.CreateResponseResponse(response=response))
            if not request.stream_background:
                self.runner.kick(rec.id)
                return
            events: asyncio.Queue = asyncio.Queue()
            self.runner.kick(rec.id, events)
            try:
                while (event := await events.get()) is not None:
                    await context.write(event)
            finally:  # the caller may leave: the response runs on
                self.runner.unlisten(rec.id, events)
            return
        with self.generation.drain.track():  # a drain waits until the response is stored too
            try:
                await execute(self.generation, response, conversation_messages(response, history, new_input),
                              context.write, rid)
            except Refused as e:
                await context.abort_with_status(e.status)
                return
            finish_time(response)
            rec.status, rec.data = STATUS_NAMES[response.status], response_to_json(response)
            if rec.stored:
                await asyncio.to_thread(self.store.put_response, rec)
            if response.conversation_id:
                await append_items(self.store, response.conversation_id, list(new_input) + list(response.output))
        await context.write(pb.CreateResponseResponse(response=response))

    async def _prepare(self, request: pb.CreateResponseRequest):
        """Checks the request; the response (IN_PROGRESS, or QUEUED in the background), its
        record, the history items before the new input, and the new input (with ids)."""
        params = request.parameters
        if not params.model:
            raise invalid("Missing required parameter: 'model'.", "model")
        check_metadata(params.metadata)
        if params.HasField("top_logprobs") and params.top_logprobs > MAX_TOP_LOGPROBS:
            raise invalid(f"Invalid 'top_logprobs': expected 0 to {MAX_TOP_LOGPROBS}.", "top_logprobs")
        stored = not params.HasField("store") or params.store
        if params.background and not stored:
            raise invalid("background responses must be stored: set 'store' to true.", "background")
        if request.previous_response_id and request.conversation_id:
            raise invalid("Use either 'previous_response_id' or 'conversation', not both.", "conversation")
        check_items(request.input, "input")
        new_input = with_ids(request.input)
        history = []
        if request.previous_response_id:
            prev = await self._response(request.previous_response_id, "previous_response_id")
            if prev.status in ("queued", "in_progress"):
                raise invalid(f"The response {quote(prev.id)} is still {prev.status}.", "previous_response_id")
            history = (items_from_json(prev.history) + items_from_json(prev.input)
                       + list(response_from_json(prev.data).output))
        elif request.conversation_id:
            await self._conversation(request.conversation_id, "conversation")
            rows = await asyncio.to_thread(self.store.conversation_items, request.conversation_id)
            history = [item_from_json(r.data) for r in rows]
        if not history and not new_input:
            raise invalid("Missing required parameter: 'input'.", "input")
        check_links(history, request.input, "input")
        if params.background:
            self.generation_model_check(params.model)
        response = pb.Response(
            id=f"resp_{uuid.uuid4().hex}", created_at=int(time.time()), parameters=params,
            status=pb.RESPONSE_STATUS_QUEUED if params.background else pb.RESPONSE_STATUS_IN_PROGRESS,
            previous_response_id=request.previous_response_id, conversation_id=request.conversation_id)
        rec = ResponseRecord(id=response.id, owner=current_owner(), created_at=response.created_at,
                             status=STATUS_NAMES[response.status], data=response_to_json(response),
                             history=items_to_json(history), input=items_to_json(new_input),
                             background=params.background, stored=stored)
        return response, rec, history, new_input

    def generation_model_check(self, model: str) -> None:
        """A background response's model is checked at once (NOT_FOUND for an unknown one)."""
        chat_model(self.generation.registry, model)

    # ---- responses ---------------------------------------------------------------------
    async def GetResponse(self, request: pb.GetResponseRequest, context):
        try:
            rec = await self._response(request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        return pb.GetResponseResponse(response=response_from_json(rec.data))

    async def DeleteResponse(self, request: pb.DeleteResponseRequest, context):
        try:
            rec = await self._response(request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        await asyncio.to_thread(self.store.delete_response, current_owner(), rec.id)
        self.runner.cancel(rec.id)
        return pb.DeleteResponseResponse(id=rec.id)

    async def CancelResponse(self, request: pb.CancelResponseRequest, context):
        try:
            rec = await self._response(request.id)
            if not rec.background:
                raise invalid("Only background responses can be cancelled.", "response_id")
        except GenapiError as e:
            await abort(context, e)
            return
        response = response_from_json(rec.data)
        if rec.status in ("queued", "in_progress"):
            response.status = pb.RESPONSE_STATUS_CANCELLED
            finish_time(response)
            if await asyncio.to_thread(self.store.set_response_status, rec.id, ("queued", "in_progress"),
                                       "cancelled", response_to_json(response)):
                self.runner.cancel(rec.id)
            rec = await asyncio.to_thread(self.store.get_response, None, rec.id)
            response = response_from_json(rec.data)
        return pb.CancelResponseResponse(response=response)

    async def ListInputItems(self, request: pb.ListInputItemsRequest, context):
        try:
            rec = await self._response(request.id)
            items, more = page(items_from_json(rec.input),
                               request.page_size if request.HasField("page_size") else None,
                               request.page_token, request.order)
        except GenapiError as e:
            await abort(context, e)
            return
        return pb.ListInputItemsResponse(items=items, has_more=more)

    # ---- conversations -----------------------------------------------------------------
    def _conversation_proto(self, rec: ConversationRecord) -> pb.Conversation:
        return pb.Conversation(id=rec.id, created_at=rec.created_at, metadata=rec.metadata)

    async def CreateConversation(self, request: pb.CreateConversationRequest, context):
        try:
            check_metadata(request.metadata)
            check_items(request.items, "items")
            check_links([], request.items, "items", answers_need_calls=False)
            if len(request.items) > MAX_ITEMS_PER_ADD:
                raise invalid(f"Invalid 'items': at most {MAX_ITEMS_PER_ADD} at a time.", "items")
        except GenapiError as e:
            await abort(context, e)
            return
        rec = ConversationRecord(id=f"conv_{uuid.uuid4().hex}", owner=current_owner(), created_at=int(time.time()),
                                 metadata=dict(request.metadata))
        await asyncio.to_thread(self.store.put_conversation, rec)
        await append_items(self.store, rec.id, with_ids(request.items))
        return pb.CreateConversationResponse(conversation=self._conversation_proto(rec))

    async def GetConversation(self, request: pb.GetConversationRequest, context):
        try:
            rec = await self._conversation(request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        return pb.GetConversationResponse(conversation=self._conversation_proto(rec))

    async def UpdateConversation(self, request: pb.UpdateConversationRequest, context):
        try:
            rec = await self._conversation(request.id)
            check_metadata(request.metadata)
        except GenapiError as e:
            await abort(context, e)
            return
        await asyncio.to_thread(self.store.update_conversation, rec.owner, rec.id, dict(request.metadata))
        rec.metadata = dict(request.metadata)
        return pb.UpdateConversationResponse(conversation=self._conversation_proto(rec))

    async def DeleteConversation(self, request: pb.DeleteConversationRequest, context):
        try:
            rec = await self._conversation(request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        await asyncio.to_thread(self.store.delete_conversation, rec.owner, rec.id)
        return pb.DeleteConversationResponse(id=rec.id)

    async def CreateConversationItems(self, request: pb.CreateConversationItemsRequest, context):
        try:
            rec = await self._conversation(request.id)
            check_items(request.items, "items")
            if not 1 <= len(request.items) <= MAX_ITEMS_PER_ADD:
                raise invalid(f"Invalid 'items': expected 1 to {MAX_ITEMS_PER_ADD} items.", "items")
            rows = await asyncio.to_thread(self.store.conversation_items, request.id)
            check_links([item_from_json(r.data) for r in rows], request.items, "items", answers_need_calls=False)
        except GenapiError as e:
            await abort(context, e)
            return
        items = with_ids(request.items)
        await append_items(self.store, rec.id, items)
        return pb.CreateConversationItemsResponse(items=items)

    async def _items(self, conversation_id: str) -> list[pb.Item]:
        rec = await self._conversation(conversation_id)
        rows = await asyncio.to_thread(self.store.conversation_items, rec.id)
        return [item_from_json(r.data) for r in rows]

    async def ListConversationItems(self, request: pb.ListConversationItemsRequest, context):
        try:
            items, more = page(await self._items(request.id),
                               request.page_size if request.HasField("page_size") else None,
                               request.page_token, request.order)
        except GenapiError as e:
            await abort(context, e)
            return
        return pb.ListConversationItemsResponse(items=items, has_more=more)

    async def GetConversationItem(self, request: pb.GetConversationItemRequest, context):
        try:
            for item in await self._items(request.id):
                if item.id == request.item_id:
                    return pb.GetConversationItemResponse(item=item)
            raise not_found(f"Item with id {quote(request.item_id)} not found.", "item_id", "item_not_found")
        except GenapiError as e:
            await abort(context, e)

    async def DeleteConversationItem(self, request: pb.DeleteConversationItemRequest, context):
        try:
            rec = await self._conversation(request.id)
            if not await asyncio.to_thread(self.store.delete_conversation_item, rec.id, request.item_id):
                raise not_found(f"Item with id {quote(request.item_id)} not found.", "item_id", "item_not_found")
        except GenapiError as e:
            await abort(context, e)
            return
        return pb.DeleteConversationItemResponse(conversation=self._conversation_proto(rec))
