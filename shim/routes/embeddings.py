"""POST /v1/embeddings: parse -> validate -> translate -> EmbeddingService.Embed -> JSON."""
from __future__ import annotations

from flask import Blueprint

from shim.body import read_json_object
from shim.errors import json_response
from shim.protocol.embeddings import validate_embeddings_request
from shim.observe import note_model
from shim.request_id import current_request_id
from shim.routes.common import call_core, core
from shim.translate.embeddings import embed_response_to_dict, embeddings_request_to_proto

bp = Blueprint("embeddings", __name__)


@bp.post("/v1/embeddings")
def create_embeddings():
    body = validate_embeddings_request(read_json_object())
    note_model(body.get("model"))
    reply = call_core(core().embedding.Embed, embeddings_request_to_proto(body, current_request_id()))
    return json_response(embed_response_to_dict(reply, body.get("encoding_format")))
