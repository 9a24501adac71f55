"""Pure OpenAI <-> genapi.v1 translation for /v1/embeddings.

Vectors travel as packed float32 (`Embedding.values`); `encoding_format: "base64"` sends
each one as the base64 of its little-endian float32 bytes, which is what the openai SDK
decodes (numpy `frombuffer(..., dtype="float32")`), so both formats give the same values.
"""
from __future__ import annotations

import base64
import sys
from array import array

from genapi.v1 import embedding_service_pb2 as pb
from shim.protocol.embeddings import validate_input, validate_truncation

UINT32_MAX = 2**32 - 1


def truncation_to_proto(value: int | None) -> int:
    """The request's truncate_prompt_tokens for the proto: 0 = none; -1 (the model's limit)
    becomes the largest value, which the core caps at the model's limit."""
    if value is None:
        return 0
    return UINT32_MAX if value == -1 else value


def embeddings_request_to_proto(body: dict, request_id: str) -> pb.EmbedRequest:
    """`body` passed shim.protocol.embeddings.validate_embeddings_request."""
    req = pb.EmbedRequest(model=body["model"], request_id=request_id,
                          truncate_prompt_tokens=truncation_to_proto(validate_truncation(body)))
    for item in validate_input(body["input"]):
        if isinstance(item, str):
            req.inputs.add(text=item)
        else:
            req.inputs.add(token_ids=pb.TokenIds(ids=item))
    if body.get("dimensions") is not None:
        req.dimensions = body["dimensions"]
    return req


def float32_base64(values) -> str:
    """Base64 of the values as little-endian float32."""
    arr = array("f", values)
    if sys.byteorder == "big":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def embed_response_to_dict(reply: pb.EmbedResponse, encoding_format: str | None) -> dict:
    """OpenAI's CreateEmbeddingResponse."""
    encode = float32_base64 if encoding_format == "base64" else list
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": e.index, "embedding": encode(e.values)} for e in reply.embeddings],
        "model": reply.model,
        "usage": {"prompt_tokens": reply.usage.prompt_tokens, "total_tokens": reply.usage.total_tokens},
    }
