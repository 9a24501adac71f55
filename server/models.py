"""Model registry: which served name is backed by which engine and task."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from genapi.v1 import common_pb2, model_service_pb2

from .config import ModelConfig
from .engines.base import Engine

log = logging.getLogger("genapi.models")

_TASKS = {
    "chat": common_pb2.MODEL_TASK_CHAT,
    "embedding": common_pb2.MODEL_TASK_EMBEDDING,
    "rerank": common_pb2.MODEL_TASK_RERANK,
    "transcription": common_pb2.MODEL_TASK_TRANSCRIPTION,
}


def make_engine(mc: ModelConfig) -> Engine:
    engine = _backend(mc)
    if fault := mc.options.get("fault"):
        from .engines.faults import FaultInjectingEngine

        engine = FaultInjectingEngine(engine, fault)
    return engine


def _backend(mc: ModelConfig) -> Engine:
    """Backends are imported here, lazily, so a missing optional one only matters if used."""
    if mc.task != "chat":
        raise ValueError(f"model {mc.name!r}: task {mc.task!r} is not served yet (supported: chat)")
    if mc.backend == "torch":
        from .engines.torch_engine import TorchEngine

        return TorchEngine(mc.name, mc.path, mc.options)
    if mc.backend == "trtllm":
        from .engines.trtllm import TrtllmEngine

        return TrtllmEngine(mc.name, mc.path, mc.options)
    raise ValueError(f"model {mc.name!r}: unknown backend {mc.backend!r} (torch or trtllm)")


@dataclass
class ServedModel:
    config: ModelConfig
    engine: Engine
    created: int

    def proto(self) -> model_service_pb2.Model:
        opts = self.config.options
        return model_service_pb2.Model(
            id=self.config.name,
            task=_TASKS.get(self.config.task, common_pb2.MODEL_TASK_UNSPECIFIED),
            backend=self.config.backend,
            context_length=self.engine.context_length,
            created=self.created,
            owned_by=str(opts.get("owned_by", "genapi")),
            max_output_tokens=int(opts.get("max_output_tokens", 0)),
        )


class Registry:
    def __init__(self, configs: list[ModelConfig]):
        if not configs:
            raise ValueError("no models configured: add a [[models]] table to the config")
        names = [m.name for m in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate model names in config: {names}")
        self.models = {m.name: ServedModel(m, make_engine(m), int(time.time())) for m in configs}

    async def start(self) -> None:
        for sm in self.models.values():
            await sm.engine.start()

    async def stop(self) -> None:
        for sm in self.models.values():
            await sm.engine.stop()

    def get(self, name: str) -> ServedModel | None:
        return self.models.get(name)

    def ready(self) -> bool:
        return all(sm.engine.ready() for sm in self.models.values())
