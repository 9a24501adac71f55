"""Pure translation and validation: EmbedRequest / RerankRequest protos -> engine
requests, and engine results -> response protos.

Bounds checked here (INVALID_ARGUMENT naming the field): 1 to MAX_INPUTS inputs or
documents (OpenAI's 2048 for embeddings; the same for rerank), `top_n` at most the number
of documents. The engine checks the rest (empty inputs, vocabulary, token limits,
`dimensions` against the model's size), since those need the tokenizer.
"""
from __future__ import annotations

from genapi.untrusted import MAX_ID_CHARS
from genapi.v1 import common_pb2
from genapi.v1 import embedding_service_pb2 as embed_pb
from genapi.v1 import rerank_service_pb2 as rerank_pb

from ..engines.base import EmbeddingRequest, EmbeddingResult, ScoreRequest, ScoreResult
from ..errors import invalid, too_long
from .generation import check_request_id

MAX_INPUTS = 2048


def check_ids(model: str, request_id: str, rid: str) -> None:
    """Identifiers are bounded before anything echoes or logs them."""
    check_request_id(request_id)
    if rid and rid != request_id:
        check_request_id(rid, "x-request-id")
    if len(model) > MAX_ID_CHARS:
        raise too_long("model", MAX_ID_CHARS, len(model))


def _count(n: int, param: str) -> None:
    if n < 1:
        raise invalid(f"Invalid '{param}': expected at least 1 item, got none.", param)
    if n > MAX_INPUTS:
        raise invalid(f"Invalid '{param}': expected at most {MAX_INPUTS} items, got {n}.", param)


def _truncate(value: int) -> int | None:
    return value or None


def embedding_request(req: embed_pb.EmbedRequest, engine_id: str) -> EmbeddingRequest:
    _count(len(req.inputs), "input")
    inputs: list[str | list[int]] = []
    for i, item in enumerate(req.inputs):
        kind = item.WhichOneof("input")
        if kind is None:
            raise invalid(f"Invalid 'input[{i}]': set text or token_ids.", "input")
        inputs.append(item.text if kind == "text" else list(item.token_ids.ids))
    return EmbeddingRequest(engine_id, inputs,
                            dimensions=req.dimensions if req.HasField("dimensions") else None,
                            truncate_prompt_tokens=_truncate(req.truncate_prompt_tokens))


def embed_response(model: str, result: EmbeddingResult) -> embed_pb.EmbedResponse:
    n = result.prompt_tokens
    return embed_pb.EmbedResponse(
        model=model,
        embeddings=[embed_pb.Embedding(index=i, values=row.tolist()) for i, row in enumerate(result.embeddings)],
        usage=common_pb2.Usage(prompt_tokens=n, total_tokens=n))


def score_request(req: rerank_pb.RerankRequest, engine_id: str) -> ScoreRequest:
    _count(len(req.documents), "documents")
    if req.top_n > len(req.documents):
        raise invalid(f"Invalid 'top_n': expected at most {len(req.documents)} (the number of documents), "
                      f"got {req.top_n}.", "top_n")
    return ScoreRequest(engine_id, req.query, list(req.documents),
                        truncate_prompt_tokens=_truncate(req.truncate_prompt_tokens))


def rank(scores: list[float], top_n: int = 0) -> list[int]:
    """Document positions by descending score (ties: lower position first), the best
    `top_n` of them (all when 0)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order[:top_n] if top_n else order


def rerank_response(req: rerank_pb.RerankRequest, result: ScoreResult) -> rerank_pb.RerankResponse:
    results = []
    for i in rank(result.scores, req.top_n):
        r = rerank_pb.RerankResult(index=i, relevance_score=result.scores[i])
        if req.return_documents:
            r.document = req.documents[i]
        results.append(r)
    n = result.prompt_tokens
    return rerank_pb.RerankResponse(model=req.model, results=results,
                                    usage=common_pb2.Usage(prompt_tokens=n, total_tokens=n))
