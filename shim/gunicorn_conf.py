"""gunicorn settings for the shim, read from the genapi config (GENAPI_CONFIG + env).

    GENAPI_CONFIG=my.toml gunicorn -c python:shim.gunicorn_conf

gthread workers: each worker process holds one gRPC channel (created after the fork)
and serves `threads` requests at once; streams are plain iterators written by the
worker threads, and the worker's heartbeat runs in its main loop, so a long stream
does not trigger WORKER TIMEOUT.
"""
import os

from genapi.config import exposure_error, load_config

_cfg = load_config()

if _err := exposure_error(_cfg, _cfg.shim_host, "REST API"):
    raise SystemExit(f"genapi: {_err}")

wsgi_app = "shim:create_app()"
bind = [f"[{_cfg.shim_host}]:{_cfg.shim_port}" if ":" in _cfg.shim_host else f"{_cfg.shim_host}:{_cfg.shim_port}"]
worker_class = "gthread"
workers = _cfg.workers
threads = _cfg.threads
# gthread's timeout is the worker heartbeat (sent from the main loop), not a request
# limit; request length is bounded by request_timeout_s (the gRPC deadline).
timeout = 120
graceful_timeout = 30
keepalive = 5
preload_app = False  # no gRPC state in the master; each worker builds its own app

# Request-line and header limits (B16): oversized requests get a 4xx from gunicorn.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

accesslog = None  # access log off by default (it would record paths and client ids)
errorlog = "-"
loglevel = os.environ.get("GENAPI_LOG_LEVEL", "info")
proc_name = "genapi-shim"
# gunicorn >= 24 opens a control socket at a fixed per-user path; several shims (or
# test runs) on one host would fight over it. Ignored by older gunicorn versions.
control_socket_disable = True


def post_worker_init(worker):
    """gunicorn's own refusals (malformed HTTP) in the OpenAI error shape."""
    from shim import gunicorn_errors

    gunicorn_errors.install()
