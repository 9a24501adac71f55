"""Pure genapi.v1 Model -> OpenAI model object translation."""
from __future__ import annotations

from genapi.v1 import common_pb2, model_service_pb2

TASK_NAMES = {
    common_pb2.MODEL_TASK_CHAT: "chat",
    common_pb2.MODEL_TASK_EMBEDDING: "embedding",
    common_pb2.MODEL_TASK_RERANK: "rerank",
    common_pb2.MODEL_TASK_TRANSCRIPTION: "transcription",
}
DEFAULT_OWNER = "genapi"


def model_to_dict(model: model_service_pb2.Model) -> dict:
    """`{"id", "object": "model", "created", "owned_by"}` plus genapi extras
    (`task`, and `context_length` / `max_output_tokens` / `dimensions` when known; for
    embedding and rerank models `context_length` is the longest input in tokens)."""
    out = {
        "id": model.id,
        "object": "model",
        "created": int(model.created),
        "owned_by": model.owned_by or DEFAULT_OWNER,
    }
    if model.task in TASK_NAMES:
        out["task"] = TASK_NAMES[model.task]
    if model.context_length:
        out["context_length"] = model.context_length
    if model.max_output_tokens:
        out["max_output_tokens"] = model.max_output_tokens
    if model.dimensions:
        out["dimensions"] = model.dimensions
    return out


def model_list_to_dict(models) -> dict:
    return {"object": "list", "data": [model_to_dict(m) for m in models]}
