"""ModelService: what this core serves."""
from __future__ import annotations

from genapi.v1 import model_service_pb2 as pb
from genapi.v1 import model_service_pb2_grpc as pb_grpc

from genapi.untrusted import MAX_ID_CHARS

from ..errors import abort, too_long
from ..interceptors.auth import may_use
from ..registry import Registry
from .lookup import model_not_found


class ModelServicer(pb_grpc.ModelServiceServicer):
    def __init__(self, registry: Registry):
        self.registry = registry

    async def ListModels(self, request, context):
        """The models the caller's key may use (every model without keys or model lists)."""
        return pb.ListModelsResponse(models=[sm.proto() for name, sm in self.registry.models.items() if may_use(name)])

    async def GetModel(self, request, context):
        if len(request.id) > MAX_ID_CHARS:
            await abort(context, too_long("model", MAX_ID_CHARS, len(request.id)))
        sm = self.registry.get(request.id)
        if sm is None or not may_use(request.id):
            await abort(context, model_not_found(self.registry, request.id))
        return pb.GetModelResponse(model=sm.proto())
