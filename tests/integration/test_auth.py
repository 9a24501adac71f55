"""API keys on both tiers (reliability plan X1): the REST shim's Bearer check, the gRPC
core's `authorization` metadata, open health endpoints, and `hash-key` digests in the config.

One service holds two accepted keys: KEY from GENAPI_API_KEYS (hashed at start-up) and
CONFIG_KEY, known only by its SHA-256 digest in `[auth] api_key_sha256`.
"""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc
from genapi.v1 import model_service_pb2, model_service_pb2_grpc

from ..conftest import MODEL, ROOT, Service

KEY = "sk-test-0123456789abcdef"
CONFIG_KEY = "sk-config-key-fedcba9876543210"
MESSAGES = [{"role": "user", "content": "hello"}]


def hash_key_cli(key: str) -> str:
    out = subprocess.run([sys.executable, "-m", "genapi", "hash-key", key], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    digest = hash_key_cli(CONFIG_KEY)
    svc = Service(tmp_path_factory.mktemp("auth"), "auth",
                  extra_toml=f'[auth]\napi_key_sha256 = ["{digest}"]\n',
                  env={"GENAPI_API_KEYS": KEY})
    assert "[auth]" in svc.config.read_text()
    svc.start()
    yield svc
    svc.stop()


def sdk(svc: Service, key: str) -> openai.OpenAI:
    return svc.sdk(api_key=key, timeout=60)


def chat_body(stream: bool = False) -> bytes:
    return json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 2, "stream": stream}).encode()


def assert_401(resp: httpx.Response, *presented: str) -> dict:
    """401 with the OpenAI envelope; the presented secrets appear at most masked."""
    text = resp.content.decode("utf-8")
    assert resp.status_code == 401, text
    assert resp.headers["content-type"].split(";")[0] == "application/json"
    body = json.loads(text)
    assert list(body) == ["error"] and set(body["error"]) == {"message", "type", "param", "code"}
    err = body["error"]
    assert err["code"] == "invalid_api_key"
    assert err["type"] == "authentication_error"
    assert isinstance(err["message"], str) and err["message"]
    for secret in (KEY, CONFIG_KEY, *presented):
        if len(secret) >= 8:
            assert secret not in text
            assert secret[4:-4] not in text  # the middle of a key is never shown
    assert "retry-after" not in resp.headers
    return err


def raw_http(svc: Service, header_lines: list[str], body: bytes = b"") -> tuple[int, bytes]:
    """One request over a plain socket (header values an HTTP library would refuse)."""
    head = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{svc.port}",
            "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close", *header_lines]
    with socket.create_connection(("127.0.0.1", svc.port), timeout=30) as s:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), payload


# --- REST: refused keys --------------------------------------------------------------------

@pytest.mark.parametrize("headers, presented", [
    ({}, ""),
    ({"Authorization": "Basic dXNlcjpzay10ZXN0LTAxMjM0NTY3ODlhYmNkZWY="}, "dXNlcjpzay10ZXN0LTAxMjM0NTY3ODlhYmNkZWY="),
    ({"Authorization": f"Basic {KEY}"}, KEY),
    ({"Authorization": KEY}, KEY),
    ({"Authorization": "Bearer"}, ""),
    ({"Authorization": "Bearer sk-wrong-key-000000000000"}, "sk-wrong-key-000000000000"),
    ({"Authorization": f"Bearer {KEY[:-1]}X"}, KEY[:-1] + "X"),  # revoked-ish: one character off
    ({"Authorization": f"Bearer {KEY[:-1]}"}, KEY[:-1]),  # a prefix of the real key
    ({"Authorization": f"Bearer {KEY}{KEY}"}, KEY + KEY),
    ({"Authorization": f"Bearer {hashlib.sha256(KEY.encode()).hexdigest()}"}, ""),  # the digest is not a key
    ({"Authorization": "Bearer short"}, "short"),
], ids=["missing", "basic", "basic-with-key", "no-scheme", "bearer-no-key", "wrong", "one-off", "prefix",
        "doubled", "digest", "short"])
@pytest.mark.parametrize("stream", [False, True])
def test_x1_refused_keys_are_401(secured, headers, presented, stream):
    resp = httpx.post(f"{secured.base_url}/v1/chat/completions", content=chat_body(stream),
                      headers={"content-type": "application/json", **headers}, timeout=30)
    err = assert_401(resp, presented)
    if presented and len(presented) < 16:
        assert presented not in err["message"]


def test_x1_refused_key_message_is_masked(secured):
    wrong = "sk-live-9999888877776666"
    resp = httpx.post(f"{secured.base_url}/v1/chat/completions", content=chat_body(),
                      headers={"content-type": "application/json", "Authorization": f"Bearer {wrong}"}, timeout=30)
    err = assert_401(resp, wrong)
    assert "****" in err["message"]


@pytest.mark.parametrize("value", ["Bearer ", "Bearer  ", "Bearer \t"])
def test_x1_empty_bearer_is_401(secured, value):
    status, payload = raw_http(secured, [f"Authorization: {value}"], chat_body())
    assert status == 401
    err = json.loads(payload)["error"]
    assert err["code"] == "invalid_api_key" and set(err) == {"message", "type", "param", "code"}


def test_x1_key_with_inner_space_is_401(secured):
    status, payload = raw_http(secured, [f"Authorization: Bearer {KEY[:8]} {KEY[8:]}"], chat_body())
    assert status == 401
    assert KEY[:8] + " " + KEY[8:] not in payload.decode("utf-8")


def test_spaces_around_the_key_are_not_part_of_it_on_both_tiers(secured):
    for value in (f"Bearer  {KEY}", f"Bearer {KEY} "):
        status, payload = raw_http(secured, [f"Authorization: {value}"], chat_body())
        assert status == 200, payload  # the shim and the core read the same key


def test_x1_non_ascii_key_is_401_not_500(secured):
    status, payload = raw_http(secured, ["Authorization: Bearer sk-\xe9\xe8-0123456789abcdef"], chat_body())
    assert status == 401
    assert json.loads(payload)["error"]["code"] == "invalid_api_key"


def test_x1_sdk_raises_authentication_error(secured):
    with pytest.raises(openai.AuthenticationError) as ei:
        sdk(secured, "sk-not-the-right-key-0000").chat.completions.create(model=MODEL, messages=MESSAGES,
                                                                            max_tokens=2)
    assert_401(ei.value.response, "sk-not-the-right-key-0000")
    with pytest.raises(openai.AuthenticationError):
        sdk(secured, "sk-not-the-right-key-0000").models.list()


# --- REST: accepted keys, open and closed routes ------------------------------------------

@pytest.mark.parametrize("key", [KEY, CONFIG_KEY], ids=["env-key", "config-digest-key"])
def test_right_key_is_served(secured, key):
    client = sdk(secured, key)
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in client.models.list()] == [MODEL]


def test_genapi_chat_sends_the_key_from_the_environment(secured):
    run = [sys.executable, "-m", "genapi", "chat", "hello", "--url", f"{secured.base_url}/v1", "--max-tokens", "2"]
    env = {k: v for k, v in secured.env.items() if k not in ("GENAPI_API_KEYS", "OPENAI_API_KEY")}
    ok = subprocess.run(run, cwd=ROOT, env={**env, "OPENAI_API_KEY": CONFIG_KEY}, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip(), ok.stderr
    refused = subprocess.run(run, cwd=ROOT, env={**env, "GENAPI_API_KEY": "sk-wrong-0000000000000000"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr.startswith("genapi chat: 401: ")
    assert "sk-wrong-0000000000000000" not in refused.stderr


def test_scheme_is_case_insensitive(secured):
    resp = httpx.post(f"{secured.base_url}/v1/chat/completions", content=chat_body(),
                      headers={"content-type": "application/json", "Authorization": f"bearer {KEY}"}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_health_is_open(secured):
    resp = httpx.get(f"{secured.base_url}/health", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    resp = httpx.get(f"{secured.base_url}/health", headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert resp.status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", f"/v1/models/{MODEL}"])
def test_models_need_the_key(secured, path):
    assert_401(httpx.get(f"{secured.base_url}{path}", timeout=10))
    assert_401(httpx.get(f"{secured.base_url}{path}", headers={"Authorization": "Bearer nope"}, timeout=10))
    ok = httpx.get(f"{secured.base_url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    assert ok.status_code == 200 and MODEL in ok.text


def test_unknown_route_without_key_is_401_not_404(secured):
    # Nothing about the API's surface is revealed before authentication.
    assert_401(httpx.get(f"{secured.base_url}/v1/nothing-here", timeout=10))


# --- gRPC ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def channel(secured):
    ch = grpc.insecure_channel(secured.grpc_target)
    yield ch
    ch.close()


def _generate(channel, metadata=None):
    stub = pb_grpc.GenerationServiceStub(channel)
    req = pb.GenerateRequest(model=MODEL, stopping=pb.StoppingOptions(max_tokens=2), messages=[
        content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hello")])])
    return list(stub.Generate(req, metadata=metadata, timeout=60))


@pytest.mark.parametrize("metadata", [
    None,
    [("authorization", "Bearer sk-wrong-0000000000000000")],
    [("authorization", KEY)],
    [("authorization", f"Basic {KEY}")],
    [("authorization", "Bearer ")],
    [("x-api-key", KEY)],
], ids=["none", "wrong", "no-scheme", "basic", "empty", "other-header"])
def test_grpc_rejects_missing_or_wrong_key(channel, metadata):
    with pytest.raises(grpc.RpcError) as ei:
        _generate(channel, metadata)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert KEY not in (ei.value.details() or "")
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.RpcError) as ei:
        models.ListModels(model_service_pb2.ListModelsRequest(), metadata=metadata, timeout=10)
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("key", [KEY, CONFIG_KEY])
def test_grpc_accepts_bearer_key(channel, key):
    events = _generate(channel, [("authorization", f"Bearer {key}")])
    assert events[0].WhichOneof("event") == "started" and events[-1].WhichOneof("event") == "finished"
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    listed = models.ListModels(model_service_pb2.ListModelsRequest(), metadata=[("authorization", f"Bearer {key}")],
                               timeout=10)
    assert [m.id for m in listed.models] == [MODEL]


def test_grpc_scheme_is_case_insensitive_like_the_shim(channel):
    events = _generate(channel, [("authorization", f"bearer {KEY}")])
    assert events[-1].WhichOneof("event") == "finished"


def test_grpc_health_is_open(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING


# --- hash-key --------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [KEY, "k", "sk-~!#$%&*()_+=[]{}|;:<>?"])  # any printable ASCII (others: test_cli)
def test_hash_key_prints_sha256_hex(key):
    assert hash_key_cli(key) == hashlib.sha256(key.encode("utf-8")).hexdigest()


def test_service_log_has_no_key(secured):
    log = secured.log()
    assert KEY not in log and CONFIG_KEY not in log
    assert "Traceback" not in log
