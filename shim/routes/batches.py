"""/v1/batches: create, list, get, cancel. The core validates and runs the batch; this
route translates the OpenAI `batch` object."""
from __future__ import annotations

from flask import Blueprint, request

from genapi.v1 import batch_service_pb2 as pb
from shim.body import read_json_object
from shim.errors import json_response
from shim.protocol.batches import MAX_BATCHES_LIMIT, validate_create_batch
from shim.protocol.files import query_int
from shim.routes.common import core, unary
from shim.translate.batches import batch_list_to_dict, batch_to_dict, create_request

bp = Blueprint("batches", __name__)


@bp.post("/v1/batches")
def create_batch():
    body = validate_create_batch(read_json_object())
    return json_response(batch_to_dict(unary(core().batches.CreateBatch, create_request(body)).batch))


@bp.get("/v1/batches")
def list_batches():
    args = request.args
    req = pb.ListBatchesRequest(page_size=query_int(args, "limit", 20, MAX_BATCHES_LIMIT),
                                page_token=args.get("after") or "")
    return json_response(batch_list_to_dict(unary(core().batches.ListBatches, req)))


@bp.get("/v1/batches/<batch_id>")
def get_batch(batch_id: str):
    return json_response(batch_to_dict(unary(core().batches.GetBatch, pb.GetBatchRequest(id=batch_id)).batch))


@bp.post("/v1/batches/<batch_id>/cancel")
def cancel_batch(batch_id: str):
    return json_response(batch_to_dict(unary(core().batches.CancelBatch, pb.CancelBatchRequest(id=batch_id)).batch))
