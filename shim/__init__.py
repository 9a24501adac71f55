"""genapi's OpenAI-compatible HTTP shim (Flask, served by gunicorn gthread workers).

`create_app()` builds the WSGI app; it opens no gRPC channel (that happens lazily in
each worker, see shim.grpc_client). Run it with `gunicorn -c shim/gunicorn_conf.py`.
"""
from __future__ import annotations

import logging

from flask import Flask

__all__ = ["create_app"]


def _configure_logging(config) -> None:
    """The shim's `genapi.*` lines (access log included), text or JSON, with the request's
    request and trace ids (genapi/logs.py)."""
    from genapi import logs
    from shim.tracing import log_context

    logger = logging.getLogger("genapi")
    if not logger.handlers and not logging.getLogger().handlers:
        logs.setup("INFO", config.log_format, log_context, logger=logger,
                   text_format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")


def create_app(config=None) -> Flask:
    """The Flask app. `config` is a genapi.config.Config; None loads it (GENAPI_CONFIG
    picks the file, environment variables override)."""
    from genapi.config import load_config
    from shim.auth import register_auth
    from shim.errors import register_error_handlers
    from shim.metrics import bp as metrics_bp
    from shim.observe import register_observe
    from shim.ratelimit import register_ratelimit_headers
    from shim.request_id import register_request_id
    from shim.tracing import register_tracing
    from shim.routes import (audio, batches, chat, conversations, embeddings, files, health, models, playground,
                             rerank, responses)

    if config is None:
        config = load_config()
    _configure_logging(config)

    app = Flask("shim")
    # No 308 redirects to a "cleaned" path (`a//b` -> `a/b`): a path that does not match a
    # route as sent is a 404 in the OpenAI envelope (ids decoded from %2F never re-route).
    app.url_map.merge_slashes = False
    app.config["GENAPI"] = config
    app.config["MAX_CONTENT_LENGTH"] = int(config.max_body_mb * 1024 * 1024)

    register_request_id(app)  # first: every later hook and error carries the id
    register_tracing(app)  # the W3C traceparent sent on to the core
    register_observe(app)  # before auth: refusals are logged and counted too
    register_auth(app)
    register_error_handlers(app)
    register_ratelimit_headers(app)
    for blueprint in (health.bp, models.bp, chat.bp, embeddings.bp, rerank.bp, files.bp, batches.bp,
                      playground.bp, responses.bp, conversations.bp, audio.bp, metrics_bp):
        app.register_blueprint(blueprint)
    return app
