"""The Flask app through its test client, with a fake in-process core (no servers)."""
from __future__ import annotations

import io
import json
import re
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2

from genapi.v1 import common_pb2, generation_service_pb2 as gen_pb2, model_service_pb2
from server.config import Config, hash_key
from shim import create_app, grpc_client

KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
URL = "/v1/chat/completions"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
ENVELOPE_KEYS = {"message", "type", "param", "code"}


# --- a fake core -----------------------------------------------------------------------

class FakeRpcError(grpc.RpcError, grpc.Call):
    def __init__(self, code, details=""):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()

    def is_active(self):
        return False

    def time_remaining(self):
        return None

    def cancel(self):
        return False

    def add_callback(self, cb):
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


def finished(c, i=0, reason=gen_pb2.FINISH_REASON_STOP):
    return gen_pb2.GenerateResponse(choice_index=i, usage=usage(c), finished=gen_pb2.Finished(reason=reason))


HAPPY = [STARTED, text("Hel", 1), text("lo", 2), finished(2)]


# --- fixtures --------------------------------------------------------------------------

def make_config(**kw):
    defaults = dict(core_host="127.0.0.1", core_port=1, max_body_mb=1, keepalive_s=10.0, request_timeout_s=30.0,
                    api_key_sha256=[hash_key(KEY)])
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


# --- app basics ------------------------------------------------------------------------

def test_create_app_opens_no_channel(monkeypatch):
    def forbidden(config):
        raise AssertionError("channel created at app creation")

    monkeypatch.setattr(grpc_client, "get_client", forbidden)
    create_app(make_config())


def test_unknown_route_is_a_json_404(client):
    err = assert_envelope(client.get("/v1/nope", headers=AUTH), 404, type="invalid_request_error")
    assert err["message"] == "Invalid URL (GET /v1/nope)"


def test_wrong_method_is_a_json_405_with_allow(client):
    resp = client.get(URL, headers=AUTH)
    assert_envelope(resp, 405, code="method_not_allowed")
    assert "POST" in resp.headers["Allow"]


# --- request id ------------------------------------------------------------------------

@pytest.mark.parametrize("path,method", [("/health", "get"), ("/v1/nope", "get"), (URL, "get"), (URL, "post")])
def test_request_id_echoed_everywhere(client, path, method):
    resp = getattr(client, method)(path, headers={**AUTH, "x-request-id": "abc.DEF_1:2-3"})
    assert resp.headers["x-request-id"] == "abc.DEF_1:2-3"


@pytest.mark.parametrize("bad", ["a" * 129, "has space", "semi;colon", "ünï", "a/b", ""])
def test_insane_request_id_is_replaced(client, bad):
    resp = client.get("/health", headers={"x-request-id": bad})
    assert re.fullmatch(r"req_[0-9a-f]{32}", resp.headers["x-request-id"])


def test_request_id_on_401(client):
    resp = client.post(URL, json=CHAT, headers={"x-request-id": "r1"})
    assert resp.status_code == 401 and resp.headers["x-request-id"] == "r1"


def test_request_id_reaches_the_core(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, json=CHAT, headers={**AUTH, "x-request-id": "rid-42"})
    assert resp.status_code == 200
    call = core.generation.calls[0]
    assert call["request"].request_id == "rid-42"
    assert call["metadata"]["x-request-id"] == "rid-42"
    assert call["metadata"]["authorization"] == f"Bearer {KEY}"
    assert call["timeout"] == 30.0


def test_generated_request_id_reaches_the_core(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, json=CHAT, headers=AUTH)
    rid = resp.headers["x-request-id"]
    assert rid.startswith("req_") and core.generation.calls[0]["request"].request_id == rid


# --- auth ------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [None, "", "Basic " + KEY, KEY, "Bearer", "Bearer ", "Bearer  " + KEY,
                                    f"Bearer {KEY} ", f"Bearer {KEY}x", "Bearer sk-wrong-0000000000000000",
                                    "Bearer \u00e9\u00e9"])
def test_auth_failures(client, core, header):
    headers = {} if header is None else {"Authorization": header}
    resp = client.post(URL, json=CHAT, headers=headers)
    err = assert_envelope(resp, 401, code="invalid_api_key", type="authentication_error")
    assert KEY not in err["message"] and KEY[4:-4] not in err["message"]
    assert not core.generation.calls


def test_auth_wrong_key_is_masked(client):
    err = assert_envelope(client.get("/v1/models", headers={"Authorization": "Bearer sk-1234567890abcdef"}), 401,
                          code="invalid_api_key")
    assert err["message"] == "Incorrect API key provided: sk-1****cdef."
    err = assert_envelope(client.get("/v1/models", headers={"Authorization": "Bearer short"}), 401,
                          code="invalid_api_key")
    assert "short" not in err["message"] and "****" in err["message"]


def test_auth_scheme_is_case_insensitive(client):
    assert client.get("/v1/models", headers={"Authorization": f"bearer {KEY}"}).status_code == 200


def test_any_of_several_keys(core):
    app = create_app(make_config(api_key_sha256=[hash_key("other"), hash_key(KEY)]))
    assert app.test_client().get("/v1/models", headers=AUTH).status_code == 200


def test_health_needs_no_auth(client):
    assert client.get("/health").status_code == 200


def test_auth_off_without_keys(core):
    c = create_app(make_config(api_key_sha256=[])).test_client()
    assert c.get("/v1/models").status_code == 200


# --- body: media type, size, JSON -------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1"])
def test_wrong_content_type_is_415(client, content_type):
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    assert_envelope(client.post(URL, data=json.dumps(CHAT), headers=headers), 415, code="unsupported_media_type")


def test_json_content_type_with_charset_is_fine(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, data=json.dumps(CHAT), headers={**AUTH, "Content-Type": "application/json; charset=UTF-8"})
    assert resp.status_code == 200


@pytest.mark.parametrize("raw,code", [(b"not json{{{", "invalid_json"), (b"", "invalid_json"),
                                      (b"[]", "invalid_type"), (b"42", "invalid_type"), (b"null", "invalid_type"),
                                      (b'"str"', "invalid_type"), (b'{"model": NaN}', "invalid_json"),
                                      (b"\xff\xfe", "invalid_json")])
def test_b1_bad_bodies(client, core, raw, code):
    resp = client.post(URL, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert_envelope(resp, 400, code=code, type="invalid_request_error")
    assert not core.generation.calls


CAP = 1024 * 1024


def test_b15_body_over_cap_with_content_length(client, core):
    raw = b'{"x":"' + b"a" * CAP + b'"}'
    resp = client.post(URL, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert_envelope(resp, 413, code="request_too_large")
    assert not core.generation.calls


def chunked_post(client, raw):
    return client.post(URL, input_stream=io.BytesIO(raw), headers={**AUTH, "Content-Type": "application/json"},
                       environ_overrides={"wsgi.input_terminated": True})


def test_b15_body_over_cap_chunked(client, core):
    resp = chunked_post(client, b'{"x":"' + b"a" * CAP + b'"}')
    assert_envelope(resp, 413, code="request_too_large")


def test_body_of_exactly_the_cap_is_read_whole(client, core):
    core.generation.items = HAPPY
    raw = json.dumps(CHAT).encode()
    raw = raw + b" " * (CAP - len(raw))
    assert len(raw) == CAP
    assert chunked_post(client, raw).status_code == 200
    assert client.post(URL, data=raw, headers={**AUTH, "Content-Type": "application/json"}).status_code == 200


# --- validation through HTTP, stream and non-stream (S1) --------------------------------

@pytest.mark.parametrize("extra,code,param", [
    ({"foo": 1}, "unknown_parameter", "foo"),
    ({"max_tokens": "5"}, "invalid_type", "max_tokens"),
    ({"n": True}, "invalid_type", "n"),
    ({"temperature": -1}, "invalid_value", "temperature"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "unsupported_parameter", "tools"),
    ({"messages": []}, "invalid_value", "messages"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "invalid_value", "messages[0].content"),
])
def test_validation_errors_same_with_and_without_stream(client, core, extra, code, param):
    bodies = []
    for stream in (False, True):
        resp = client.post(URL, json={**CHAT, **extra, "stream": stream}, headers=AUTH)
        assert_envelope(resp, 400, code=code, param=param)
        bodies.append(resp.get_json())
    assert bodies[0] == bodies[1]
    assert not core.generation.calls


def test_missing_model_param(client):
    assert_envelope(client.post(URL, json={"messages": CHAT["messages"]}, headers=AUTH), 400,
                    code="missing_required_parameter", param="model")


def test_lone_surrogate_escape_in_raw_json_is_a_400_not_500(client):
    raw = b'{"model":"m","messages":[{"role":"user","content":"\\ud800"}]}'
    resp = client.post(URL, data=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert_envelope(resp, 400, code="invalid_value", param="messages[0].content")


# --- chat success paths -----------------------------------------------------------------

def test_non_stream_completion(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, json={**CHAT, "max_tokens": 5}, headers=AUTH)
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["object"] == "chat.completion" and body["model"] == "m"
    assert body["choices"][0]["message"]["content"] == "Hello"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert core.generation.calls[0]["request"].stopping.max_tokens == 5


def test_stream_completion(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, json={**CHAT, "stream": True}, headers=AUTH)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    events = sse_events(resp.get_data())
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["usage"] is not None for c in chunks)


def test_stream_include_usage(client, core):
    core.generation.items = HAPPY
    resp = client.post(URL, json={**CHAT, "stream": True, "stream_options": {"include_usage": True}}, headers=AUTH)
    events = sse_events(resp.get_data())
    chunks = events[:-1]
    assert [c["usage"] is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 5


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_404_before_any_byte(client, core, stream):
    core.generation.items = [FakeRpcError(grpc.StatusCode.NOT_FOUND, "The model `x` does not exist.")]
    resp = client.post(URL, json={**CHAT, "model": "x", "stream": stream}, headers=AUTH)
    err = assert_envelope(resp, 404, code="model_not_found", param="model")
    assert err["message"] == "The model `x` does not exist."


@pytest.mark.parametrize("stream", [False, True])
def test_overload_before_first_event_is_429_with_retry_after(client, core, stream):
    core.generation.items = [FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")]
    resp = client.post(URL, json={**CHAT, "stream": stream}, headers=AUTH)
    assert_envelope(resp, 429, code="rate_limit_exceeded")
    assert resp.headers["Retry-After"] == "1"


def test_core_down_is_503(client, core):
    core.generation.items = [FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connect failed to 10.1.2.3")]
    resp = client.post(URL, json=CHAT, headers=AUTH)
    err = assert_envelope(resp, 503, code="service_unavailable")
    assert "10.1.2.3" not in err["message"] and resp.headers["Retry-After"]


def test_error_after_first_byte_is_an_error_frame_then_done(client, core):
    core.generation.items = [STARTED, text("a", 1), FakeRpcError(grpc.StatusCode.INTERNAL, "engine: Traceback x")]
    resp = client.post(URL, json={**CHAT, "stream": True}, headers=AUTH)
    assert resp.status_code == 200
    events = sse_events(resp.get_data())
    assert events[-1] == "[DONE]"
    assert events[-2] == {"error": {"message": "internal error", "type": "server_error", "param": None,
                                    "code": None}}
    assert "Traceback" not in resp.get_data(as_text=True)


def test_non_stream_error_after_some_events_is_an_http_error(client, core):
    core.generation.items = [STARTED, text("a", 1), FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline")]
    assert_envelope(client.post(URL, json=CHAT, headers=AUTH), 504, code="timeout")


def test_stream_keepalive_while_waiting(core):
    client = create_app(make_config(keepalive_s=0.05)).test_client()
    core.generation.items = [STARTED, Pause(0.4), text("a", 1), finished(1)]
    resp = client.post(URL, json={**CHAT, "stream": True}, headers=AUTH)
    events = sse_events(resp.get_data())
    assert events.count(": keep-alive") >= 2
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events
                   if isinstance(e, dict) and e["choices"]) == "a"


def test_closing_the_stream_cancels_the_call(client, core):
    core.generation.items = [STARTED, text("a", 1), Pause(5), finished(1)]
    resp = client.post(URL, json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    first = next(iter(resp.response))
    assert b"assistant" in first
    t0 = time.monotonic()
    resp.close()  # what gunicorn does when the client went away
    call = core.generation.calls[0]["call"]
    assert call.cancelled.is_set() and time.monotonic() - t0 < 1


def test_closing_an_unstarted_stream_cancels_the_call(client, core):
    core.generation.items = [STARTED, Pause(5)]
    resp = client.post(URL, json={**CHAT, "stream": True}, headers=AUTH, buffered=False)
    resp.close()
    assert core.generation.calls[0]["call"].cancelled.is_set()


def test_stream_without_any_event_is_500(client, core):
    core.generation.items = []
    for stream in (False, True):
        assert_envelope(client.post(URL, json={**CHAT, "stream": stream}, headers=AUTH), 500)


def test_unexpected_exception_is_a_500_envelope(client, monkeypatch):
    def broken(config):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(grpc_client, "get_client", broken)
    resp = client.post(URL, json=CHAT, headers=AUTH)
    err = assert_envelope(resp, 500, type="server_error")
    assert err["message"] == "internal error" and "secret" not in resp.get_data(as_text=True)


# --- models and health ------------------------------------------------------------------

def test_list_models(client):
    resp = client.get("/v1/models", headers=AUTH)
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["m", "org/name"]
    assert all(m["object"] == "model" for m in body["data"])


def test_get_model_with_slash(client):
    resp = client.get("/v1/models/org/name", headers=AUTH)
    assert resp.status_code == 200 and resp.get_json()["id"] == "org/name"


def test_get_unknown_model(client):
    err = assert_envelope(client.get("/v1/models/nope", headers=AUTH), 404, code="model_not_found", param="model")
    assert "nope" in err["message"]


def test_health_ok(client):
    resp = client.get("/health")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok"}


@pytest.mark.parametrize("status", [health_pb2.HealthCheckResponse.NOT_SERVING, None])
def test_health_not_serving(client, core, status):
    core.health.status = status
    resp = client.get("/health")
    assert_envelope(resp, 503, code="service_unavailable")
    assert resp.headers["Retry-After"]
