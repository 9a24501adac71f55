"""API keys in the config: the ApiKey principal, [[auth.keys]] and [auth] api_key_sha256
and metrics_keys parsed and checked (ValueError naming the key and the field), and the key
rules both tiers apply (hash_key, key_problem)."""
from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiKey:
    """A named principal: its name appears in logs, metrics and object ownership; only the
    SHA-256 digest of the key is stored.

    models: the model names this key may use (None: every model); rpm / tpm: its requests
    and tokens per minute (None: the [limits] default; 0: unlimited)."""

    name: str
    sha256: str
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_problem(key: str) -> str | None:
    """Why `key` cannot be an API key, or None: HTTP headers and gRPC metadata carry
    printable ASCII, and a bearer token has no spaces (RFC 6750)."""
    if not key:
        return "the key is empty (an empty key would let any empty bearer token in)"
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        return "a key must be printable ASCII without spaces (HTTP headers and gRPC metadata carry nothing else)"
    return None


_KEY_FIELDS = ("name", "sha256", "models", "rpm", "tpm")


# Key names are label values and log fields: letters, digits and a few marks, bounded.
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,63}")
# Requests or tokens per minute: far beyond any real limit, and inside int64 (Redis counters).
MAX_PER_MINUTE = 10**12


def named_key(k) -> ApiKey:
    """One [[auth.keys]] table -> ApiKey; ValueError naming the key and the bad field."""
    if not isinstance(k, dict):
        raise ValueError("[[auth.keys]]: each key is a table (`[[auth.keys]]` then name = ..., sha256 = ...)")
    name = k.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("[[auth.keys]]: every key needs a non-empty name (name = \"team-a\")")
    if not KEY_NAME.fullmatch(name):
        raise ValueError(f"[[auth.keys]] name = {json.dumps(name)[:80]}: 1 to 64 letters, digits and ._@:- "
                         "(names appear in logs and metrics), starting with a letter or digit")
    for key in k:
        if key not in _KEY_FIELDS:
            raise ValueError(f"[[auth.keys]] {name!r}: unknown key {key!r}{did_you_mean(key, _KEY_FIELDS)}")
    if not isinstance(k.get("sha256"), str):
        raise ValueError(f"API key {name!r}: sha256 must be 64 hex digits (genapi hash-key KEY prints it)")
    models = k.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) and m for m in models)):
        raise ValueError(f"API key {name!r}: models = {models!r}: must be a list of model names")
    if models == []:  # would lock the key out of every model; almost surely a mistake
        raise ValueError(f"API key {name!r}: models = []: allows no model; list the models it may use, "
                         "or leave `models` out to allow every model (revoke a key by removing it)")
    limits = {}
    for field_ in ("rpm", "tpm"):
        v = k.get(field_)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_PER_MINUTE):
            shown = str(v).lower() if isinstance(v, bool) else json.dumps(v) if isinstance(v, str) else v
            raise ValueError(f"API key {name!r}: {field_} = {shown}: must be an integer from 0 to {MAX_PER_MINUTE} "
                             "(0 = unlimited)")
        limits[field_] = v
    return ApiKey(name, k["sha256"].lower(), tuple(models) if models is not None else None, **limits)


def api_keys(auth: dict) -> list[ApiKey]:
    keys = [ApiKey(f"key-{h.lower()[:8]}", h.lower()) for h in auth.get("api_key_sha256", [])]
    tables = auth.get("keys", [])
    if not isinstance(tables, list):
        raise ValueError("[auth] keys must be an array of tables: write each key as [[auth.keys]] "
                         "with name = ... and sha256 = ...")
    keys += [named_key(k) for k in tables]
    seen: set[str] = set()
    for k in keys:
        if len(k.sha256) != 64 or any(c not in "0123456789abcdef" for c in k.sha256):
            raise ValueError(f"API key {k.name!r}: sha256 must be 64 hex digits (genapi hash-key KEY prints it)")
        if k.name in seen:
            raise ValueError(f"API key name {k.name!r} is used twice (names identify keys in logs and limits)")
        seen.add(k.name)
    by_digest: dict[str, str] = {}
    for k in keys:
        if (other := by_digest.setdefault(k.sha256, k.name)) != k.name:
            raise ValueError(f"API keys {other!r} and {k.name!r} have the same sha256 (one key, two names)")
    return keys


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def metrics_keys(auth: dict, keys: list[ApiKey]) -> tuple[str, ...]:
    """[auth] metrics_keys: names of configured keys (a typo would lock Prometheus out)."""
    names = auth.get("metrics_keys", [])
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"[auth] metrics_keys = {names!r}: must be a list of key names")
    known = [k.name for k in keys]
    for n in names:
        if n not in known:
            raise ValueError(f"[auth] metrics_keys: no key is named {n!r}{did_you_mean(n, known)}")
    return tuple(names)
