"""Drain and shutdown (reliability plan F7, issue 18 item 4).

On SIGTERM (or SIGINT, also sent to the whole process group as Ctrl-C does) the service
drains: health turns 503 (REST) and NOT_SERVING (gRPC) at once, new requests get 503
with Retry-After (UNAVAILABLE with retry_after_s over gRPC), the requests in flight run
to their end, then every process exits 0, within the grace period, leaving nothing
behind and logging no ERROR, traceback or leaked-semaphore warning.

The requests in flight are held there by the engine's test-only decode pause
(`[models.options.fault] pause_decode_file`): while the file exists the engine admits
requests and sends their first token but decodes nothing, so the test decides when they
finish instead of racing the model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import httpx
import openai
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc, content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, ROOT, Service, free_port, wait_until
from .test_cli import alive, descendants, port_free

GRACE_S = 30  # genapi's default --drain-grace
TOKENS = 24
MESSAGES = [{"role": "user", "content": "Tell me about the harbour."}]
BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": TOKENS, "ignore_eos": True}


def paused_service(tmp_path, name: str) -> tuple[Service, "os.PathLike"]:
    pause = tmp_path / f"{name}.pause"
    svc = Service(tmp_path, name, model_options=f'threads = 1\n[models.options.fault]\npause_decode_file = "{pause}"\n')
    return svc, pause


def grpc_request(max_tokens: int = TOKENS) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL, messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                                       content=[content_pb2.ContentPart(text="Hello")])],
        stopping=pb.StoppingOptions(max_tokens=max_tokens, ignore_eos=True))


class Core:
    """gRPC stubs on one channel to a core."""

    def __init__(self, target: str):
        self.channel = grpc.insecure_channel(target)
        self.gen = pb_grpc.GenerationServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.admin = admin_service_pb2_grpc.AdminServiceStub(self.channel)

    def stats(self):
        return self.admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=MODEL)).engines[0]

    def status(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status

    def close(self):
        self.channel.close()


class InFlight:
    """Requests running on threads; `results` maps a name to its outcome."""

    def __init__(self):
        self.results: dict[str, object] = {}
        self.threads: list[threading.Thread] = []

    def start(self, name: str, fn) -> None:
        def run():
            try:
                self.results[name] = fn()
            except Exception as e:  # asserted by the test
                self.results[name] = e
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def running(self) -> bool:
        return all(t.is_alive() for t in self.threads)

    def join(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), self.results


def rest_stream(svc: Service) -> list[dict]:
    with httpx.stream("POST", f"{svc.base_url}/v1/chat/completions", json={**BODY, "stream": True}, timeout=120) as r:
        assert r.status_code == 200, r.read()
        frames = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert frames[-1] == "[DONE]", frames[-3:]
    return [json.loads(f) for f in frames[:-1]]


def grpc_stream(core: Core) -> list:
    return list(core.gen.Generate(grpc_request(), timeout=120))


def assert_complete_stream(chunks: list[dict]) -> None:
    assert all("error" not in c for c in chunks), chunks[-2:]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == TOKENS


def assert_complete_grpc(events: list) -> None:
    assert events[-1].WhichOneof("event") == "finished", events[-1]
    assert events[-1].finished.reason == content_pb2.FINISH_REASON_LENGTH
    assert events[-1].usage.completion_tokens == TOKENS


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(err).details[0].Unpack(info)
    return info


def assert_grpc_refuses(core: Core) -> None:
    """NOT_SERVING, and a new Generate is UNAVAILABLE with retry_after_s."""
    for service in ("", "genapi.v1.GenerationService"):
        assert core.status(service) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.RpcError) as ei:
        list(core.gen.Generate(grpc_request(), timeout=30))
    assert ei.value.code() == grpc.StatusCode.UNAVAILABLE, ei.value
    info = error_info(ei.value)
    assert info.reason == "server_shutting_down" and float(info.metadata["retry_after_s"]) >= 1


def assert_rest_refuses(svc: Service) -> None:
    """/health 503, new requests 503 with Retry-After (streaming or not, REST or SDK)."""
    health = httpx.get(f"{svc.base_url}/health", timeout=10)
    assert health.status_code == 503 and health.headers.get("retry-after"), health.text
    for stream in (False, True):
        r = httpx.post(f"{svc.base_url}/v1/chat/completions", json={**BODY, "stream": stream}, timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/json")
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
    with pytest.raises(openai.InternalServerError) as ei:
        svc.sdk().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert ei.value.status_code == 503


def assert_clean_log(text: str) -> None:
    for bad in (" ERROR ", "[ERROR]", "Traceback", "leaked", "SIGKILL", "Perhaps out of memory"):
        assert bad not in text, f"{bad!r} in the log:\n{text[-4000:]}"


def assert_nothing_left(pid: int, kids: set[int], *ports: int) -> None:
    assert wait_until(lambda: not [k for k in kids if alive(k)], 5), [k for k in kids if alive(k)]
    assert all(port_free(p) for p in ports)


@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
def test_signal_drains_in_flight_requests_refuses_new_ones_then_exits(tmp_path, how):
    """SIGTERM to `genapi serve`, or SIGINT to its whole process group (Ctrl-C)."""
    svc, pause = paused_service(tmp_path, how)
    svc.start()
    core = Core(svc.grpc_target)
    try:
        pause.touch()
        inflight = InFlight()
        inflight.start("rest_stream", lambda: rest_stream(svc))
        inflight.start("rest", lambda: svc.sdk().chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=TOKENS, extra_body={"ignore_eos": True}))
        inflight.start("grpc", lambda: grpc_stream(core))
        assert wait_until(lambda: core.stats().active_sequences == 3, 30), core.stats()
        kids = descendants(svc.proc.pid)

        sent = time.monotonic()
        if how == "sigterm":
            os.kill(svc.proc.pid, signal.SIGTERM)
        else:
            os.killpg(svc.proc.pid, signal.SIGINT)
        assert wait_until(lambda: core.status() == health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        assert_grpc_refuses(core)
        assert_rest_refuses(svc)
        assert inflight.running() and svc.proc.poll() is None  # held in flight, and waited for

        pause.unlink()  # the engine decodes again: the requests in flight finish
        inflight.join(60)
        assert_complete_stream(inflight.results["rest_stream"])
        rest = inflight.results["rest"]
        assert not isinstance(rest, Exception), rest
        assert rest.choices[0].finish_reason == "length" and rest.usage.completion_tokens == TOKENS
        assert_complete_grpc(inflight.results["grpc"])

        assert svc.proc.wait(GRACE_S + 5) == 0
        assert time.monotonic() - sent < GRACE_S + 5
        assert_nothing_left(svc.proc.pid, kids, svc.port, svc.grpc_port)
        assert_clean_log(svc.log())
    finally:
        pause.unlink(missing_ok=True)
        core.close()
        svc.stop()


def test_core_alone_drains_and_cancels_what_outlives_the_grace_period(tmp_path):
    """`genapi core` on its own: the same drain for its part; a request still running when
    the grace period ends is cancelled, and the core exits 0 right after."""
    svc, pause = paused_service(tmp_path, "core")  # only its config file is used
    port = free_port()
    log_path = tmp_path / "core.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "genapi", "core", "--config", str(svc.config),
                                 "--grpc-port", str(port), "--drain-grace", "2"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    core = Core(f"127.0.0.1:{port}")
    try:
        def serving():
            try:
                return core.status() == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False
        assert wait_until(serving, 180, 0.3), log_path.read_text()
        pause.touch()
        call = core.gen.Generate(grpc_request(), timeout=120)
        assert next(call).WhichOneof("event") == "started"
        assert wait_until(lambda: core.stats().active_sequences == 1, 30), core.stats()

        proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: core.status() == health_pb2.HealthCheckResponse.NOT_SERVING, 10)
        assert_grpc_refuses(core)
        assert proc.poll() is None

        # Still paused: the grace period (2 s) runs out, the call is ended, the core exits.
        with pytest.raises(grpc.RpcError) as ei:
            for _ in call:
                pass
        assert ei.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), ei.value
        assert proc.wait(30) == 0
        text = log_path.read_text()
        assert "grace period over: cancelling 1 request(s)" in text
        assert_clean_log(text)
        assert port_free(port)
    finally:
        pause.unlink(missing_ok=True)
        core.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- `genapi shim` on its own, in front of a `genapi core` started separately -------------

def start_tier(argv: list[str], log_path, env: dict) -> subprocess.Popen:
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "genapi", *argv], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_tier(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def lone_core(tmp_path_factory):
    """`genapi core` alone (decode pause available) for the shims of the tests below."""
    tmp = tmp_path_factory.mktemp("lone")
    svc, pause = paused_service(tmp, "lone")
    proc = start_tier(["core", "--config", str(svc.config), "--grpc-port", str(svc.grpc_port)],
                      tmp / "core.log", svc.env)
    core = Core(svc.grpc_target)

    def serving():
        try:
            return core.status() == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False
    try:
        assert wait_until(serving, 180, 0.3), (tmp / "core.log").read_text()
        yield svc, pause, core
    finally:
        pause.unlink(missing_ok=True)
        core.close()
        stop_tier(proc)


def start_shim(svc: Service, tmp_path, *extra: str) -> tuple[subprocess.Popen, "os.PathLike"]:
    """`genapi shim` on a port of its own; `svc.base_url` is pointed at it."""
    svc.port = free_port()
    svc.base_url = f"http://127.0.0.1:{svc.port}"
    log_path = tmp_path / "shim.log"
    proc = start_tier(["shim", "--config", str(svc.config), "--port", str(svc.port), "--core", svc.grpc_target,
                       *extra], log_path, svc.env)

    def healthy():
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(f"{svc.base_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False
    assert wait_until(healthy, 60, 0.2), log_path.read_text()
    return proc, log_path


def shim_health(svc: Service) -> int:
    return httpx.get(f"{svc.base_url}/health", timeout=10).status_code


@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
def test_shim_alone_drains_in_flight_requests_refuses_new_ones_then_exits(lone_core, tmp_path, how):
    """SIGTERM to `genapi shim` (gunicorn's master), or SIGINT to its whole process group:
    /health and new requests get 503 `server_shutting_down` with Retry-After from the
    shim itself while its streams in flight run to their end; then it exits 0, cleanly."""
    svc, pause, core = lone_core
    proc, log_path = start_shim(svc, tmp_path)
    try:
        pause.touch()
        inflight = InFlight()
        inflight.start("rest_stream", lambda: rest_stream(svc))
        inflight.start("rest", lambda: svc.sdk().chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=TOKENS, extra_body={"ignore_eos": True}))
        assert wait_until(lambda: core.stats().active_sequences == 2, 30), core.stats()
        kids = descendants(proc.pid)

        if how == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        assert wait_until(lambda: shim_health(svc) == 503, 10)
        assert_rest_refuses(svc)
        assert core.status() == health_pb2.HealthCheckResponse.SERVING  # only the shim stops
        assert inflight.running() and proc.poll() is None  # held in flight, and waited for

        pause.unlink()
        inflight.join(60)
        assert_complete_stream(inflight.results["rest_stream"])
        rest = inflight.results["rest"]
        assert not isinstance(rest, Exception), rest
        assert rest.choices[0].finish_reason == "length" and rest.usage.completion_tokens == TOKENS

        assert proc.wait(GRACE_S) == 0
        assert_nothing_left(proc.pid, kids, svc.port)
        text = log_path.read_text()
        assert "drained: no request in flight" in text
        assert_clean_log(text)
    finally:
        pause.unlink(missing_ok=True)
        stop_tier(proc)


def test_shim_alone_ends_what_outlives_its_grace_period(lone_core, tmp_path):
    """`genapi shim --drain-grace 2`: a stream still held when the grace period ends gets an
    error frame `server_shutting_down` and [DONE], its core request is aborted, and the
    shim exits 0 without an ERROR line (gunicorn's master does not have to kill it)."""
    svc, pause, core = lone_core
    proc, log_path = start_shim(svc, tmp_path, "--drain-grace", "2")
    try:
        aborted = core.stats().requests_aborted
        pause.touch()
        with httpx.stream("POST", f"{svc.base_url}/v1/chat/completions", json={**BODY, "stream": True},
                          timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # the role chunk
            assert wait_until(lambda: core.stats().active_sequences == 1, 30), core.stats()
            proc.send_signal(signal.SIGTERM)
            frames = [line[6:] for line in lines if line.startswith("data: ")]
        assert frames[-1] == "[DONE]", frames
        assert json.loads(frames[-2])["error"]["code"] == "server_shutting_down", frames
        assert proc.wait(30) == 0
        assert wait_until(lambda: core.stats().requests_aborted == aborted + 1, 15), core.stats()
        assert wait_until(lambda: core.stats().active_sequences == 0, 15), core.stats()
        text = log_path.read_text()
        assert "grace period over: cancelling 1 request(s)" in text
        assert_clean_log(text)
        assert port_free(svc.port)
    finally:
        pause.unlink(missing_ok=True)
        stop_tier(proc)
