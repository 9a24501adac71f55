"""Pure rerank request/response translation (Scaleway's shape, which is also vLLM's and
a superset of Jina's and Cohere's results; see reference/wire-shapes.md):

    {"id": "rerank-<hex>", "model", "usage": {"prompt_tokens", "total_tokens"},
     "results": [{"index", "relevance_score", "document": {"text", "multi_modal": null}}]}

`results` are sorted by descending relevance_score; `document` is left out when the
request set `return_documents: false`.
"""
from __future__ import annotations

import uuid

from genapi.v1 import rerank_service_pb2 as pb
from shim.protocol.rerank import document_texts, truncation
from shim.translate.embeddings import truncation_to_proto


def rerank_request_to_proto(body: dict, request_id: str) -> pb.RerankRequest:
    """`body` passed shim.protocol.rerank.validate_rerank_request."""
    return pb.RerankRequest(model=body["model"], query=body["query"], documents=document_texts(body["documents"]),
                            top_n=body.get("top_n") or 0, return_documents=return_documents(body),
                            truncate_prompt_tokens=truncation_to_proto(truncation(body)), request_id=request_id)


def return_documents(body: dict) -> bool:
    return body.get("return_documents") is not False


def rerank_response_to_dict(reply: pb.RerankResponse) -> dict:
    results = []
    for r in reply.results:
        item = {"index": r.index, "relevance_score": r.relevance_score}
        if r.HasField("document"):
            item["document"] = {"text": r.document, "multi_modal": None}
        results.append(item)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "model": reply.model,
        "usage": {"prompt_tokens": reply.usage.prompt_tokens, "total_tokens": reply.usage.total_tokens},
        "results": results,
    }
