"""The core's Prometheus metrics (prometheus-client), served on `[core] metrics_port`.

Names mirror vLLM's where it has the same measure (`vllm:X` -> `genapi_X`, label
`model_name`), so its dashboards adapt by a prefix change. Units are in the names
(seconds, tokens), counters end in `_total`. What each one measures:

  genapi_time_to_first_token_seconds     Generate arrival -> first output token event
  genapi_inter_token_latency_seconds     gap between output events / tokens in the event
  genapi_e2e_request_latency_seconds     Generate arrival -> end (finished requests)
  genapi_request_queue_time_seconds      engine submission -> batch slots (chat engines)
  genapi_engine_step_seconds             one decode forward pass of a chat engine's batch
  genapi_prompt_tokens_total / genapi_generation_tokens_total
  genapi_request_success_total           finished choices by finished_reason
  genapi_requests_total                  every RPC by method, model_name, key, code
  genapi_rate_limit_rejections_total     429s of the per-key limits by key and limit
  genapi_num_requests_running / _waiting, genapi_kv_cache_usage_perc (0..1, slots in use),
  genapi_batch_lines_waiting             read from the engines and the batch runner at scrape
"""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

from .engines import base as engine_base

log = logging.getLogger("genapi.metrics")

# vLLM's buckets for the same histograms (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

TTFT = Histogram("genapi_time_to_first_token_seconds", "Time to the first output token.", ["model_name"],
                 buckets=TTFT_BUCKETS)
ITL = Histogram("genapi_inter_token_latency_seconds", "Time between output tokens.", ["model_name"],
                buckets=ITL_BUCKETS)
E2E = Histogram("genapi_e2e_request_latency_seconds", "End-to-end latency of finished generations.",
                ["model_name"], buckets=LATENCY_BUCKETS)
QUEUE = Histogram("genapi_request_queue_time_seconds", "Time a request waited for batch slots.",
                  ["model_name"], buckets=LATENCY_BUCKETS)
STEP = Histogram("genapi_engine_step_seconds", "Duration of one decode step of a chat engine's batch.",
                 ["model_name"], buckets=STEP_BUCKETS)
PROMPT_TOKENS = Counter("genapi_prompt_tokens", "Prompt tokens processed.", ["model_name"])
GENERATION_TOKENS = Counter("genapi_generation_tokens", "Tokens generated.", ["model_name"])
SUCCESS = Counter("genapi_request_success", "Finished choices.", ["model_name", "finished_reason"])
REQUESTS = Counter("genapi_requests", "Core RPCs by method, model, key name and gRPC status code.",
                   ["method", "model_name", "key", "code"])
RATE_LIMITED = Counter("genapi_rate_limit_rejections", "Requests refused by the per-key rate limits.",
                       ["key", "limit"])


def _observe_engine(kind: str, model: str, seconds: float) -> None:
    (STEP if kind == "step" else QUEUE).labels(model).observe(seconds)


class EngineCollector:
    """Gauges read from the engines' stats and the batch runner at each scrape."""

    def __init__(self, registry, runner=None):
        self.registry, self.runner = registry, runner

    def collect(self):
        running = GaugeMetricFamily("genapi_num_requests_running", "Sequences in the running batch.",
                                    labels=["model_name"])
        waiting = GaugeMetricFamily("genapi_num_requests_waiting", "Requests waiting for batch slots "
                                    "(embedding/rerank: requests queued for a forward pass).", labels=["model_name"])
        cache = GaugeMetricFamily("genapi_kv_cache_usage_perc", "Fraction of KV-cache slots in use (0..1).",
                                  labels=["model_name"])
        for name, sm in self.registry.models.items():
            try:
                s = sm.engine.stats()
            except Exception:  # an engine that is gone reports nothing
                continue
            running.add_metric([name], s.active_sequences)
            waiting.add_metric([name], s.queued_requests)
            if s.cache_slots_total:
                cache.add_metric([name], s.cache_slots_used / s.cache_slots_total)
        yield from (running, waiting, cache)
        if self.runner is not None:
            lines = GaugeMetricFamily("genapi_batch_lines_waiting", "Batch lines not yet started.")
            lines.add_metric([], self.runner.lines_waiting)
            yield lines


_collector: EngineCollector | None = None


def install(registry, runner=None, port: int = 0, host: str = "127.0.0.1") -> None:
    """Registers the engine gauges and timing observers; serves /metrics on `port` (0: not
    served, the metrics still count). Raises OSError when the port cannot be bound."""
    global _collector
    if _collector is not None:
        REGISTRY.unregister(_collector)
    _collector = EngineCollector(registry, runner)
    REGISTRY.register(_collector)
    if _observe_engine not in engine_base.OBSERVERS:
        engine_base.OBSERVERS.append(_observe_engine)
    if port:
        start_http_server(port, addr=host)
        log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
