"""API-key check: `Authorization: Bearer <key>` against stored SHA-256 digests.

Off when no keys are configured. `reload_keys(app)` re-reads them from the config file in
place (each worker on SIGHUP, shim/worker.py): requests already accepted run on, the next
one is checked against the new keys. Matching (constant time, hashes only) is
genapi.keys.KeyChecker, shared with the core; error messages show at most a masked key.
The matched key's name is kept in `flask.g.principal` (rate limits and ownership use it).
"""
from __future__ import annotations

import logging

from flask import Flask, g, request

from genapi.config import exposure_error, key_problem, load_config
from genapi.keys import ANONYMOUS, KeyChecker, mask

from shim.errors import APIError

PUBLIC_PATHS = frozenset({"/health", "/health/live", "/", "/playground"})
PUBLIC_PREFIXES = ("/playground/",)  # the playground's static files (the page asks for a key itself)

MISSING_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _auth_error(message: str) -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def check_authorization(header: str | None, keys: KeyChecker) -> str:
    """The principal (key name) of `header`'s bearer key; raises a 401 APIError unless it
    is accepted. Without configured keys everyone is ANONYMOUS."""
    if not keys.enabled:
        return ANONYMOUS
    if header is None or not header.strip():
        raise _auth_error(MISSING_MESSAGE)
    scheme, _, key = header.partition(" ")
    key = key.strip()  # RFC 6750: one or more spaces after the scheme
    if scheme.lower() != "bearer":
        raise _auth_error(
            "Invalid authorization scheme: use an Authorization header with Bearer auth "
            "(i.e. Authorization: Bearer YOUR_KEY)."
        )
    if not key:
        raise _auth_error(MISSING_MESSAGE)
    # Keys are printable ASCII without spaces (genapi.config.key_problem): anything else
    # (raw UTF-8 bytes arrive latin-1 decoded) can match no key, and the core could not
    # be sent it in gRPC metadata.
    name = None if key_problem(key) else keys.identify(key.encode("ascii"))
    if name is None:
        raise _auth_error(f"Incorrect API key provided: {mask(key)}.")
    return name


def is_public_path(path: str) -> bool:
    """Paths served without a key: /health, /health/live and the playground's static files."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


log = logging.getLogger("genapi.shim")


def reload_keys(app: Flask) -> bool:
    """Re-reads the API keys of the app's config file (environment overrides included);
    a file that does not load, or that leaves a non-loopback shim without keys, changes
    nothing (logged). True when applied."""
    cfg = app.config["GENAPI"]
    try:
        new = load_config(cfg.path)
    except (OSError, ValueError, KeyError) as e:
        log.error("SIGHUP: config %s not reloaded: %s", cfg.path, " ".join(str(e).split()))
        return False
    if err := exposure_error(new, cfg.shim_host, "REST API"):
        log.error("SIGHUP: config not reloaded: %s", err)
        return False
    app.extensions["genapi_keys"].replace(new.api_keys)
    if refusals := app.extensions.get("genapi_refusals"):
        refusals.clear()  # a raised or removed limit takes effect at once
    cfg.api_keys, cfg.metrics_keys = new.api_keys, new.metrics_keys
    cfg.default_rpm, cfg.default_tpm = new.default_rpm, new.default_tpm  # as the core reloads them
    log.info("SIGHUP: reloaded %d API key(s)", len(new.api_keys))
    return True


def register_auth(app: Flask) -> None:
    keys = app.extensions["genapi_keys"] = KeyChecker(app.config["GENAPI"].api_keys)

    @app.before_request
    def _require_api_key():
        if is_public_path(request.path):
            return
        g.principal = check_authorization(request.headers.get("Authorization"), keys)
