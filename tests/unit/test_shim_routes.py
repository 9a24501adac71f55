"""The chat, models and health routes through the Flask test client, with a fake
in-process core (no servers): validation, success paths, errors before and after the
first byte, keep-alive and cancellation."""
from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2

from shim import create_app, grpc_client

from .shim_fakes import (  # noqa: F401 (client, core: fixtures)
    AUTH, CHAT, HAPPY, STARTED, URL, FakeRpcError, Pause, assert_envelope, client, core, finished, make_config,
    sse_events, text,
)


# --- validation through HTTP, stream and non-stream (S1) --------------------------------

@pytest.mark.parametrize("extra,code,param", [
    ({"foo": 1}, "unknown_parameter", "foo"),
    ({"max_tokens": "5"}, "invalid_type", "max_tokens"),
    ({"n": True}, "invalid_type", "n"),
    ({"temperature": -1}, "invalid_value", "temperature"),
    ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "unsupported_parameter", "tools[0].type"),
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
    overloaded = error_details_pb2.ErrorInfo(reason="engine_overloaded", domain="genapi",
                                             metadata={"retry_after_s": "1"})
    core.generation.items = [FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", overloaded)]
    resp = client.post(URL, json={**CHAT, "stream": stream}, headers=AUTH)
    assert_envelope(resp, 429, code="engine_overloaded")
    assert resp.headers["Retry-After"] == "1"


@pytest.mark.parametrize("stream", [False, True])
def test_transport_resource_exhausted_is_not_a_rate_limit(client, core, stream):
    """Issue 18 item 5: trailers over gRPC's metadata limit broke the call with
    RESOURCE_EXHAUSTED, which was answered as a 429 rate limit with Retry-After."""
    core.generation.items = [FakeRpcError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "Stream removed (received metadata size exceeds hard limit "
        "(16440 vs. 16384);  :status:42B content-type:60B grpc-status:44B grpc-message:8095B)")]
    resp = client.post(URL, json={**CHAT, "stream": stream}, headers=AUTH)
    err = assert_envelope(resp, 500, type="server_error")
    assert "Retry-After" not in resp.headers and "metadata" not in err["message"]


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
    live = client.get("/health/live")  # liveness: the shim answers, whatever the core
    assert live.status_code == 200 and live.get_json() == {"status": "ok"}
