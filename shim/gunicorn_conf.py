"""gunicorn settings for the shim, read from the genapi config (GENAPI_CONFIG + env).

    GENAPI_CONFIG=my.toml gunicorn -c python:shim.gunicorn_conf

gthread workers with a buffering front (shim/worker.py): each worker process holds one
gRPC channel (created after the fork) and serves `threads` requests at once; its event
loop gathers each request before a thread takes it (slow clients hold no thread), answers
429 at once when every thread is busy and 408 when a request does not arrive within
`read_timeout_s`. `threads = 0` (the default) sizes the pool so that the workers together
hold at least what the core holds (every model's max_batch + max_queue): the core's
admission control decides, and its 429 comes back at once. Streams are plain iterators
written by the worker threads, and the worker's heartbeat runs in its main loop, so a
long stream does not trigger WORKER TIMEOUT.

On Linux each worker listens on a socket of its own (SO_REUSEPORT), so the kernel spreads
new connections over the workers by a hash of their addresses. With one shared socket the
worker whose event loop happens to be awake wins every accept: under a burst on a busy
machine one worker took all 864 connections and refused what the other could have served
(bench/RESULTS.md, 2026-12-04).
"""
import glob
import math
import os
import shutil
import signal
import sys
import tempfile

from genapi.config import exposure_error, load_config, log_level

_cfg = load_config()

# Prometheus multiprocess mode (shim/metrics.py): the workers write their samples into one
# directory, set before they fork; ours unless the operator chose one.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="genapi-shim-metrics-")

if _err := exposure_error(_cfg, _cfg.shim_host, "REST API"):
    raise SystemExit(f"genapi: {_err}")

wsgi_app = "shim:create_app()"
bind = [f"[{_cfg.shim_host}]:{_cfg.shim_port}" if ":" in _cfg.shim_host else f"{_cfg.shim_host}:{_cfg.shim_port}"]
worker_class = "shim.worker.ShimWorker"
# gunicorn then binds no socket in the master and one per worker, in each worker's fork.
# Elsewhere SO_REUSEPORT does not balance (macOS hands every connection to one socket).
reuse_port = sys.platform.startswith("linux")
workers = _cfg.workers
threads = _cfg.shim_threads
worker_connections = max(1000, threads + 100)  # busy threads, plus requests arriving and kept alive
# gthread's timeout is the worker heartbeat (sent from the main loop), not a request
# limit; request length is bounded by request_timeout_s (the gRPC deadline).
timeout = 120
# SIGTERM: the workers drain for drain_grace_s (shim/worker.py), then close what is left;
# the master kills a worker only after this, which leaves time for that close.
STOP_MARGIN_S = 5
graceful_timeout = math.ceil(_cfg.drain_grace_s) + STOP_MARGIN_S
keepalive = 5
preload_app = False  # no gRPC state in the master; each worker builds its own app

# Request-line and header limits (B16): oversized requests get a 4xx from gunicorn.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

accesslog = None  # access log off by default (it would record paths and client ids)
errorlog = "-"
loglevel = log_level().lower()
proc_name = "genapi-shim"
# gunicorn >= 24 opens a control socket at a fixed per-user path; several shims (or
# test runs) on one host would fight over it. Ignored by older gunicorn versions.
control_socket_disable = True


def on_starting(server):
    """SIGINT drains like SIGTERM (as the core does): gunicorn's master would quit at once
    on it, its workers too. A second one quits at once.

    A shim that admits fewer requests than its core holds refuses the difference itself."""
    server.handle_int = server.handle_term
    # SIGHUP reloads the API keys in every worker in place (shim/auth.reload_keys) instead
    # of gunicorn's restart of all workers, whose old ones would drain with 503s.
    server.handle_hup = lambda: _reload_workers(server)
    for stale in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.unlink(stale)  # samples of a previous run
    if _cfg.core_capacity > workers * threads:
        server.log.warning(
            "genapi: the shim serves %d requests at once (workers %d x threads %d) but the core holds %d "
            "(max_batch + max_queue of every model); beyond %d the shim answers 429 itself. "
            "Leave [shim] threads = 0 (auto) to size it from the models.",
            workers * threads, workers, threads, _cfg.core_capacity, workers * threads)


def when_ready(server):
    if reuse_port:  # gunicorn's "Listening at:" names no socket then: the workers bind theirs
        server.log.info("genapi: the workers listen at %s, a socket each (SO_REUSEPORT)",
                        ", ".join(f"http://{b}" for b in bind))


def _reload_workers(server) -> None:
    server.log.info("genapi: SIGHUP: the workers reload their API keys")
    for pid in list(server.WORKERS):
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass


def post_worker_init(worker):
    """gunicorn's own refusals (malformed HTTP) in the OpenAI error shape."""
    from shim import gunicorn_errors

    gunicorn_errors.install(worker)


def child_exit(server, worker):
    """A worker's live gauges go with it (multiprocess mode); its counters stay counted."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
