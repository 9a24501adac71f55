"""GET /health: 200 when the core's grpc.health.v1 reports SERVING, else 503 (readiness).
GET /health/live: 200 whenever this shim answers HTTP, whatever the cores (liveness: a
shim is not restarted because the cores are down or still loading)."""
from __future__ import annotations

import grpc
from flask import Blueprint
from grpc_health.v1 import health_pb2

from shim.errors import APIError, json_response
from shim.routes.common import core

bp = Blueprint("health", __name__)

HEALTH_TIMEOUT_S = 2.0


@bp.get("/health")
def health():
    try:
        reply = core().health.Check(health_pb2.HealthCheckRequest(service=""), timeout=HEALTH_TIMEOUT_S)
    except grpc.RpcError:
        reply = None
    if reply is not None and reply.status == health_pb2.HealthCheckResponse.SERVING:
        return json_response({"status": "ok"})
    raise APIError(503, "The core is not serving.", "server_error", None, "service_unavailable",
                   {"Retry-After": "1"})


@bp.get("/health/live")
def live():
    return json_response({"status": "ok"})
