"""Bad input to POST /v1/chat/completions (reliability plan B1-B8, B15-B18, S1) and bounded identifiers.

Every case is sent twice, plain and with `"stream": true`: a refused request must get the
same status and the same error body either way (S1), never `200` plus an error event.
Error bodies are the OpenAI envelope and nothing else (E), 4xx are never 408/409/5xx and
carry no Retry-After (B18: the SDK would retry them), no stack trace, no prompt echo.
"""
from __future__ import annotations

import json
import socket
import time

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..conftest import MODEL, Service, wait_until

SENTINEL = "zq-prompt-sentinel-4711"  # put in every prompt; must never come back in an error
MESSAGES = [{"role": "user", "content": f"Say hi. {SENTINEL}"}]
JSON = {"content-type": "application/json"}


# --- helpers ------------------------------------------------------------------------------

def assert_error(resp: httpx.Response, status: int, *, code=..., param=..., type_=None) -> dict:
    """E + B18 on one response; returns the inner error object."""
    text = resp.content.decode("utf-8")  # strict: the body is valid UTF-8
    assert resp.status_code == status, text
    assert resp.headers["content-type"].split(";")[0].strip() == "application/json"
    body = json.loads(text)
    assert list(body) == ["error"], body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["param"] is None or isinstance(err["param"], str)
    assert err["code"] is None or isinstance(err["code"], str)
    assert "Traceback" not in text and 'File "' not in text
    assert SENTINEL not in text
    assert_not_retryable(resp)
    if code is not ...:
        assert err["code"] == code, err
    if param is not ...:
        assert err["param"] == param, err
    if type_ is not None:
        assert err["type"] == type_, err
    return err


def assert_not_retryable(resp: httpx.Response) -> None:
    """B18: a client error the SDK must not retry."""
    assert 400 <= resp.status_code < 500
    assert resp.status_code not in (408, 409, 429)
    assert "retry-after" not in resp.headers
    assert "retry-after-ms" not in resp.headers
    assert resp.headers.get("x-should-retry", "false") == "false"


def body_with(stream: bool, **fields) -> dict:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    body.update(fields)
    if stream:
        body["stream"] = True
    return body


def post_raw(service: Service, content, headers=None, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{service.base_url}/v1/chat/completions", content=content,
                      headers=headers if headers is not None else JSON, timeout=timeout)


def post_both(service: Service, body: dict) -> tuple[httpx.Response, httpx.Response]:
    """The same body sent plain and with stream: true (S1)."""
    plain = post_raw(service, json.dumps({**body, "stream": False}))
    streamed = post_raw(service, json.dumps({**body, "stream": True}))
    return plain, streamed


def assert_same(plain: httpx.Response, streamed: httpx.Response) -> None:
    """S1: a refused stream is an ordinary HTTP error, identical to the non-stream one."""
    assert streamed.status_code == plain.status_code
    assert not streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.json() == plain.json()


def sdk_error(client: openai.OpenAI, exc_type, **kwargs) -> httpx.Response:
    """Sends through the official SDK; returns the HTTP response of the error it raised."""
    with pytest.raises(exc_type) as ei:
        result = client.chat.completions.create(**kwargs)
        if kwargs.get("stream"):  # a refused stream must fail before the first chunk
            for _ in result:
                pass
    return ei.value.response


def sdk_both(client, exc_type, **kwargs) -> tuple[httpx.Response, httpx.Response]:
    kwargs.setdefault("max_tokens", 2)
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("model", MODEL)
    return sdk_error(client, exc_type, **kwargs), sdk_error(client, exc_type, stream=True, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def log_mark(service):
    """Where the shared service's log stood before this module (checked at the end)."""
    return len(service.log())


@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """A second service whose model caps completions at 64 tokens (B8)."""
    svc = Service(tmp_path_factory.mktemp("capped"), "capped", model_options="max_output_tokens = 64\n").start()
    yield svc
    svc.stop()


# --- B1: bodies that are not a JSON object -----------------------------------------------

@pytest.mark.parametrize("raw, streamish", [
    (b"not json{{{", b'{"model": "genapi-tiny-chat", "stream": true, "messages": [{{{'),
    (b"[]", b'[{"model": "genapi-tiny-chat", "stream": true}]'),
    (b"42", b'[42, {"stream": true}]'),
    (b"null", b'"{\\"stream\\": true}"'),  # a JSON string, not an object
    (b"", b"   \n"),
    (b"\xff\xfe{}", b'{"stream": true, "model": "\xff"}'),  # not UTF-8
], ids=["garbage", "array", "number", "null", "empty", "not-utf8"])
def test_b1_body_not_a_json_object(service, raw, streamish):
    plain = post_raw(service, raw)
    streamed = post_raw(service, streamish)
    for resp in (plain, streamed):
        err = assert_error(resp, 400, type_="invalid_request_error", param=None)
        assert err["code"] in ("invalid_json", "invalid_type")
    assert streamed.json()["error"]["code"] == plain.json()["error"]["code"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1"])
@pytest.mark.parametrize("stream", [False, True])
def test_b1_wrong_content_type(service, content_type, stream):
    headers = {} if content_type is None else {"content-type": content_type}
    resp = post_raw(service, json.dumps(body_with(stream)).encode(), headers=headers)
    assert resp.status_code in (400, 415)
    assert_error(resp, resp.status_code, type_="invalid_request_error")


def test_b1_wrong_content_type_same_with_stream(service):
    body = json.dumps(body_with(False)).encode()
    plain = post_raw(service, body, headers={"content-type": "text/plain"})
    streamed = post_raw(service, json.dumps(body_with(True)).encode(), headers={"content-type": "text/plain"})
    assert_same(plain, streamed)


# --- B2: required fields ------------------------------------------------------------------

@pytest.mark.parametrize("drop, extra, param", [
    ("model", {}, "model"),
    ("messages", {}, "messages"),
    (None, {"messages": []}, "messages"),
    (None, {"model": ""}, "model"),
], ids=["no-model", "no-messages", "empty-messages", "empty-model"])
def test_b2_missing_required_field(service, drop, extra, param):
    body = {**body_with(False), **extra}
    body.pop(drop, None)
    plain, streamed = post_both(service, body)
    err = assert_error(plain, 400, param=param, type_="invalid_request_error")
    assert err["code"] in ("missing_required_parameter", "invalid_value")
    assert_same(plain, streamed)


# --- B3: wrong JSON types (no silent coercion) ---------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("max_tokens", "5"), ("max_tokens", 1.5), ("temperature", "hot"), ("n", True),
    ("top_p", [1]), ("stream", "yes"), ("messages", "hi"), ("model", 7),
], ids=["max_tokens-str", "max_tokens-float", "temperature-str", "n-bool", "top_p-list", "stream-str",
        "messages-str", "model-int"])
def test_b3_wrong_type_raw(service, field, value):
    body = {**body_with(False), field: value}
    resp = post_raw(service, json.dumps(body))
    assert_error(resp, 400, code="invalid_type", param=field)
    if field != "stream":
        streamed = post_raw(service, json.dumps({**body, "stream": True}))
        assert_same(resp, streamed)


@pytest.mark.parametrize("field, value", [
    ("max_tokens", "5"), ("max_tokens", 1.5), ("temperature", "hot"), ("n", True),
])
def test_b3_wrong_type_sdk(client, field, value):
    plain, streamed = sdk_both(client, openai.BadRequestError, **{field: value})
    assert_error(plain, 400, code="invalid_type", param=field)
    assert_same(plain, streamed)


# --- B4: values out of range ---------------------------------------------------------------

@pytest.mark.parametrize("fields, param", [
    ({"temperature": -1}, "temperature"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": 2}, "top_p"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"presence_penalty": 3}, "presence_penalty"),
], ids=lambda v: json.dumps(v) if isinstance(v, dict) else v)
def test_b4_out_of_range(client, fields, param):
    plain, streamed = sdk_both(client, openai.BadRequestError, **fields)
    assert_error(plain, 400, code="invalid_value", param=param, type_="invalid_request_error")
    assert_same(plain, streamed)


# --- B5: unknown, unsupported and ignored fields ------------------------------------------

def test_b5_unknown_field_is_rejected_like_openai(client):
    plain, streamed = sdk_both(client, openai.BadRequestError, extra_body={"foo": 1})
    err = assert_error(plain, 400, param="foo", code="unknown_parameter")
    assert err["message"] == "Unrecognized request argument supplied: foo"
    assert_same(plain, streamed)


@pytest.mark.parametrize("field, value, param", [
    ("audio", {"voice": "alloy", "format": "wav"}, "audio"),
    ("tools", [{"type": "custom", "custom": {"name": "grep"}}], "tools[0].type"),
])
def test_b5_known_but_unsupported_field(client, field, value, param):
    plain, streamed = sdk_both(client, openai.BadRequestError, **{field: value})
    err = assert_error(plain, 400, param=param, code="unsupported_parameter")
    assert field in err["message"].lower()
    assert_same(plain, streamed)


@pytest.mark.parametrize("field, value", [
    ("user", "user-1234"), ("metadata", {"team": "qa"}), ("store", False), ("service_tier", "auto"),
])
def test_b5_accepted_and_ignored_fields(client, field, value):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, **{field: value})
    assert out.choices[0].finish_reason in ("length", "stop")
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, stream=True,
                                                 **{field: value}))
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")


# --- B6: unknown model ---------------------------------------------------------------------

def test_b6_unknown_model(client):
    plain, streamed = sdk_both(client, openai.NotFoundError, model="no-such-model")
    err = assert_error(plain, 404, code="model_not_found", param="model")
    assert "no-such-model" in err["message"]
    assert_same(plain, streamed)


# --- B7 / B8: context and output limits ----------------------------------------------------

def test_b7_prompt_longer_than_context(client):
    messages = [{"role": "user", "content": "word " * 5000 + SENTINEL}]
    plain, streamed = sdk_both(client, openai.BadRequestError, messages=messages)
    err = assert_error(plain, 400, code="context_length_exceeded", type_="invalid_request_error")
    assert "2048" in err["message"]  # the limit
    counts = [int(w) for w in err["message"].replace(",", " ").split() if w.isdigit() and int(w) > 2048]
    assert counts, err["message"]  # ... and the prompt's token count
    assert "word word" not in err["message"]
    assert_same(plain, streamed)


def test_b8_prompt_plus_max_tokens_over_context(client):
    plain, streamed = sdk_both(client, openai.BadRequestError, max_tokens=2040)
    err = assert_error(plain, 400, param="max_tokens", code="context_length_exceeded")
    assert "2048" in err["message"] and "2040" in err["message"]
    assert_same(plain, streamed)
    # The same prompt with a budget that fits is served.
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2).choices


def test_b8_max_tokens_over_model_output_cap(capped):
    body = body_with(False, max_tokens=100)
    plain, streamed = post_both(capped, body)
    err = assert_error(plain, 400, param="max_tokens", code="invalid_value")
    assert "64" in err["message"]
    assert_same(plain, streamed)
    ok = post_raw(capped, json.dumps(body_with(False, max_tokens=64, ignore_eos=True)))
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 64


# --- B15: body over the 32 MiB cap -------------------------------------------------------

def _oversized(stream: bool) -> bytes:
    head = b'{"model": "genapi-tiny-chat", "stream": %s, "messages": [{"role": "user", "content": "' % (
        b"true" if stream else b"false")
    return head + b"a" * (32 * 1024 * 1024 + 1024) + b'"}]}'


@pytest.mark.parametrize("stream", [False, True])
def test_b15_body_over_cap_with_content_length(service, stream):
    resp = post_raw(service, _oversized(stream), timeout=120)
    assert "content-length" in {k.lower() for k in resp.request.headers}
    assert_error(resp, 413, code="request_too_large", param=None)


@pytest.mark.parametrize("stream", [False, True])
def test_b15_body_over_cap_chunked(service, stream):
    data = _oversized(stream)

    def chunks():
        for i in range(0, len(data), 1 << 20):
            yield data[i:i + (1 << 20)]

    resp = post_raw(service, chunks(), timeout=120)
    assert resp.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in resp.request.headers
    assert_error(resp, 413, code="request_too_large", param=None)


def test_b15_body_just_under_cap_is_parsed(service):
    # Same framing, small enough: the cap is not what refuses it (context length is).
    body = json.dumps(body_with(False, messages=[{"role": "user", "content": "a " * 300_000}]))
    resp = post_raw(service, body, timeout=120)
    assert_error(resp, 400, code="context_length_exceeded")


# --- B16: oversized headers ----------------------------------------------------------------

def _assert_refused_by_http_layer(resp: httpx.Response) -> None:
    """gunicorn refuses these before the app runs, in the same envelope as the app."""
    assert 400 <= resp.status_code < 500, resp.status_code
    assert_not_retryable(resp)
    assert "Traceback" not in resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"].startswith("req_")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"] and err["code"]


@pytest.mark.parametrize("stream", [False, True])
def test_b16_too_many_headers(service, stream):
    headers = {**JSON, **{f"x-filler-{i}": "v" for i in range(200)}}
    resp = post_raw(service, json.dumps(body_with(stream)), headers=headers)
    _assert_refused_by_http_layer(resp)


@pytest.mark.parametrize("stream", [False, True])
def test_b16_16kb_header_line(service, stream):
    headers = {**JSON, "x-filler": "a" * 16 * 1024}
    resp = post_raw(service, json.dumps(body_with(stream)), headers=headers)
    _assert_refused_by_http_layer(resp)


def test_b16_16kb_request_line(service):
    resp = httpx.post(f"{service.base_url}/v1/chat/completions?q={'a' * 16 * 1024}",
                      content=json.dumps(body_with(False)), headers=JSON, timeout=30)
    _assert_refused_by_http_layer(resp)


def _raw_exchange(service: Service, data: bytes) -> tuple[int, dict, bytes]:
    """Sends raw bytes, reads until the server closes; returns (status, headers, body)."""
    host, port = service.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize("data, code", [
    (b"NOT HTTP AT ALL\r\n\r\n", "bad_request"),  # refused by gunicorn itself
    # read by the app, which finds the chunk size broken
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", "invalid_body"),
], ids=["request-line", "chunk-size"])
def test_malformed_http_gets_the_error_envelope(service, data, code):
    status, headers, body = _raw_exchange(service, data)
    assert status == 400
    assert headers["content-type"] == "application/json" and headers["x-request-id"].startswith("req_")
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == code and err["message"]


def test_b16_worker_still_serves_after_header_abuse(service):
    # Several times, so that both gunicorn workers are exercised.
    for _ in range(4):
        post_raw(service, json.dumps(body_with(False)), headers={**JSON, "x-filler": "a" * 16 * 1024})
        resp = post_raw(service, json.dumps(body_with(False)))
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["finish_reason"] in ("length", "stop")


# --- B17: Unicode edge cases ---------------------------------------------------------------

def _json_text(content_literal: str, stream: bool) -> bytes:
    """A request body whose message content is the given JSON string literal (escapes kept)."""
    return ('{"model": "%s", "max_tokens": 2, "stream": %s, "messages": [{"role": "user", "content": %s}]}'
            % (MODEL, "true" if stream else "false", content_literal)).encode("utf-8")


def _assert_valid_answer(resp: httpx.Response) -> None:
    """200 or 400 (never 5xx); the body is strict UTF-8 JSON (each SSE frame for a stream)."""
    assert resp.status_code in (200, 400), resp.text
    text = resp.content.decode("utf-8")
    if resp.status_code == 400:
        assert_error(resp, 400)
        return
    if resp.headers["content-type"].startswith("text/event-stream"):
        frames = [f for f in text.split("\n\n") if f.strip()]
        assert frames[-1] == "data: [DONE]"
        for f in frames[:-1]:
            assert f.startswith("data: ")
            chunk = json.loads(f[len("data: "):])
            assert "error" not in chunk
            json.dumps(chunk, ensure_ascii=False).encode("utf-8")
    else:
        out = json.loads(text)
        out["choices"][0]["message"]["content"].encode("utf-8")


@pytest.mark.parametrize("literal", [
    '"lone \\ud800 surrogate"',
    '"low \\udc00 first \\udbff"',
    '"nul \\u0000 in \\u0000 the middle"',
    json.dumps("\u202eright-to-left\u200f mark \u200e \u061c", ensure_ascii=False),
    json.dumps("\ufeff bom, \U0001F600 emoji, e\u0301 combining, \uffff noncharacter", ensure_ascii=False),
    '"' + "x" * (1 << 20) + '"',
], ids=["lone-high-surrogate", "lone-low-surrogates", "nul", "rtl-marks", "misc", "1mb-token"])
def test_b17_unicode_edge_cases(service, literal):
    plain = post_raw(service, _json_text(literal, False), timeout=120)
    streamed = post_raw(service, _json_text(literal, True), timeout=120)
    _assert_valid_answer(plain)
    _assert_valid_answer(streamed)
    assert streamed.status_code == plain.status_code
    if plain.status_code == 400:
        assert_same(plain, streamed)


def test_b17_lone_surrogate_is_a_precise_400(service):
    resp = post_raw(service, _json_text('"a\\ud800b"', False))
    assert_error(resp, 400, code="invalid_value", param="messages[0].content")


# --- identifiers are bounded and never echoed without bound (issue 18, item 5) ----------

LONG = "m" * 8000  # twice this in the core's trailers broke gRPC's 16 KiB metadata limit
_TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


def _tool_turns(call=None, tool_call_id="call_1") -> list[dict]:
    return [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [call or _TOOL_CALL]},
            {"role": "tool", "content": "42", "tool_call_id": tool_call_id}]


@pytest.mark.parametrize("fields, param", [
    ({"model": LONG}, "model"),
    ({"model": "m" * 257}, "model"),
    ({"messages": [{"role": "user", "content": "hi", "name": LONG}]}, "messages[0].name"),
    ({"messages": _tool_turns(call={**_TOOL_CALL, "id": LONG})}, "messages[1].tool_calls[0].id"),
    ({"messages": _tool_turns(call={**_TOOL_CALL, "function": {"name": LONG, "arguments": "{}"}})},
     "messages[1].tool_calls[0].function.name"),
    ({"messages": _tool_turns(tool_call_id=LONG)}, "messages[2].tool_call_id"),
    ({"user": LONG}, "user"),
    ({"prompt_cache_key": LONG}, "prompt_cache_key"),
    ({"safety_identifier": "s" * 65}, "safety_identifier"),  # the spec's own maxLength
    ({"metadata": {"k" * 65: "v"}}, "metadata"),  # spec: keys <= 64, values <= 512
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"stop": "s" * 1025}, "stop"),
    ({"stop": ["ok", "s" * 1025]}, "stop[1]"),
    # bounded even where the feature itself is refused as unsupported
    ({"tools": [{"type": "function", "function": {"name": LONG}}]}, "tools[0].function.name"),
    ({"tool_choice": {"type": "function", "function": {"name": LONG}}}, "tool_choice.function.name"),
], ids=["model-8000", "model-257", "name", "tool_call.id", "tool_call.name", "tool_call_id", "user",
        "prompt_cache_key", "safety_identifier", "metadata-key", "metadata-value", "stop", "stop[1]",
        "tools.name", "tool_choice.name"])
def test_ident_overlong_identifier_is_a_clear_400(service, fields, param):
    plain, streamed = post_both(service, body_with(False, **fields))
    err = assert_error(plain, 400, code="string_above_max_length", param=param, type_="invalid_request_error")
    assert "maximum length" in err["message"]
    assert len(plain.content) < 1000 and "mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm" not in plain.text
    assert_same(plain, streamed)


def test_ident_too_many_metadata_pairs(service):
    plain, streamed = post_both(service, body_with(False, metadata={f"k{i}": "v" for i in range(17)}))
    assert_error(plain, 400, code="invalid_value", param="metadata")
    assert_same(plain, streamed)


def test_ident_identifiers_at_the_bound_are_served(service):
    body = body_with(False, messages=[{"role": "user", "content": "hi", "name": "n" * 256}], user="u" * 256,
                     safety_identifier="s" * 64, metadata={"k" * 64: "v" * 512}, stop=["s" * 1024])
    resp = post_raw(service, json.dumps(body))
    assert resp.status_code == 200, resp.text


def test_ident_unknown_field_with_a_huge_name_is_not_echoed(service):
    plain, streamed = post_both(service, body_with(False, **{LONG: 1}))
    err = assert_error(plain, 400, code="unknown_parameter")
    assert len(err["param"]) < 300 and len(err["message"]) < 400
    assert_same(plain, streamed)


def test_ident_unknown_model_is_echoed_in_full_when_bounded(service):
    name = "no-such-model-" + "x" * 200
    plain, streamed = post_both(service, body_with(False, model=name))
    err = assert_error(plain, 404, code="model_not_found", param="model")
    assert name in err["message"]
    assert_same(plain, streamed)


@pytest.mark.parametrize("length, status", [(8000, 400), (257, 400), (256, 404)])
def test_ident_retrieve_model_with_overlong_id(service, length, status):
    resp = httpx.get(f"{service.base_url}/v1/models/{'m' * length}", timeout=30)
    err = assert_error(resp, status, param="model")
    assert err["code"] == ("string_above_max_length" if status == 400 else "model_not_found")
    assert len(resp.content) < 1000


FORGED = "FORGED-LOG-LINE-4711 INFO [genapi.generation] request admin done"


def test_ident_client_text_cannot_forge_a_log_line(service, grpc_channel):
    resp = post_raw(service, json.dumps(body_with(False, model=f"nope\n{FORGED}\r\n{FORGED}\u2028{FORGED}")))
    assert_error(resp, 404, code="model_not_found")
    gen = _generation_stub(grpc_channel)
    with pytest.raises(grpc.RpcError):  # a gRPC caller's request id goes to the log as well
        list(gen.Generate(_grpc_request(model=f"nope\n{FORGED}", request_id=f"rid\n{FORGED}"), timeout=30))
    with pytest.raises(grpc.RpcError):
        list(gen.Generate(_grpc_request(model=f"nope\n{FORGED}"), timeout=30,
                          metadata=[("x-request-id", "r" * 5000)]))
    # The core logs the last attempt after it answered: wait for its oversized request id line.
    assert wait_until(lambda: service.log().count(FORGED) >= 3, timeout_s=10)
    lines = service.log().splitlines()
    assert [ln for ln in lines if FORGED in ln], "the attempt is logged (escaped)"
    assert not [ln for ln in lines if ln.startswith("FORGED") or "\u2028" in ln], "a forged log line"
    assert not [ln for ln in lines if "r" * 1000 in ln], "an unbounded value in the log"
    assert "\n" not in resp.json()["error"]["message"]  # the echo in the message is escaped too


def _generation_stub(channel):
    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    return pb_grpc.GenerationServiceStub(channel)


def _grpc_request(**fields):
    from genapi.v1 import content_pb2
    from genapi.v1 import generation_service_pb2 as pb

    req = pb.GenerateRequest(model=MODEL, messages=[content_pb2.ChatMessage(
        role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])],
        stopping=pb.StoppingOptions(max_tokens=2))
    for key, value in fields.items():
        if key == "name":
            req.messages[0].name = value
        elif key == "stop":
            req.stopping.stop.append(value)
        else:
            setattr(req, key, value)
    return req


@pytest.mark.parametrize("fields, param", [
    ({"model": LONG}, "model"),
    ({"request_id": "r" * 129}, "request_id"),
    ({"request_id": "r\nforged"}, "request_id"),
    ({"name": LONG}, "messages[0].name"),
    ({"stop": "s" * 1025}, "stop[0]"),
], ids=["model", "request_id", "request_id-newline", "name", "stop"])
def test_ident_grpc_overlong_identifier_is_invalid_argument(grpc_channel, fields, param):
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as ei:
        list(_generation_stub(grpc_channel).Generate(_grpc_request(**fields), timeout=30))
    err = ei.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details()[:300])
    assert len(err.details()) < 1000
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(err).details[0].Unpack(info)
    assert info.reason in ("string_above_max_length", "invalid_value") and info.metadata["param"] == param


def test_ident_grpc_get_model_with_overlong_id(grpc_channel):
    from genapi.v1 import model_service_pb2, model_service_pb2_grpc

    with pytest.raises(grpc.RpcError) as ei:
        model_service_pb2_grpc.ModelServiceStub(grpc_channel).GetModel(
            model_service_pb2.GetModelRequest(id=LONG), timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(ei.value.details()) < 1000


# --- after all of it: the service still serves ------------------------------------------

def test_zz_service_still_serves(service, client, grpc_channel, log_mark):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.completion_tokens >= 1
    chunks = list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    health = health_pb2_grpc.HealthStub(grpc_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"{service.base_url}/health", timeout=10).status_code == 200
    new_log = service.log()[log_mark:]
    assert "Traceback" not in new_log
    assert "WORKER TIMEOUT" not in new_log and "unhandled error" not in new_log


def test_zz_capped_service_still_serves(capped):
    resp = post_raw(capped, json.dumps(body_with(False)))
    assert resp.status_code == 200
    assert "Traceback" not in capped.log()
