"""API keys: stored and compared as SHA-256 digests, in constant time. Shared by the shim
(HTTP Authorization header) and the core (gRPC `authorization` metadata); no grpc or
Flask import here.

`identify` returns the key's *name* (a principal), not a bool: rate limits and per-key
object ownership are keyed by it. Raw keys never leave this module; `mask` is what may
be shown of one.
"""
from __future__ import annotations

import hashlib
import hmac

from .config import ApiKey

BEARER = "bearer "
ANONYMOUS = "anonymous"  # the one principal (owner) when no keys are configured


class KeyChecker:
    """The configured keys; `replace` swaps them at once (config reload on SIGHUP): a
    request checked after it sees only the new keys, one already accepted runs on."""

    def __init__(self, keys: list[ApiKey]):
        self.replace(keys)

    def replace(self, keys: list[ApiKey]) -> None:
        # One attribute assignment each: readers on other threads see the old or the new set.
        self._principals = {k.name: k for k in keys}
        self._keys = [(k.name, bytes.fromhex(k.sha256)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def principal(self, name: str) -> ApiKey | None:
        """The key named `name` (its models and limits), or None (ANONYMOUS, or revoked)."""
        return self._principals.get(name)

    def limits_of(self, name: str, default_rpm: int, default_tpm: int) -> tuple[int, int]:
        """(rpm, tpm) of key `name`: its own, else the defaults ([limits] rpm / tpm); 0 =
        unlimited. Both tiers ask it: the core to enforce, the shim to know whether to
        look the state up."""
        p = self.principal(name)
        rpm = p.rpm if p is not None and p.rpm is not None else default_rpm
        tpm = p.tpm if p is not None and p.tpm is not None else default_tpm
        return rpm, tpm

    def identify(self, key: str | bytes) -> str | None:
        """The name of the key whose digest matches, or None. Every digest is compared
        (no early exit), so timing does not depend on which key, or how much of it,
        matched."""
        raw = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(raw).digest()
        found = None
        for name, d in self._keys:  # a local reference: a concurrent replace() does not mix sets
            if hmac.compare_digest(digest, d) and found is None:
                found = name
        return found

    def identify_header(self, value: str | None) -> str | None:
        """The key name for an `Authorization: Bearer <key>` value, or None."""
        if not value or value[:len(BEARER)].lower() != BEARER:  # the scheme is case-insensitive (RFC 9110)
            return None
        key = value[len(BEARER):].strip()  # RFC 6750: one or more spaces after the scheme, as the shim reads it
        return self.identify(key) if key else None


def mask(key: str) -> str:
    """What may be shown of a presented key: `sk-1****cdef` for long printable keys."""
    if len(key) >= 16 and key.isascii() and key.isprintable():
        return f"{key[:4]}****{key[-4:]}"
    return "****"
