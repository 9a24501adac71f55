"""ModelService: what this core serves."""
from __future__ import annotations

from genapi.v1 import model_service_pb2 as pb
from genapi.v1 import model_service_pb2_grpc as pb_grpc

from ..errors import abort, not_found
from ..registry import Registry


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[sm.proto() for sm in self.registry.models.values()])

    async def GetModel(self, request, context):
        sm = self.registry.get(request.id)
        if sm is None:
            await abort(context, not_found(f"The model `{request.id}` does not exist.", "model", "model_not_found"))
        return pb.GetModelResponse(model=sm.proto())
