"""API-key check: `Authorization: Bearer <key>` against stored SHA-256 digests.

Off when no digests are configured. Matching (constant time, hashes only) is
server.auth.KeyChecker, shared with the core; error messages show at most a masked key.
"""
from __future__ import annotations

from flask import Flask, request

from server.auth import KeyChecker, mask

from shim.errors import APIError

PUBLIC_PATHS = frozenset({"/health"})

MISSING_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


def _auth_error(message: str) -> APIError:
    return APIError(401, message, "authentication_error", None, "invalid_api_key")


def check_authorization(header: str | None, keys: KeyChecker) -> None:
    """Raises a 401 APIError unless `header` carries an accepted bearer key."""
    if not keys.enabled:
        return
    if header is None or not header.strip():
        raise _auth_error(MISSING_MESSAGE)
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer":
        raise _auth_error(
            "Invalid authorization scheme: use an Authorization header with Bearer auth "
            "(i.e. Authorization: Bearer YOUR_KEY)."
        )
    if not key.strip():
        raise _auth_error(MISSING_MESSAGE)
    # WSGI header values are latin-1 decoded: recover the raw bytes the client sent.
    if not keys.check(key.encode("latin-1", "replace")):
        raise _auth_error(f"Incorrect API key provided: {mask(key)}.")


def register_auth(app: Flask) -> None:
    keys = KeyChecker(app.config["GENAPI"].api_key_sha256)

    @app.before_request
    def _require_api_key():
        if request.path in PUBLIC_PATHS:
            return
        check_authorization(request.headers.get("Authorization"), keys)
