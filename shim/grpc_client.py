"""One gRPC channel and its stubs per worker process, created on first use.

gunicorn forks workers from a master that must not own gRPC state, so nothing here
runs at import or app-creation time: `get_client()` builds the channel lazily, keyed
by process id, so a forked child never reuses its parent's channel.
"""
from __future__ import annotations

import json
import os
import threading

import grpc
import grpc.experimental  # ChannelOptions (not imported by `import grpc`)
from grpc_health.v1 import health_pb2_grpc

from genapi.v1 import (
    admin_service_pb2_grpc,
    batch_service_pb2_grpc,
    embedding_service_pb2_grpc,
    file_service_pb2_grpc,
    generation_service_pb2_grpc,
    model_service_pb2_grpc,
    rerank_service_pb2_grpc,
    response_service_pb2_grpc,
    transcription_service_pb2_grpc,
)

# Client keepalive: ping after 30 s without activity, drop the peer after 10 s without
# an answer. grpc's default max_pings_without_data (2) keeps this within the server's
# default ping-abuse policy.
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# Several cores: round-robin over them, with gRPC's client-side health checking (each
# subchannel watches grpc.health.v1 for the whole server, ""), so a core that is
# loading, draining or has lost an engine (NOT_SERVING) gets no new calls; a dead core's
# subchannel fails its connection and is skipped the same way.
BALANCED_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                                      "healthCheckConfig": {"serviceName": ""}})
# A dead core's address is retried at most this far apart (gRPC's default backoff grows
# to 120 s): a restarted core is back in the rotation, or back at all when it is the only
# one, within seconds.
MAX_RECONNECT_BACKOFF_MS = 5_000


def channel_options(max_message_mb: int, round_robin: bool) -> list[tuple[str, object]]:
    limit = int(max_message_mb) * 1024 * 1024
    opts: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 0),
        # Server-streaming calls are read by the thread that iterates them (each request's
        # pump thread), not handed over from the channel's spin thread: one thread wake-up
        # less per streamed event (bench/frontend.py).
        (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if round_robin:
        opts.append(("grpc.lb_policy_name", "round_robin"))
        opts.append(("grpc.service_config", BALANCED_SERVICE_CONFIG))
    return opts


def uses_round_robin(config) -> bool:
    return len(config.core_targets) > 1 or config.core_target.startswith("dns:")


class CoreClient:
    """A channel to the core and one stub per service."""

    def __init__(self, target: str, options: list[tuple[str, object]]):
        self.target = target
        self.channel = grpc.insecure_channel(target, options=options)
        self.generation = generation_service_pb2_grpc.GenerationServiceStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self.embedding = embedding_service_pb2_grpc.EmbeddingServiceStub(self.channel)
        self.rerank = rerank_service_pb2_grpc.RerankServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.files = file_service_pb2_grpc.FileServiceStub(self.channel)
        self.batches = batch_service_pb2_grpc.BatchServiceStub(self.channel)
        self.responses = response_service_pb2_grpc.ResponseServiceStub(self.channel)
        self.transcription = transcription_service_pb2_grpc.TranscriptionServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()


_lock = threading.Lock()
_clients: dict[tuple, CoreClient] = {}
_shut_down = False


def shut_down() -> None:
    """Closes this process's channels, which cancels every call still open on them (the
    worker's drain grace period is over); a call made afterwards fails at once."""
    global _shut_down
    with _lock:
        _shut_down = True
        clients = [c for (pid, *_), c in _clients.items() if pid == os.getpid()]
    for client in clients:
        client.close()


def is_shut_down() -> bool:
    return _shut_down


def get_client(config) -> CoreClient:
    """This process's client for `config.core_target` (created on first call)."""
    key = (os.getpid(), config.core_target, config.max_message_mb)
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                options = channel_options(config.max_message_mb, uses_round_robin(config))
                client = CoreClient(config.core_target, options)
                _clients[key] = client
    return client


def _ascii_header(value: str | None) -> str | None:
    if value and value.isascii() and value.isprintable():
        return value
    return None


def call_metadata(request_id: str, authorization: str | None = None,
                  traceparent: str | None = None) -> list[tuple[str, str]]:
    """gRPC metadata for a core call: the request id, the W3C traceparent and the caller's
    Authorization."""
    md = [("x-request-id", request_id)]
    if traceparent:
        md.append(("traceparent", traceparent))
    if auth := _ascii_header(authorization):
        md.append(("authorization", auth))
    return md
