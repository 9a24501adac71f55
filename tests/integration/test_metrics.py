"""Prometheus metrics on both tiers, parsed with prometheus_client.parser: the shim's
/metrics (two gunicorn workers, multiprocess mode) and the core's metrics port. Counters
move by exactly what known requests did; the shim's TTFT histogram counts the streamed
requests; the access log has one line per request with key names, never keys; the core
exports its spans over OTLP to a collector of the test's own, in the caller's trace."""
from __future__ import annotations

import threading
from concurrent import futures

import grpc
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from genapi.config import hash_key

from ..conftest import MODEL, Service, free_port, user_messages, wait_until

KEY, LIMITED_KEY = "sk-metrics-0123456789abcdef", "sk-metrics-limited-0123456789"


class Collector:
    """An OTLP/gRPC trace collector on loopback that keeps every span it receives."""

    def __init__(self):
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        collector = self
        self.spans, self.lock = [], threading.Lock()

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):
                with collector.lock:
                    collector.spans += [span for rs in request.resource_spans for ss in rs.scope_spans
                                        for span in ss.spans]
                return trace_service_pb2.ExportTraceServiceResponse()

        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def spans_of(self, trace_id: str) -> list:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id]


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.server.stop(0)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, collector):
    metrics_port = free_port()
    s = Service(tmp_path_factory.mktemp("metrics"), "metrics", extra_toml=(
        f"[core]\nmetrics_port = {metrics_port}\n"
        f'[tracing]\notlp_endpoint = "127.0.0.1:{collector.port}"\n'
        '[auth]\nmetrics_keys = ["observer"]\n'
        f'[[auth.keys]]\nname = "observer"\nsha256 = "{hash_key(KEY)}"\n'
        f'[[auth.keys]]\nname = "limited"\nsha256 = "{hash_key(LIMITED_KEY)}"\nrpm = 1\n'))
    s.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    s.start()
    yield s
    s.stop()


def samples(text: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(all_samples, name: str, **labels) -> float:
    """Sum of the samples named `name` whose labels include `labels`."""
    return sum(s.value for s in all_samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def shim_metrics(svc) -> list:
    r = httpx.get(f"{svc.base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


def core_metrics(svc) -> list:
    return samples(httpx.get(svc.metrics_url, timeout=30).text)


def test_counters_move_by_the_known_requests(svc):
    client = svc.sdk(api_key=KEY, timeout=60)
    shim0, core0 = shim_metrics(svc), core_metrics(svc)
    usages, streamed = [], 3
    for i in range(streamed):
        chunks = list(client.chat.completions.create(model=MODEL, messages=user_messages(f"count {i}"),
                                                     max_tokens=4, temperature=0, stream=True,
                                                     stream_options={"include_usage": True}))
        usages.append(chunks[-1].usage)
    for i in range(2):
        usages.append(client.chat.completions.create(model=MODEL, messages=user_messages(f"plain {i}"),
                                                     max_tokens=4, temperature=0).usage)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user_messages("x"), max_tokens=1)
    limited = svc.sdk(api_key=LIMITED_KEY, timeout=60)
    limited.models.list()  # not rate-limited: only model calls count
    usages.append(limited.chat.completions.create(model=MODEL, messages=user_messages("one"), max_tokens=1).usage)
    with pytest.raises(openai.RateLimitError):
        limited.chat.completions.create(model=MODEL, messages=user_messages("two"), max_tokens=1)
    shim1, core1 = shim_metrics(svc), core_metrics(svc)

    def delta(before, after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    chat = {"endpoint": "/v1/chat/completions"}
    # shim: requests by endpoint, model, key name, status (both workers' samples merged)
    assert delta(shim0, shim1, "genapi_http_requests_total", **chat, model=MODEL, key="observer", status="200") == 5
    assert delta(shim0, shim1, "genapi_http_requests_total", **chat, model="", key="observer", status="404") == 1
    assert delta(shim0, shim1, "genapi_http_requests_total", **chat, key="limited", status="429") == 1
    assert delta(shim0, shim1, "genapi_http_time_to_first_token_seconds_count", model=MODEL) == streamed
    assert delta(shim0, shim1, "genapi_http_request_duration_seconds_count", **chat) == 8
    # core: tokens, latencies, requests by method/model/key/code, rate-limit rejections
    m = {"model_name": MODEL}
    # the refused requests (404, 429) were never tokenized: nothing counted for them
    assert delta(core0, core1, "genapi_prompt_tokens_total", **m) == sum(u.prompt_tokens for u in usages)
    assert delta(core0, core1, "genapi_generation_tokens_total", **m) == sum(u.completion_tokens for u in usages) > 0
    assert delta(core0, core1, "genapi_requests_total", method="Generate", model_name=MODEL, key="observer",
                 code="OK") == 5
    assert delta(core0, core1, "genapi_requests_total", method="Generate", model_name="", key="observer",
                 code="NOT_FOUND") == 1
    assert delta(core0, core1, "genapi_requests_total", method="Generate", key="limited",
                 code="RESOURCE_EXHAUSTED") == 1
    assert delta(core0, core1, "genapi_rate_limit_rejections_total", key="limited", limit="requests") == 1
    assert delta(core0, core1, "genapi_time_to_first_token_seconds_count", **m) == \
        sum(1 for u in usages if u.completion_tokens)
    assert delta(core0, core1, "genapi_e2e_request_latency_seconds_count", **m) == 6
    assert delta(core0, core1, "genapi_request_queue_time_seconds_count", **m) == 6
    assert delta(core0, core1, "genapi_engine_step_seconds_count", **m) > 0
    assert delta(core0, core1, "genapi_request_success_total", **m) == 6
    for gauge in ("genapi_num_requests_running", "genapi_num_requests_waiting", "genapi_kv_cache_usage_perc"):
        assert any(s.name == gauge and s.labels == m for s in core1), gauge
    assert value(core1, "genapi_num_requests_running", **m) == 0


def test_metrics_need_a_key_when_keys_are_configured(svc):
    assert httpx.get(f"{svc.base_url}/metrics", timeout=30).status_code == 401
    other = httpx.get(f"{svc.base_url}/metrics", headers={"Authorization": f"Bearer {LIMITED_KEY}"}, timeout=30)
    assert other.status_code == 403  # not in [auth] metrics_keys: the metrics name every key
    assert other.json()["error"]["type"] == "permission_error" and "genapi_" not in other.text


def test_access_log_line_per_request(svc):
    client = svc.sdk(api_key=KEY, timeout=60)
    rid = "access-log-check-1"
    list(client.chat.completions.create(model=MODEL, messages=user_messages("a secret-ish prompt"), max_tokens=2,
                                        stream=True, extra_headers={"x-request-id": rid}))
    assert wait_until(lambda: f"request_id={rid}" in svc.log() and "genapi.access" in svc.log(), timeout_s=10)
    line = next(x for x in svc.log().splitlines() if f"request_id={rid}" in x and "genapi.access" in x)
    for field in ("method=POST", "path=/v1/chat/completions", "status=200", f"model={MODEL}", "key=observer",
                  "prompt_tokens=", "completion_tokens=", "ttft_ms=", "duration_ms="):
        assert field in line, line
    assert KEY not in svc.log() and "secret-ish" not in svc.log()


def test_a_non_streamed_completion_s_access_line_has_no_first_token_time(svc):
    """Its answer comes from the core in one piece (genapi.deltas.WHOLE): a ttft_ms would
    only be its arrival."""
    rid = "access-log-check-2"
    svc.sdk(api_key=KEY, timeout=60).chat.completions.create(model=MODEL, messages=user_messages("whole"),
                                                             max_tokens=2, extra_headers={"x-request-id": rid})
    assert wait_until(lambda: any(f"request_id={rid}" in x and "genapi.access" in x for x in svc.log().splitlines()),
                      timeout_s=10)
    line = next(x for x in svc.log().splitlines() if f"request_id={rid}" in x and "genapi.access" in x)
    assert "status=200" in line and "completion_tokens=" in line and "ttft_ms=" not in line, line


def test_a_client_traceparent_reaches_the_core_log_line_of_its_request(svc):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    rid = "trace-check-1"
    svc.sdk(api_key=KEY, timeout=60).chat.completions.create(
        model=MODEL, messages=user_messages("trace me"), max_tokens=2,
        extra_headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01", "x-request-id": rid})

    def core_line():
        return next((x for x in svc.log().splitlines() if f"request {rid} model=" in x), None)
    assert wait_until(lambda: core_line() is not None, timeout_s=10)
    assert f"trace_id={trace_id}" in core_line()
    access = next(x for x in svc.log().splitlines() if f"request_id={rid}" in x and "genapi.access" in x)
    assert f"trace_id={trace_id}" in access


def test_the_core_exports_its_spans_over_otlp_in_the_callers_trace(svc, collector):
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    svc.sdk(api_key=KEY, timeout=60).chat.completions.create(
        model=MODEL, messages=user_messages("export me"), max_tokens=2,
        extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert wait_until(lambda: collector.spans_of(trace_id), timeout_s=20)  # batched: exported within ~5 s
    span = collector.spans_of(trace_id)[0]
    assert "Generate" in span.name
    assert span.parent_span_id and span.parent_span_id.hex() != "b7ad6b7169203331"  # the shim's span, then ours
