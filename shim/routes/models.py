"""GET /v1/models and GET /v1/models/<id> (ids may contain '/')."""
from __future__ import annotations

import grpc
from flask import Blueprint

from genapi.v1 import model_service_pb2
from shim.errors import from_grpc_error, json_response
from shim.protocol.models import model_not_found_message, validate_model_id
from shim.routes.common import core, metadata, short_timeout
from shim.translate.models import model_list_to_dict, model_to_dict

bp = Blueprint("models", __name__)


@bp.get("/v1/models")
def list_models():
    try:
        reply = core().models.ListModels(model_service_pb2.ListModelsRequest(), metadata=metadata(),
                                         timeout=short_timeout())
    except grpc.RpcError as e:
        raise from_grpc_error(e) from None
    return json_response(model_list_to_dict(reply.models))


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    validate_model_id(model_id)
    try:
        reply = core().models.GetModel(model_service_pb2.GetModelRequest(id=model_id), metadata=metadata(),
                                       timeout=short_timeout())
    except grpc.RpcError as e:
        raise from_grpc_error(e, not_found_param="model", not_found_code="model_not_found",
                              not_found_message=model_not_found_message(model_id)) from None
    return json_response(model_to_dict(reply.model))
