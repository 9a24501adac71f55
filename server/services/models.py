"""ModelService: what this core serves."""
from __future__ import annotations

from genapi.v1 import model_service_pb2 as pb
from genapi.v1 import model_service_pb2_grpc as pb_grpc

from genapi.untrusted import MAX_ID_CHARS

from ..errors import abort, not_found, quote, too_long
from ..registry import Registry


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[sm.proto() for sm in self.registry.models.values()])

    async def GetModel(self, request, context):
        if len(request.id) > MAX_ID_CHARS:
            await abort(context, too_long("model", MAX_ID_CHARS, len(request.id)))
        sm = self.registry.get(request.id)
        if sm is None:
            await abort(context, not_found(f"The model `{quote(request.id)}` does not exist. "
                                           f"{self.registry.available()}", "model", "model_not_found"))
        return pb.GetModelResponse(model=sm.proto())
