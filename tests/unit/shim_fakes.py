"""A fake in-process core for the Flask app tests (test_shim_app, test_shim_routes), the
fixtures that install it, and assertions on the OpenAI error envelope and SSE."""
from __future__ import annotations

import json
import threading

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2

from genapi.config import ApiKey, Config, hash_key
from genapi.v1 import common_pb2, content_pb2, generation_service_pb2 as gen_pb2, model_service_pb2
from shim import create_app, grpc_client

KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
URL = "/v1/chat/completions"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


# --- a fake core -----------------------------------------------------------------------

class FakeRpcError(grpc.RpcError, grpc.Call):
    """What grpcio raises for a failed call: an RpcError that is also a Call."""

    def __init__(self, code: grpc.StatusCode, details: str = "", info: error_details_pb2.ErrorInfo | None = None,
                 trailing=None):
        self._code, self._details = code, details
        self._trailing = list(trailing or [])
        if info is not None:
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=details, details=[detail])
            self._trailing.append(("grpc-status-details-bin", status.SerializeToString()))

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return tuple(self._trailing)

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, callback):
        return False


class Pause:
    def __init__(self, seconds):
        self.seconds = seconds


class FakeCall:
    """A server-streaming call: yields events, raises errors, sleeps on Pause, honours cancel."""

    def __init__(self, items):
        self.items = items
        self.cancelled = threading.Event()

    def __iter__(self):
        for item in self.items:
            if self.cancelled.is_set():
                raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
            if isinstance(item, Pause):
                if self.cancelled.wait(item.seconds):
                    raise FakeRpcError(grpc.StatusCode.CANCELLED, "cancelled")
                continue
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self):
        self.cancelled.set()
        return True


class FakeGeneration:
    def __init__(self):
        self.items = []
        self.calls = []

    def Generate(self, request, metadata=None, timeout=None):
        call = FakeCall(self.items)
        self.calls.append({"request": request, "metadata": dict(metadata or ()), "timeout": timeout, "call": call})
        return call


class FakeModels:
    MODELS = [model_service_pb2.Model(id="m", task=common_pb2.MODEL_TASK_CHAT, created=5, owned_by="o"),
              model_service_pb2.Model(id="org/name", created=6)]

    def ListModels(self, request, metadata=None, timeout=None):
        return model_service_pb2.ListModelsResponse(models=self.MODELS)

    def GetModel(self, request, metadata=None, timeout=None):
        for m in self.MODELS:
            if m.id == request.id:
                return model_service_pb2.GetModelResponse(model=m)
        raise FakeRpcError(grpc.StatusCode.NOT_FOUND, "")


class FakeHealth:
    status = health_pb2.HealthCheckResponse.SERVING

    def Check(self, request, timeout=None):
        if self.status is None:
            raise FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused")
        return health_pb2.HealthCheckResponse(status=self.status)


class FakeCore:
    def __init__(self):
        self.generation = FakeGeneration()
        self.models = FakeModels()
        self.health = FakeHealth()


def usage(c):
    return common_pb2.Usage(prompt_tokens=3, completion_tokens=c, total_tokens=3 + c)


STARTED = gen_pb2.GenerateResponse(usage=usage(0), started=gen_pb2.Started(model="m"))


def text(t, c, i=0):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(c), text=gen_pb2.TextDelta(text=t))


def finished(c, i=0, reason=content_pb2.FINISH_REASON_STOP):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(c), finished=gen_pb2.Finished(reason=reason))


HAPPY = [STARTED, text("Hel", 1), text("lo", 2), finished(2)]


# --- fixtures --------------------------------------------------------------------------

def make_config(**kw):
    defaults = dict(core_host="127.0.0.1", core_port=1, max_body_mb=1, keepalive_s=10.0, request_timeout_s=30.0,
                    api_keys=[ApiKey("test", hash_key(KEY))])
    defaults.update(kw)
    return Config(**defaults)


@pytest.fixture
def core(monkeypatch):
    fake = FakeCore()
    monkeypatch.setattr(grpc_client, "get_client", lambda config: fake)
    return fake


@pytest.fixture
def client(core):
    return create_app(make_config()).test_client()


def assert_envelope(resp, status, code=None, param=None, type=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS
    assert body["error"]["code"] == code
    assert body["error"]["param"] == param
    if type:
        assert body["error"]["type"] == type
    assert "Traceback" not in resp.get_data(as_text=True)
    assert resp.headers.get("x-request-id")
    if 400 <= status < 500 and status != 429:
        assert "Retry-After" not in resp.headers  # B18
    return body["error"]


def sse_events(raw: bytes) -> list:
    out = []
    for block in raw.decode("utf-8").split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        elif block:
            out.append(block)  # comments (keep-alive)
    return out
