"""POST /v1/rerank (and /rerank, /v2/rerank): Scaleway's, Jina's and Cohere's request.

  implemented        model, query, documents (strings or {"text": ...} objects),
                     top_n (0 or absent: all), return_documents (default true)
  Cohere v2          max_tokens_per_doc: truncate each scored input to this many tokens
                     (the same as truncate_prompt_tokens)
  accepted, ignored  rank_fields, max_chunks_per_doc, user
  genapi extension   truncate_prompt_tokens, as for embeddings
  anything else      -> 400 unknown_parameter

Bounds: 1 to 2048 documents (shim.protocol.embeddings.MAX_INPUTS), each a non-empty string; `top_n` at most the number
of documents (400 beyond, as the reliability plan's B14 asks).
"""
from __future__ import annotations

from shim.protocol.common import (
    UINT32_MAX,
    expect_bool,
    expect_id,
    expect_int,
    expect_str,
    invalid_type,
    invalid_value,
    missing,
)
from shim.protocol.embeddings import check_count, check_fields, non_empty_item, validate_truncation

KNOWN_FIELDS = frozenset({"model", "query", "documents", "top_n", "return_documents", "truncate_prompt_tokens",
                          "max_tokens_per_doc", "rank_fields", "max_chunks_per_doc", "user"})


def document_texts(documents: list) -> list[str]:
    """Each document's text: a string, or an object's `text` string."""
    out = []
    for i, doc in enumerate(documents):
        if isinstance(doc, dict):
            if "text" not in doc:
                raise invalid_value("documents", "Invalid 'documents': a document object needs a 'text' string.")
            doc = doc["text"]
        if not isinstance(doc, str):
            raise invalid_type("documents", "a string or an object with a 'text' string", doc)
        out.append(non_empty_item(doc, "documents", i))
    return out


def truncation(body: dict) -> int | None:
    """truncate_prompt_tokens, else Cohere's max_tokens_per_doc."""
    value = validate_truncation(body)
    if value is None and body.get("max_tokens_per_doc") is not None:
        value = expect_int(body["max_tokens_per_doc"], "max_tokens_per_doc", minimum=1, maximum=UINT32_MAX)
    return value


def validate_rerank_request(body: dict) -> dict:
    check_fields(body, KNOWN_FIELDS)
    for key in ("model", "query", "documents"):
        if key not in body:
            raise missing(key)
    expect_id(body["model"], "model", non_empty=True)
    expect_str(body["query"], "query", non_empty=True)
    docs = body["documents"]
    if not isinstance(docs, list):
        raise invalid_type("documents", "an array", docs)
    check_count(docs, "documents")
    document_texts(docs)
    if body.get("top_n") is not None:
        expect_int(body["top_n"], "top_n", minimum=0, maximum=len(docs))
    if body.get("return_documents") is not None:
        expect_bool(body["return_documents"], "return_documents")
    if body.get("user") is not None:
        expect_id(body["user"], "user")
    truncation(body)
    return body
