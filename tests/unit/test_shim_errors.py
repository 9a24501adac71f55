"""shim.errors: the gRPC -> HTTP/OpenAI error mapping table and ErrorInfo handling."""
from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from shim.errors import GRPC_STATUS_MAP, APIError, error_envelope, from_grpc_error

from .shim_fakes import FakeRpcError

ENVELOPE_KEYS = {"message", "type", "param", "code"}


def info(reason, **metadata):
    return error_details_pb2.ErrorInfo(reason=reason, domain="genapi", metadata=metadata)


EXPECTED = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error"),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "authentication_error"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "permission_error"),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "invalid_request_error"),
    grpc.StatusCode.ABORTED: (409, "invalid_request_error"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    grpc.StatusCode.CANCELLED: (499, "invalid_request_error"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "server_error"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "server_error"),
    grpc.StatusCode.INTERNAL: (500, "server_error"),
    grpc.StatusCode.UNKNOWN: (500, "server_error"),
    grpc.StatusCode.DATA_LOSS: (500, "server_error"),
}


@pytest.mark.parametrize("code", list(grpc.StatusCode)[1:], ids=lambda c: c.name)
def test_every_code_maps(code):
    # The core's statuses carry ErrorInfo (RESOURCE_EXHAUSTED is only a 429 with it).
    err = from_grpc_error(FakeRpcError(code, "some detail", info(code.name.lower())))
    assert (err.status, err.type) == EXPECTED[code]
    body = err.envelope()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    retry = "Retry-After" in err.headers
    assert retry == (err.status in (429, 503))


def test_table_covers_the_brief():
    assert {c: m.http_status for c, m in GRPC_STATUS_MAP.items()} == {
        c: s for c, (s, _) in EXPECTED.items() if s != 500}


def test_unauthenticated_code():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "bad key"))
    assert err.code == "invalid_api_key" and err.type == "authentication_error"


def test_internal_never_leaks_details():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "Traceback (most recent call last): secret",
                                       info("boom", param="x")))
    assert err.message == "internal error" and err.param is None and err.code is None
    assert "Traceback" not in str(err.envelope())


def test_calls_cancelled_by_the_workers_drain_are_a_retryable_503(monkeypatch):
    from shim import grpc_client

    assert from_grpc_error(FakeRpcError(grpc.StatusCode.CANCELLED, "Channel closed!")).status == 499
    monkeypatch.setattr(grpc_client, "_shut_down", True)  # the drain grace period is over
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.CANCELLED, "Channel closed!"))
    assert (err.status, err.code, err.type) == (503, "server_shutting_down", "server_error")
    assert err.headers == {"Retry-After": "1"}


def test_unavailable_hides_transport_details():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE,
                                       "failed to connect to all addresses; last error: ipv4:10.0.0.7:50051"))
    assert "10.0.0.7" not in err.message
    assert err.headers == {"Retry-After": "1"}


def test_unavailable_from_core_keeps_its_message_and_retry_after():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "draining",
                                       info("server_shutting_down", retry_after_s="4")))
    assert err.message == "draining" and err.code == "server_shutting_down"
    assert err.headers == {"Retry-After": "4"}


def test_error_info_reason_and_param_are_used():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "prompt has 5000 tokens, limit 2048",
                                       info("context_length_exceeded", param="messages")))
    assert err.envelope() == error_envelope("prompt has 5000 tokens, limit 2048", "invalid_request_error",
                                            "messages", "context_length_exceeded")
    assert err.headers == {}


def test_error_info_from_another_domain_is_ignored():
    other = error_details_pb2.ErrorInfo(reason="X", domain="googleapis.com", metadata={"param": "p"})
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad", other))
    assert err.code is None and err.param is None


def test_not_found_model_defaults_and_error_info():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "The model `x` does not exist"),
                          not_found_param="model", not_found_code="model_not_found")
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "nope", info("model_not_found", param="model")))
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, ""),
                          not_found_message="The model 'x' does not exist.")
    assert err.message == "The model 'x' does not exist."


@pytest.mark.parametrize("value,header", [("2.5", "3"), ("0", "1"), ("", "1"), ("abc", "1"), ("inf", "1"),
                                          ("30", "30")])
def test_resource_exhausted_retry_after(value, header):
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full",
                                       info("rate_limit_exceeded", retry_after_s=value)))
    assert err.status == 429 and err.headers == {"Retry-After": header}
    assert err.message == "queue full"


def test_resource_exhausted_from_the_core_has_retry_after():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", info("engine_overloaded")))
    assert err.status == 429 and err.headers["Retry-After"] == "1" and err.code == "engine_overloaded"
    assert err.type == "rate_limit_error"


@pytest.mark.parametrize("details", [
    "Stream removed (received metadata size exceeds hard limit (16440 vs. 16384);  :status:42B "
    "grpc-message:8095B grpc-status-details-bin:8198B)",
    "received trailing metadata size exceeds limit",
    "",
])
def test_transport_resource_exhausted_is_never_a_rate_limit(details, caplog):
    """Issue 18 item 5: RESOURCE_EXHAUSTED that the gRPC transport raises between shim and
    core (no genapi ErrorInfo) is a server-side failure, not a 429 with Retry-After."""
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert (err.status, err.type, err.code) == (500, "server_error", None)
    assert err.message == "internal error" and err.headers == {}
    foreign = error_details_pb2.ErrorInfo(reason="RATE", domain="googleapis.com")
    assert from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details, foreign)).status == 500


def test_core_call_failure_log_line_is_escaped_and_bounded(caplog):
    forged = "x\nFORGED 2026-01-01 ERROR admin logged in " + "y" * 5000
    with caplog.at_level("WARNING", logger="genapi.shim"):
        from_grpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, forged), request_id="r\nFORGED")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "\n" not in line and "\\nFORGED" in line and len(line) < 700


def test_non_retryable_429():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "request larger than the token budget",
                                       info("tokens_exceeded", should_retry="false")))
    assert err.status == 429 and "Retry-After" not in err.headers
    assert err.headers == {"x-should-retry": "false"}


def test_grpc_message_size_limit_is_413_not_429():
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       "Received message larger than max (70000000 vs. 67108864)"))
    assert err.status == 413 and err.code == "request_too_large" and "Retry-After" not in err.headers


def test_mismatched_rich_status_is_tolerated():
    detail = any_pb2.Any()
    detail.Pack(info("x"))
    status = status_pb2.Status(code=3, message="different", details=[detail])
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad",
                                       trailing=[("grpc-status-details-bin", status.SerializeToString())]))
    assert err.status == 400 and err.code is None
    err = from_grpc_error(FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad",
                                       trailing=[("grpc-status-details-bin", b"\xff garbage")]))
    assert err.status == 400


def test_api_error_envelope_has_four_keys():
    env = APIError(400, "m").envelope()
    assert env == {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}


def test_gunicorn_refusal_is_a_complete_json_response():
    from shim.gunicorn_errors import error_response

    raw = error_response(431, "Request Header Fields Too Large", "Error parsing headers: 'limit'")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    assert headers["x-request-id"].startswith("req_")
    assert json.loads(body) == {"error": {"message": "Error parsing headers: 'limit'", "type": "invalid_request_error",
                                          "param": None, "code": "request_header_fields_too_large"}}
