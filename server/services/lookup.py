"""The one model lookup of every servicer: NOT_FOUND for a name nothing serves,
INVALID_ARGUMENT `model_task_mismatch` (naming the model's task) for a model served for
another task than the RPC's."""
from __future__ import annotations

from genapi.config import Task

from ..errors import invalid, not_found, quote
from ..registry import Registry, ServedModel

_TASK_NOUN = {
    Task.CHAT: "a chat model",
    Task.EMBEDDING: "an embedding model",
    Task.RERANK: "a rerank model",
    Task.TRANSCRIPTION: "a transcription model",
}


def model_for(registry: Registry, name: str, task: Task) -> ServedModel:
    """The model named `name`, served for `task`; raises GenapiError otherwise (an empty
    name is INVALID_ARGUMENT, as the REST endpoints answer it)."""
    if not name:
        raise invalid("Invalid 'model': expected a non-empty string.", "model")
    sm = registry.get(name)
    if sm is None:
        raise not_found(f"The model `{quote(name)}` does not exist. {registry.available(task)}", "model",
                        "model_not_found")
    if sm.config.task is not task:
        raise invalid(f"The model `{quote(name)}` is {_TASK_NOUN[sm.config.task]} (task \"{sm.config.task.value}\"): "
                      f"it cannot serve {task.value} requests.", "model", "model_task_mismatch")
    return sm
