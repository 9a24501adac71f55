"""The shim's Prometheus metrics (prometheus-client) and `GET /metrics`.

Under gunicorn every worker is its own process: gunicorn_conf.py points
PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers fork, each worker writes
its samples there, and /metrics (answered by any worker) merges them with
prometheus_client's MultiProcessCollector. Without that variable (a Flask test client)
the process's own registry is served.

  genapi_http_requests_total{endpoint, method, model, key, status}
  genapi_http_request_duration_seconds{endpoint}        arrival -> last byte written
  genapi_http_time_to_first_token_seconds{model}       streamed chat: arrival -> first token
                                                        event received from the core
  genapi_http_rate_limit_rejections_total{key, limit}  429s the shim answered itself (a key
                                                        whose rpm window is spent: shim/ratelimit.py);
                                                        the core's genapi_rate_limit_rejections_total
                                                        counts the rest: their sum is every one

`endpoint` is the route's rule (`/v1/files/<file_id>`), never the raw path; `model` is the
request's model only when the request succeeded (a client string never becomes a label
value the core did not accept); `key` is the key name (never the key).
"""
from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, g
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from shim.errors import APIError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0)
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                    600.0)

HTTP_REQUESTS = Counter("genapi_http_requests", "HTTP requests by endpoint, method, model, key name, status.",
                        ["endpoint", "method", "model", "key", "status"])
HTTP_DURATION = Histogram("genapi_http_request_duration_seconds", "HTTP request duration (to the last byte).",
                          ["endpoint"], buckets=DURATION_BUCKETS)
HTTP_TTFT = Histogram("genapi_http_time_to_first_token_seconds", "Streamed chat: time to the first token.",
                      ["model"], buckets=TTFT_BUCKETS)

SHIM_RATE_LIMITED = Counter("genapi_http_rate_limit_rejections", "Requests the shim refused for a spent rpm window.",
                            ["key", "limit"])

bp = Blueprint("metrics", __name__)


def exposition() -> bytes:
    """Every worker's samples in the text format (this process's alone outside gunicorn)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


@bp.get("/metrics")
def metrics():
    allowed = current_app.config["GENAPI"].metrics_keys
    if allowed and g.get("principal") not in allowed:  # the names of every key are in there
        raise APIError(403, "This API key may not read the metrics ([auth] metrics_keys).", "permission_error",
                       None, "insufficient_permissions")
    return Response(exposition(), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Content-Type": CONTENT_TYPE_LATEST})
