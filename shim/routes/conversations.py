"""/v1/conversations: create, retrieve, update, delete, and the items sub-resource
(create, list, retrieve, delete). The core keeps them (ResponseService)."""
from __future__ import annotations

from flask import Blueprint, request

from genapi.v1 import response_service_pb2 as pb
from shim.body import read_json_object
from shim.errors import json_response
from shim.protocol.files import query_int
from shim.protocol.responses import (
    validate_conversation_create,
    validate_conversation_update,
    validate_items_create,
)
from shim.routes.common import core, unary
from shim.routes.responses import list_order
from shim.translate.files import list_page
from shim.translate.responses import conversation_to_dict, item_to_dict, items_to_proto

bp = Blueprint("conversations", __name__)


@bp.post("/v1/conversations")
def create_conversation():
    body = validate_conversation_create(read_json_object())
    req = pb.CreateConversationRequest(metadata=body.get("metadata") or {}, items=items_to_proto(body.get("items")))
    return json_response(conversation_to_dict(unary(core().responses.CreateConversation, req).conversation))


@bp.get("/v1/conversations/<conversation_id>")
def get_conversation(conversation_id: str):
    reply = unary(core().responses.GetConversation, pb.GetConversationRequest(id=conversation_id))
    return json_response(conversation_to_dict(reply.conversation))


@bp.post("/v1/conversations/<conversation_id>")
def update_conversation(conversation_id: str):
    body = validate_conversation_update(read_json_object())
    reply = unary(core().responses.UpdateConversation,
                  pb.UpdateConversationRequest(id=conversation_id, metadata=body["metadata"]))
    return json_response(conversation_to_dict(reply.conversation))


@bp.delete("/v1/conversations/<conversation_id>")
def delete_conversation(conversation_id: str):
    reply = unary(core().responses.DeleteConversation, pb.DeleteConversationRequest(id=conversation_id))
    return json_response({"id": reply.id, "object": "conversation.deleted", "deleted": True})


@bp.post("/v1/conversations/<conversation_id>/items")
def create_items(conversation_id: str):
    body = validate_items_create(read_json_object())
    reply = unary(core().responses.CreateConversationItems,
                  pb.CreateConversationItemsRequest(id=conversation_id, items=items_to_proto(body["items"])))
    return json_response(list_page([item_to_dict(i) for i in reply.items], False))


@bp.get("/v1/conversations/<conversation_id>/items")
def list_items(conversation_id: str):
    args = request.args
    req = pb.ListConversationItemsRequest(id=conversation_id, page_size=query_int(args, "limit", 20, 100),
                                          page_token=args.get("after") or "", order=list_order(args))
    reply = unary(core().responses.ListConversationItems, req)
    return json_response(list_page([item_to_dict(i) for i in reply.items], reply.has_more))


@bp.get("/v1/conversations/<conversation_id>/items/<item_id>")
def get_item(conversation_id: str, item_id: str):
    reply = unary(core().responses.GetConversationItem,
                  pb.GetConversationItemRequest(id=conversation_id, item_id=item_id))
    return json_response(item_to_dict(reply.item))


@bp.delete("/v1/conversations/<conversation_id>/items/<item_id>")
def delete_item(conversation_id: str, item_id: str):
    reply = unary(core().responses.DeleteConversationItem,
                  pb.DeleteConversationItemRequest(id=conversation_id, item_id=item_id))
    return json_response(conversation_to_dict(reply.conversation))
