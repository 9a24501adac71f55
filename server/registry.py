"""Model registry: which served name is backed by which engine and task.

Backends are found by (task, backend) in `BACKENDS` and imported lazily, so a missing
optional one only matters when a model uses it; the engine built must implement the
task's capability protocol (engines.base.CAPABILITIES). An embedding and a rerank model
with the same backend, path and options share one engine (one process, one copy of the
weights).
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import time
from dataclasses import dataclass

from genapi.config import ModelConfig, Task
from genapi.v1 import common_pb2, model_service_pb2

from .engines.base import CAPABILITIES, EngineBase, EngineUnavailable

log = logging.getLogger("genapi.registry")

TASK_PROTO = {
    Task.CHAT: common_pb2.MODEL_TASK_CHAT,
    Task.EMBEDDING: common_pb2.MODEL_TASK_EMBEDDING,
    Task.RERANK: common_pb2.MODEL_TASK_RERANK,
    Task.TRANSCRIPTION: common_pb2.MODEL_TASK_TRANSCRIPTION,
}

#: (task, backend) -> "module:class" of the engine serving it.
BACKENDS: dict[tuple[Task, str], str] = {
    (Task.CHAT, "torch"): "server.engines.torch.engine:TorchEngine",
    (Task.CHAT, "trtllm"): "server.engines.trtllm.adapter:TrtllmEngine",
    (Task.EMBEDDING, "torch"): "server.engines.torch.embed:EmbeddingEngine",
    (Task.RERANK, "torch"): "server.engines.torch.embed:EmbeddingEngine",
    (Task.TRANSCRIPTION, "torch"): "server.engines.torch.whisper:WhisperEngine",
}


def make_engine(mc: ModelConfig) -> EngineBase:
    """The engine for one model; ValueError for a task or backend nothing serves."""
    target = BACKENDS.get((mc.task, mc.backend))
    if target is None:
        backends = sorted(b for t, b in BACKENDS if t == mc.task)
        if not backends:
            served = sorted({t.value for t, _ in BACKENDS})
            raise ValueError(f"model {mc.name!r}: task {mc.task.value!r} is not served yet "
                             f"(supported: {', '.join(served)})")
        raise ValueError(f"model {mc.name!r}: unknown backend {mc.backend!r} for task {mc.task.value!r} "
                         f"({' or '.join(backends)})")
    module, _, cls = target.partition(":")
    engine = getattr(importlib.import_module(module), cls)(mc.name, mc.path, mc.options)
    if not isinstance(engine, CAPABILITIES[mc.task]):
        raise TypeError(f"{target} does not implement {CAPABILITIES[mc.task].__name__}")
    if fault := mc.options.get("fault"):
        from .engines.faults import FaultInjectingEngine

        engine = FaultInjectingEngine(engine, fault)
    return engine


@dataclass
class ServedModel:
    config: ModelConfig
    engine: EngineBase
    created: int

    def proto(self) -> model_service_pb2.Model:
        info = getattr(self.engine, "chat_info", None)
        encoder = getattr(self.engine, "encoder_info", None)
        return model_service_pb2.Model(
            id=self.config.name,
            task=TASK_PROTO[self.config.task],
            backend=self.config.backend,
            context_length=info.context_length if info else encoder.max_input_tokens if encoder else 0,
            dimensions=encoder.dimensions if encoder else 0,
            created=self.created,
            owned_by=self.config.owned_by,
            max_output_tokens=self.config.max_output_tokens,
        )


class Registry:
    def __init__(self, configs: list[ModelConfig]):
        if not configs:
            raise ValueError("no models configured: add a [[models]] table to the config")
        names = [m.name for m in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in config: {names}")
        shared: dict[tuple, EngineBase] = {}
        self.loaded = False  # every engine started (the core answers before that: health NOT_SERVING)
        self.models = {}
        for m in configs:
            key = m.engine_key
            engine = shared.get(key) if key else None
            if engine is None:
                engine = make_engine(m)
                if key:
                    shared[key] = engine
            self.models[m.name] = ServedModel(m, engine, int(time.time()))

    def engines(self) -> list[EngineBase]:
        """Each engine once (shared ones are listed under several models)."""
        return list({id(sm.engine): sm.engine for sm in self.models.values()}.values())

    async def start(self) -> None:
        """Loads every engine, concurrently (each in its own process where it has one);
        EngineUnavailable naming the model when one cannot load."""
        async def load(sm):
            try:
                await sm.engine.start()
            except EngineUnavailable:
                raise
            except Exception as e:  # e.g. the core's own tokenizer load, before the worker's
                raise EngineUnavailable(f"could not load model {sm.config.name!r} from {sm.config.path}: "
                                        f"{type(e).__name__}: {e}") from e
        first = {id(sm.engine): sm for sm in self.models.values()}
        await asyncio.gather(*(load(sm) for sm in first.values()))
        for sm in self.models.values():
            encoder = getattr(sm.engine, "encoder_info", None)
            if sm.config.task is Task.EMBEDDING and encoder and encoder.kind == "cross-encoder":
                raise ValueError(f"model {sm.config.name!r}: {sm.config.path} is a cross-encoder checkpoint; "
                                 "it can serve task \"rerank\", not \"embedding\"")
        self.loaded = True

    async def stop(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines()))

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def get_for(self, name: str, task: Task) -> ServedModel | None:
        """The model named `name` when it is served for `task`, else None."""
        sm = self.models.get(name)
        return sm if sm is not None and sm.config.task == task else None

    def available(self, task: Task | None = None, limit: int = 20, allowed=None) -> str:
        """For a not-found message: the served names (of `task`, when given; among
        `allowed`, when given), at most `limit` of them, e.g. "Available models: `a`, `b`."
        or, for a task, "Available chat models: `a`." """
        names = [n for n, sm in self.models.items()
                 if (task is None or sm.config.task == task) and (allowed is None or n in allowed)]
        shown = ", ".join(f"`{n}`" for n in names[:limit])
        more = f" and {len(names) - limit} more (GET /v1/models lists them)" if len(names) > limit else ""
        kind = "models" if task is None else f"{task.value} models"
        if names:
            return f"Available {kind}: {shown}{more}."
        return f"No {kind} are served." if allowed is None else f"This key may use no {kind}."

    def ready(self) -> bool:
        return all(e.ready() for e in self.engines())

