"""The one model lookup of every servicer: NOT_FOUND for a name nothing serves or the
caller's key may not use (as OpenAI: "does not exist or you do not have access to it",
and the key's own models listed, never the others), INVALID_ARGUMENT
`model_task_mismatch` (naming the model's task) for a model served for another task than
the RPC's."""
from __future__ import annotations

import grpc

from genapi.config import Task

from ..errors import GenapiError, invalid, not_found, quote
from ..interceptors.auth import current_key, may_use
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
    if sm is None or not may_use(name):
        raise model_not_found(registry, name, task)
    if sm.config.task is not task:
        raise invalid(f"The model `{quote(name)}` is {_TASK_NOUN[sm.config.task]} (task \"{sm.config.task.value}\"): "
                      f"it cannot serve {task.value} requests.", "model", "model_task_mismatch")
    if not registry.loaded:  # a caller that did not wait for health SERVING (a balancing shim does)
        raise GenapiError(grpc.StatusCode.UNAVAILABLE, "The models are still loading; retry shortly.",
                          "models_loading", retry_after_s=5)
    return sm


def model_not_found(registry: Registry, name: str, task: Task | None = None) -> GenapiError:
    """404 model_not_found for `name`; with a key limited to some models, the message says
    it may exist but is not this key's and lists only the key's models."""
    key = current_key()
    if key is None or key.models is None:
        return not_found(f"The model `{quote(name)}` does not exist. {registry.available(task)}", "model",
                         "model_not_found")
    return not_found(f"The model `{quote(name)}` does not exist or you do not have access to it. "
                     f"{registry.available(task, allowed=key.models)}", "model", "model_not_found")
