"""Streams under injected engine faults (reliability plan S1, S2, S5).

One service serves three models built from the same tiny checkpoint:
  genapi-tiny-chat  no fault (control)
  fault-fail        the engine raises after 3 events (S2: error after HTTP 200)
  fault-slow        the first engine event is held back 3 s; the shim's keepalive_s is 1 (S5)
"""
from __future__ import annotations

import json
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

from ..conftest import MODEL, TINY_MODEL, Service, wait_until

FAIL = "fault-fail"
SLOW = "fault-slow"
DELAY_S = 3
FAIL_AFTER = 3
SECRET = "/internal/secret/path-42"  # in the injected failure's message: never shown to clients
MESSAGES = [{"role": "user", "content": "Tell me a story about the sea."}]

FAULT_MODELS = f"""
[[models]]
name = "{FAIL}"
path = "{TINY_MODEL}"
[models.options]
max_batch = 4
[models.options.fault]
fail_after_events = {FAIL_AFTER}
fail_message = "injected failure at {SECRET}"

[[models]]
name = "{SLOW}"
path = "{TINY_MODEL}"
[models.options]
max_batch = 4
[models.options.fault]
first_token_delay_s = {DELAY_S}
"""


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("faults"), "faults", model_options=FAULT_MODELS)
    assert "keepalive_s = 1" in svc.config.read_text()
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def sdk(faulty):
    return faulty.sdk(timeout=60)


@pytest.fixture(scope="module")
def channel(faulty):
    ch = grpc.insecure_channel(faulty.grpc_target)
    yield ch
    ch.close()


def chat_url(svc: Service) -> str:
    return f"{svc.base_url}/v1/chat/completions"


def body(model: str, stream: bool, max_tokens: int = 24, **extra) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream, "ignore_eos": True,
            **extra}


def read_sse(svc: Service, payload: dict):
    """(response, seconds until the headers arrived, [(seconds since the request, line)])
    for one raw SSE request."""
    lines = []
    t0 = time.monotonic()
    with httpx.Client(timeout=60) as c, c.stream("POST", chat_url(svc), json=payload) as resp:
        t_headers = time.monotonic() - t0
        raw = b""
        for chunk in resp.iter_raw():
            raw += chunk
            while b"\n" in raw:
                line, raw = raw.split(b"\n", 1)
                lines.append((time.monotonic() - t0, line.decode("utf-8")))
    assert raw == b""  # the stream ends on a line boundary
    return resp, t_headers, lines


def data_frames(lines) -> list[str]:
    """The payloads of the `data:` lines, with the framing checked (blank line after each)."""
    texts = [text for _, text in lines]
    out = []
    for i, text in enumerate(texts):
        if text.startswith("data: "):
            assert texts[i + 1] == "", f"frame not terminated by a blank line: {texts[i:i + 2]}"
            out.append(text[len("data: "):])
        else:
            assert text == "" or text.startswith(":"), f"unexpected SSE line {text!r}"
    return out


def assert_envelope(err_body: dict, status_type: str = "server_error") -> None:
    assert list(err_body) == ["error"]
    err = err_body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == status_type
    assert SECRET not in err["message"] and "Traceback" not in err["message"]


# --- (a) S2: failure after the first bytes ---------------------------------------------

def test_s2_raw_stream_ends_with_one_error_frame_then_done(faulty):
    resp, _, lines = read_sse(faulty, body(FAIL, True))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = data_frames(lines)
    assert frames[-1] == "[DONE]"
    assert frames.count("[DONE]") == 1
    error_frame = json.loads(frames[-2])
    assert_envelope(error_frame)
    chunks = [json.loads(f) for f in frames[:-2]]
    assert all("error" not in c for c in chunks)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    content = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for t in content if t) >= 1  # some tokens reached the client before the failure
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks if c["choices"])  # never "finished"
    assert "".join(text for _, text in lines).count('"error"') == 1


def test_s2_sdk_raises_api_error_while_iterating(sdk):
    stream = sdk.chat.completions.create(model=FAIL, messages=MESSAGES, max_tokens=24, stream=True,
                                         extra_body={"ignore_eos": True})
    got = []
    with pytest.raises(openai.APIError) as ei:
        for chunk in stream:
            got.append(chunk)
    assert not isinstance(ei.value, openai.APIConnectionError)
    assert got and any(c.choices and c.choices[0].delta.content for c in got)
    assert SECRET not in str(ei.value)


def test_s2_non_stream_is_a_500_envelope(faulty):
    resp = httpx.post(chat_url(faulty), json=body(FAIL, False), timeout=60)
    assert resp.status_code == 500
    assert resp.headers["content-type"].split(";")[0] == "application/json"
    assert_envelope(resp.json())
    assert SECRET not in resp.text and "Traceback" not in resp.text


def test_s2_non_stream_sdk_raises_internal_server_error(sdk):
    with pytest.raises(openai.InternalServerError) as ei:
        sdk.chat.completions.create(model=FAIL, messages=MESSAGES, max_tokens=24, extra_body={"ignore_eos": True})
    assert ei.value.status_code == 500
    assert_envelope(ei.value.response.json())


def test_s2_grpc_stream_fails_with_internal_after_events(channel):
    stub = pb_grpc.GenerationServiceStub(channel)
    msg = content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hello")])
    req = pb.GenerateRequest(model=FAIL, messages=[msg], stopping=pb.StoppingOptions(max_tokens=24, ignore_eos=True))
    events = []
    with pytest.raises(grpc.RpcError) as ei:
        for ev in stub.Generate(req, timeout=60):
            events.append(ev)
    assert ei.value.code() == grpc.StatusCode.INTERNAL
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and "finished" not in kinds
    assert kinds.count("text") == FAIL_AFTER
    status = rpc_status.from_call(ei.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details and status.details[0].Unpack(info)
    assert info.domain == "genapi" and info.reason == "engine_error"


def test_s2_service_keeps_serving_after_faults(faulty, sdk, channel):
    # Requests short enough to finish before the fault (2 tokens + finish = 3 events) succeed.
    for _ in range(2):
        out = sdk.chat.completions.create(model=FAIL, messages=MESSAGES, max_tokens=2)
        assert out.choices[0].finish_reason in ("length", "stop")
        chunks = list(sdk.chat.completions.create(model=FAIL, messages=MESSAGES, max_tokens=2, stream=True))
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    out = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert out.usage.completion_tokens >= 1
    assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status \
        == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{faulty.base_url}/health", timeout=10).status_code == 200

    # The failed requests gave their batch slots back.
    stats = admin_service_pb2_grpc.AdminServiceStub(channel)

    def idle():
        s = stats.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=FAIL), timeout=10).engines[0]
        return s.active_sequences == 0 and s.cache_slots_used == 0 and s.queued_requests == 0

    assert wait_until(idle, timeout_s=10)


# --- (b) S5: keep-alive while the first token is late ----------------------------------

def test_s5_keepalive_comments_before_the_first_token(faulty):
    resp, t_headers, lines = read_sse(faulty, body(SLOW, True, max_tokens=6))
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    frames = data_frames(lines)
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(f) for f in frames[:-1]]
    assert all("error" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    first_token_at = next(i for i, (_, text) in enumerate(lines)
                          if text.startswith("data: {") and json.loads(text[6:])["choices"]
                          and json.loads(text[6:])["choices"][0]["delta"].get("content"))
    keepalives = [i for i, (_, text) in enumerate(lines) if text == ": keep-alive"]
    assert keepalives and keepalives[0] < first_token_at, lines[:first_token_at + 1]
    # Status and headers came while the model was still silent (generous bound: delay is 3 s).
    t_first_token = lines[first_token_at][0]
    assert t_first_token - t_headers >= 1.0, (t_headers, t_first_token)
    assert lines[keepalives[0]][0] < t_first_token


def test_s5_sdk_stream_ignores_keepalives(sdk):
    chunks = list(sdk.chat.completions.create(model=SLOW, messages=MESSAGES, max_tokens=4, stream=True,
                                              extra_body={"ignore_eos": True}))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_s5_non_stream_waits_for_the_late_token(sdk):
    out = sdk.chat.completions.create(model=SLOW, messages=MESSAGES, max_tokens=3, extra_body={"ignore_eos": True})
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 3


# --- (c) S1: refused before the first event -------------------------------------------

@pytest.mark.parametrize("payload, status, code", [
    ({"model": "no-such-model"}, 404, "model_not_found"),
    ({"model": FAIL, "max_tokens": 5000}, 400, "context_length_exceeded"),
])
def test_s1_core_refusal_is_the_same_with_and_without_stream(faulty, payload, status, code):
    plain = httpx.post(chat_url(faulty), json={**body(MODEL, False), **payload}, timeout=60)
    streamed = httpx.post(chat_url(faulty), json={**body(MODEL, True), **payload}, timeout=60)
    assert plain.status_code == streamed.status_code == status
    for resp in (plain, streamed):
        assert resp.headers["content-type"].split(";")[0] == "application/json"
        assert_envelope(resp.json(), "invalid_request_error")
    assert streamed.json() == plain.json()
    assert plain.json()["error"]["code"] == code


def test_s1_sdk_stream_refusal_raises_before_iteration(sdk):
    with pytest.raises(openai.NotFoundError) as ei:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert ei.value.response.json()["error"]["param"] == "model"
