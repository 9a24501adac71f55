"""POST /v1/rerank, with the /rerank (Jina-style clients) and /v2/rerank (Cohere v2
clients) aliases: parse -> validate -> translate -> RerankService.Rerank -> JSON."""
from __future__ import annotations

from flask import Blueprint

from shim.body import read_json_object
from shim.errors import json_response
from shim.protocol.rerank import validate_rerank_request
from shim.observe import note_model
from shim.request_id import current_request_id
from shim.routes.common import call_core, core
from shim.translate.rerank import rerank_request_to_proto, rerank_response_to_dict

bp = Blueprint("rerank", __name__)


@bp.post("/v1/rerank")
@bp.post("/rerank")
@bp.post("/v2/rerank")
def rerank():
    body = validate_rerank_request(read_json_object())
    note_model(body.get("model"))
    reply = call_core(core().rerank.Rerank, rerank_request_to_proto(body, current_request_id()))
    return json_response(rerank_response_to_dict(reply))
