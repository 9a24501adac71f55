"""Builds and runs the grpc.aio core: services, health per service, reflection, auth,
per-key rate limits, graceful drain on SIGTERM or SIGINT, key reload on SIGHUP.

Drain: health turns NOT_SERVING (every service), new Generate calls are refused with
UNAVAILABLE `server_shutting_down` + retry_after_s (the shim's 503 with Retry-After),
the calls in flight run to their end within the grace period (then they are cancelled),
and only then do the server and the engines stop."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from genapi.config import Config, exposure_error, load_config
from genapi.keys import KeyChecker
from genapi.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    batch_service_pb2,
    batch_service_pb2_grpc,
    file_service_pb2,
    file_service_pb2_grpc,
    generation_service_pb2,
    generation_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    rerank_service_pb2,
    rerank_service_pb2_grpc,
    response_service_pb2,
    response_service_pb2_grpc,
    transcription_service_pb2,
    transcription_service_pb2_grpc,
)

from .batches.runner import BatchRunner
from .responses.runner import BackgroundRunner
from . import metrics
from .interceptors.auth import AuthInterceptor
from .interceptors.metrics import MetricsInterceptor
from .interceptors.store_outage import StoreOutageInterceptor
from .tracing import TraceInterceptor, otel_tracer
from .drain import Drain
from .limits import RateLimiter
from .registry import Registry
from .services.admin import AdminServicer
from .services.encoder import EmbeddingServicer, RerankServicer
from .services.batches import BatchServicer
from .services.files import FileServicer
from .media.policy import MediaPolicy
from .services.generation import GenerationServicer
from .services.models import ModelServicer
from .services.responses import ResponseServicer
from .services.transcription import TranscriptionServicer
from .store import open_objects, open_store
from .store.nodes import Heartbeat, NodeNameInUse, take_node_name
from .store.postgres import redact, scrub

log = logging.getLogger("genapi.core")


class StartupError(Exception):
    """The core cannot start (a model that does not load, an address it cannot listen on);
    its text is one line for the operator (the CLI prints it and exits 2)."""


def one_line(e: BaseException, limit: int = 600) -> str:
    """An exception's text on one line (library errors often span several), cut at limit."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


SERVICES = (
    generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"].full_name,
    model_service_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    embedding_service_pb2.DESCRIPTOR.services_by_name["EmbeddingService"].full_name,
    rerank_service_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name,
    file_service_pb2.DESCRIPTOR.services_by_name["FileService"].full_name,
    batch_service_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name,
    response_service_pb2.DESCRIPTOR.services_by_name["ResponseService"].full_name,
    transcription_service_pb2.DESCRIPTOR.services_by_name["TranscriptionService"].full_name,
)


def grpc_options(cfg: Config) -> list[tuple]:
    mb = cfg.max_message_mb * 1024 * 1024
    return [
        ("grpc.max_send_message_length", mb),
        ("grpc.max_receive_message_length", mb),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"


def _enable_reflection(server: grpc.aio.Server, names: tuple[str, ...]) -> None:
    """Server reflection as v1alpha (grpcio-reflection's) and as v1, which current clients
    (grpcurl, Postman) ask for. grpcio-reflection ships only v1alpha; the two protos are
    wire-identical (same messages and field numbers in another package), so v1 is the
    same servicer under the v1 service name."""
    servicer = reflection.aio.ReflectionServicer(names + (reflection.SERVICE_NAME,))
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REFLECTION_V1, {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
            response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString),
    }),))


async def _set_health(health, status) -> None:
    """The overall status ("") and every genapi service's status move together."""
    for name in ("",) + SERVICES:
        await health.set(name, status)


async def _watch_engines(registry: Registry, health, stop: asyncio.Event) -> None:
    """Health follows the engines: NOT_SERVING as soon as one of them is gone."""
    serving = True
    while not stop.is_set():
        await asyncio.sleep(1)
        if serving and not registry.ready():
            serving = False
            log.error("an engine stopped: health NOT_SERVING")
            await _set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)


async def _open_storage(cfg: Config):
    """The object storage (an S3 bucket checked with HeadBucket), the state store, and this
    core's node name claimed in it with its heartbeat running; StartupError naming the
    setting when one of them cannot be used."""
    try:
        objects = await asyncio.to_thread(open_objects, cfg)
    except Exception as e:  # a missing bucket, denied credentials, an endpoint that does not answer
        raise StartupError(f"[files] url {cfg.files_url}: cannot use the object storage: {one_line(e)}") from None
    try:
        store = await asyncio.to_thread(open_store, cfg)
    except Exception as e:  # PostgreSQL unreachable, a wrong password, psycopg missing
        raise StartupError(f"[store] url {redact(cfg.store_url) or cfg.store_path}: cannot open the store: "
                           f"{scrub(one_line(e), cfg.store_url)}") from None
    holder = f"{cfg.node_name}/{uuid.uuid4().hex[:12]}"
    try:
        await asyncio.to_thread(take_node_name, store, cfg.node_name, holder)
    except Exception as e:  # NodeNameInUse, or the store went away meanwhile
        store.close()
        raise StartupError(str(e) if isinstance(e, NodeNameInUse) else
                           f"[store] node {cfg.node_name!r}: cannot be claimed: {one_line(e)}") from None
    heartbeat = Heartbeat(store, cfg.node_name, holder)
    heartbeat.start()
    return store, objects, heartbeat


async def serve(cfg: Config, grace_s: float = 30.0) -> None:
    try:
        registry = Registry(cfg.models)
    except (ValueError, TypeError, ImportError) as e:  # unknown task/backend, a backend not installed
        raise StartupError(one_line(e)) from None
    checker = KeyChecker(cfg.api_keys)
    try:
        limiter = RateLimiter(cfg.limits_storage, checker, cfg.default_rpm, cfg.default_tpm)
    except Exception as e:  # a bad storage URI, redis extra missing
        raise StartupError(f"[limits] storage = {redact(cfg.limits_storage)!r}: "
                           f"{scrub(one_line(e), cfg.limits_storage)}") from None
    try:
        tracer = otel_tracer(cfg.otlp_endpoint) if cfg.otlp_endpoint else None
    except ImportError as e:
        raise StartupError(str(e)) from None
    server = grpc.aio.server(  # interceptors: outermost first
        interceptors=[TraceInterceptor(tracer), AuthInterceptor(checker), MetricsInterceptor(registry.models),
                      StoreOutageInterceptor()],
        options=grpc_options(cfg) + [("grpc.so_reuseport", 0)],
    )
    drain = Drain()
    try:
        # checks the chat models' output options (and [media] its allow-list)
        generation = GenerationServicer(registry, drain, limiter, MediaPolicy.from_config(cfg))
    except ValueError as e:
        raise StartupError(one_line(e)) from None
    generation_service_pb2_grpc.add_GenerationServiceServicer_to_server(generation, server)
    store, objects, heartbeat = await _open_storage(cfg)
    embedding = EmbeddingServicer(registry, drain, limiter)
    file_service_pb2_grpc.add_FileServiceServicer_to_server(
        FileServicer(store, objects, cfg.max_upload_mb * 1024 * 1024), server)
    responses = BackgroundRunner(store, generation, holder=cfg.node_name)
    response_servicer = ResponseServicer(store, generation, responses)
    response_service_pb2_grpc.add_ResponseServiceServicer_to_server(response_servicer, server)
    runner = BatchRunner(store, objects, {"generation": generation, "embedding": embedding,
                                          "responses": response_servicer}, registry, cfg.batch_concurrency,
                         holder=cfg.node_name, keys=checker, lease_s=cfg.batch_lease_s)
    try:
        metrics.install(registry, runner, cfg.metrics_port, cfg.core_host)
    except OSError as e:
        heartbeat.stop()  # frees the node name: the next start need not wait for it
        raise StartupError(f"the core's metrics port {cfg.core_host}:{cfg.metrics_port} cannot be used: {e}") from None
    batch_service_pb2_grpc.add_BatchServiceServicer_to_server(BatchServicer(
        store, runner, cfg.batch_window_s, cfg.s3_input_buckets), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(registry, limiter), server)
    embedding_service_pb2_grpc.add_EmbeddingServiceServicer_to_server(embedding, server)
    rerank_service_pb2_grpc.add_RerankServiceServicer_to_server(RerankServicer(registry, drain, limiter), server)
    transcription_service_pb2_grpc.add_TranscriptionServiceServicer_to_server(
        TranscriptionServicer(registry, drain, limiter), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    _enable_reflection(server, SERVICES + (health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,))
    address = f"{cfg.core_host}:{cfg.core_port}"
    if server.add_insecure_port(address) == 0:
        heartbeat.stop()
        raise StartupError(f"the gRPC core cannot listen on {address} (port in use?)")
    await _set_health(health, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_keys, cfg, checker, limiter)
    log.info("gRPC core listening on %s; loading models", address)
    try:
        loaded = await _load_unless_stopped(registry, stop)
    except StartupError:
        await server.stop(0)
        await registry.stop()
        heartbeat.stop()
        raise
    if not loaded:
        log.info("stopped while loading models")
        await server.stop(0)
        await registry.stop()
        heartbeat.stop()
        return
    await _set_health(health, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC core serving %s on %s", ", ".join(registry.models), address)

    watcher = asyncio.create_task(_watch_engines(registry, health, stop))
    runner.start()  # resumes the batches a previous run left unfinished
    responses.start()  # and the background responses
    await stop.wait()
    watcher.cancel()
    await responses.stop()  # background responses in flight run again at the next start
    await runner.stop()  # batch lines in flight are abandoned (no result): they run again at the next start
    await health.enter_graceful_shutdown()  # NOT_SERVING everywhere first, and it stays so
    drain.start()
    log.info("draining: health NOT_SERVING, new requests refused, %d in flight (grace %.0fs)",
             drain.in_flight, grace_s)
    if await drain.wait_idle(grace_s):
        log.info("drained: no request in flight")
    else:
        log.warning("grace period over: cancelling %d request(s) still in flight", drain.in_flight)
    await server.stop(0)
    await registry.stop()
    heartbeat.stop()
    store.close()
    log.info("gRPC core stopped")


def reload_keys(cfg: Config, checker: KeyChecker, limiter: RateLimiter) -> bool:
    """SIGHUP: re-reads the config file's keys and default limits (models, addresses and
    storage stay as started). Requests already accepted run on; the next one is checked
    against the new keys. A file that does not load, or that would leave a non-loopback
    core without keys, changes nothing (logged). True when applied."""
    try:
        new = load_config(cfg.path)
    except (OSError, ValueError, KeyError) as e:
        log.error("SIGHUP: config %s not reloaded: %s", cfg.path, one_line(e))
        return False
    if err := exposure_error(new, cfg.core_host, "gRPC core"):
        log.error("SIGHUP: config not reloaded: %s", err)
        return False
    checker.replace(new.api_keys)
    limiter.set_defaults(new.default_rpm, new.default_tpm)
    cfg.api_keys, cfg.default_rpm, cfg.default_tpm = new.api_keys, new.default_rpm, new.default_tpm
    log.info("SIGHUP: reloaded %d API key(s): %s", len(new.api_keys), ", ".join(k.name for k in new.api_keys) or "-")
    return True


async def _load_unless_stopped(registry: Registry, stop: asyncio.Event) -> bool:
    """Starts the engines; False when a stop signal came first (loading is abandoned)."""
    load = asyncio.create_task(registry.start())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if load.done():
        if (error := load.exception()) is not None:  # a model that cannot load stops the core
            log.debug("loading failed", exc_info=error)
            raise StartupError(one_line(error))
        return True
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await load
    return False
