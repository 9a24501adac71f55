"""The Flask app through its test client, with a fake in-process core (no servers):
app basics, request ids, auth and request bodies."""
from __future__ import annotations

import io
import json
import re

import pytest

from genapi.config import ApiKey, hash_key
from shim import create_app, grpc_client

from .shim_fakes import AUTH, CHAT, HAPPY, KEY, URL, assert_envelope, client, core, make_config  # noqa: F401 (fixtures)


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

@pytest.mark.parametrize("header", [None, "", "Basic " + KEY, KEY, "Bearer", "Bearer ", f"Bearer {KEY}x",
                                    "Bearer sk-wrong-0000000000000000", "Bearer \u00e9\u00e9",
                                    f"Bearer {KEY[:6]} {KEY[6:]}"])
def test_auth_failures(client, core, header):
    headers = {} if header is None else {"Authorization": header}
    resp = client.post(URL, json=CHAT, headers=headers)
    err = assert_envelope(resp, 401, code="invalid_api_key", type="authentication_error")
    assert KEY not in err["message"] and KEY[4:-4] not in err["message"]
    assert not core.generation.calls


@pytest.mark.parametrize("header", [f"Bearer  {KEY}", f"Bearer {KEY} "])
def test_spaces_around_the_key_are_not_part_of_it(client, header):  # RFC 6750: 1*SP after the scheme
    assert client.get("/v1/models", headers={"Authorization": header}).status_code != 401


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
    app = create_app(make_config(api_keys=[ApiKey("other", hash_key("other")), ApiKey("test", hash_key(KEY))]))
    assert app.test_client().get("/v1/models", headers=AUTH).status_code == 200


def test_health_needs_no_auth(client):
    assert client.get("/health").status_code == 200 and client.get("/health/live").status_code == 200


def test_auth_off_without_keys(core):
    c = create_app(make_config(api_keys=[])).test_client()
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


def test_every_channel_retries_a_dead_core_within_seconds():
    from genapi.config import Config

    for round_robin in (False, True):  # one core (pick_first) as well as several
        assert dict(grpc_client.channel_options(8, round_robin))["grpc.max_reconnect_backoff_ms"] <= 5000
    assert not grpc_client.uses_round_robin(Config())


def test_several_cores_are_balanced_with_health_checking():
    import json

    from genapi.config import Config

    one = dict(grpc_client.channel_options(8, grpc_client.uses_round_robin(Config())))
    assert "grpc.lb_policy_name" not in one and "grpc.service_config" not in one
    several = Config(core_targets=["127.0.0.1:1", "127.0.0.1:2"])
    opts = dict(grpc_client.channel_options(8, grpc_client.uses_round_robin(several)))
    assert opts["grpc.lb_policy_name"] == "round_robin"
    config = json.loads(opts["grpc.service_config"])
    assert config["healthCheckConfig"] == {"serviceName": ""}  # NOT_SERVING cores get no calls
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert opts["grpc.max_reconnect_backoff_ms"] <= 5000  # a restarted core is back within seconds
