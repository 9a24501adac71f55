"""One TOML config for both tiers; environment variables override it.

Layout (every key optional; see README "Configuration"):

    [core]   host, port, max_message_mb
    [shim]   host, port, core (list of addresses), workers, threads,
             request_timeout_s, read_timeout_s, max_body_mb, keepalive_s, drain_grace_s
    [auth]   api_key_sha256 = ["<hex digest>", ...]   (unnamed keys)
             [[auth.keys]] name, sha256                (named keys)
    [[models]] name, task, backend, path, [models.options]

Defaults live in the dataclasses below and nowhere else. The bundled default config
(`genapi/default.toml`) ships inside the package, so an installed wheel finds it too.
"""
from __future__ import annotations

import enum
import hashlib
import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_CONFIG = PACKAGE_DIR / "default.toml"


def home_dir() -> Path:
    """Where relative model paths of the bundled config point: $GENAPI_HOME, else the
    checkout this package sits in (it has build.sh), else the current directory."""
    if home := os.environ.get("GENAPI_HOME"):
        return Path(home).expanduser().resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "build.sh").is_file() and (checkout / "protos").is_dir():
        return checkout
    return Path.cwd()


class Task(str, enum.Enum):
    """What a model is served for (the registry picks an engine by it)."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    RERANK = "rerank"
    TRANSCRIPTION = "transcription"


@dataclass
class ModelConfig:
    """One `[[models]]` table. `options` holds every engine option verbatim; the few that
    several layers read are also parsed into typed fields."""

    name: str
    task: Task = Task.CHAT
    backend: str = "torch"
    path: str = ""
    options: dict = field(default_factory=dict)

    @property
    def max_batch(self) -> int | None:
        """Sequences decoded together (None: the engine's default)."""
        return _int_option(self, "max_batch", None, minimum=1)

    @property
    def max_queue(self) -> int | None:
        """Admitted requests waiting for a slot (None: the engine's default)."""
        return _int_option(self, "max_queue", None, minimum=0)

    @property
    def request_capacity(self) -> int:
        """How many requests the core holds for this model at once (max_batch running +
        max_queue waiting, with the backend's defaults); beyond it the core answers 429."""
        if self.task is not Task.CHAT:
            return 0
        batch, queue = ENGINE_ADMISSION_DEFAULTS.get(self.backend, ENGINE_ADMISSION_DEFAULTS["torch"])
        return (self.max_batch or batch) + (queue if self.max_queue is None else self.max_queue)

    @property
    def max_output_tokens(self) -> int:
        """Cap on max_tokens per request; 0 = up to the context."""
        return _int_option(self, "max_output_tokens", 0, minimum=0)

    @property
    def owned_by(self) -> str:
        """Owner shown in /v1/models."""
        return str(self.options.get("owned_by", "genapi"))


# The engines' own defaults for max_batch and max_queue (server/engines/torch/engine.py,
# server/engines/trtllm/mapping.py; a unit test keeps them equal). The shim sizes its thread
# pool from them: it must hold at least what the core holds, so the core's admission decides.
ENGINE_ADMISSION_DEFAULTS = {"torch": (32, 256), "trtllm": (64, 256)}
# Request threads per worker when `threads = 0` (auto): each worker's share of the core's
# capacity plus this much room (requests routed unevenly between workers, /health, /v1/models).
AUTO_THREADS_HEADROOM = 32


def _int_option(mc: ModelConfig, key: str, default, minimum: int):
    value = mc.options.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"model {mc.name!r}: option {key} must be an integer >= {minimum}, got {value!r}")
    return value


@dataclass(frozen=True)
class ApiKey:
    """A named principal: its name appears in logs, metrics and object ownership; only the
    SHA-256 digest of the key is stored."""

    name: str
    sha256: str


@dataclass
class Config:
    core_host: str = "127.0.0.1"
    core_port: int = 50051
    max_message_mb: int = 64
    shim_host: str = "127.0.0.1"
    shim_port: int = 8000
    core_targets: list[str] = field(default_factory=list)
    workers: int = 2
    threads: int = 0  # per worker; 0 = auto (see shim_threads)
    request_timeout_s: float = 600.0
    read_timeout_s: float = 30.0  # request head + body must arrive within it; also each blocked send
    max_body_mb: int = 32
    keepalive_s: float = 10.0
    drain_grace_s: float = 30.0  # on SIGTERM/SIGINT: how long the shim's requests in flight get
    api_keys: list[ApiKey] = field(default_factory=list)
    models: list[ModelConfig] = field(default_factory=list)
    path: Path | None = None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def core_capacity(self) -> int:
        """Requests the core holds at once over the models of this config (running + waiting)."""
        return sum(m.request_capacity for m in self.models)

    @property
    def shim_threads(self) -> int:
        """Request threads per gunicorn worker: `threads`, or when 0 (auto) enough that the
        workers together hold everything the core can hold, plus headroom."""
        if self.threads > 0:
            return self.threads
        return math.ceil(self.core_capacity / max(1, self.workers)) + AUTO_THREADS_HEADROOM

    @property
    def core_target(self) -> str:
        """gRPC target the shim dials: one address, or a dns:/// name for round-robin."""
        if not self.core_targets:
            return f"{self.core_host}:{self.core_port}"
        if len(self.core_targets) == 1:
            return self.core_targets[0]
        # gRPC takes a static list of replicas only as literal IPv4 addresses; names go
        # through one dns:/// target whose records list the replicas.
        for t in self.core_targets:
            host = t.rpartition(":")[0]
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"core address {t!r}: several core addresses must be IPv4 host:port; "
                                 "for names use one dns:///name:port target") from None
        return "ipv4:" + ",".join(self.core_targets)


# (table, key in the table, Config attribute, type, environment variable)
_SETTINGS = (
    ("core", "host", "core_host", str, "GENAPI_GRPC_HOST"),
    ("core", "port", "core_port", int, "GENAPI_GRPC_PORT"),
    ("core", "max_message_mb", "max_message_mb", int, "GENAPI_MAX_MESSAGE_MB"),
    ("shim", "host", "shim_host", str, "GENAPI_HOST"),
    ("shim", "port", "shim_port", int, "GENAPI_PORT"),
    ("shim", "workers", "workers", int, "GENAPI_WORKERS"),
    ("shim", "threads", "threads", int, "GENAPI_THREADS"),
    ("shim", "request_timeout_s", "request_timeout_s", float, "GENAPI_REQUEST_TIMEOUT_S"),
    ("shim", "read_timeout_s", "read_timeout_s", float, "GENAPI_READ_TIMEOUT_S"),
    ("shim", "max_body_mb", "max_body_mb", int, "GENAPI_MAX_BODY_MB"),
    ("shim", "keepalive_s", "keepalive_s", float, "GENAPI_KEEPALIVE_S"),
    ("shim", "drain_grace_s", "drain_grace_s", float, "GENAPI_DRAIN_GRACE_S"),
)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _resolve_model_path(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base / p).resolve())


def _task(name: str, value) -> Task:
    try:
        return Task(value)
    except ValueError:
        raise ValueError(f"model {name!r}: unknown task {value!r} "
                         f"({', '.join(t.value for t in Task)})") from None


def _api_keys(auth: dict) -> list[ApiKey]:
    keys = [ApiKey(f"key-{h.lower()[:8]}", h.lower()) for h in auth.get("api_key_sha256", [])]
    keys += [ApiKey(str(k["name"]), str(k["sha256"]).lower()) for k in auth.get("keys", [])]
    for k in keys:
        if len(k.sha256) != 64 or any(c not in "0123456789abcdef" for c in k.sha256):
            raise ValueError(f"API key {k.name!r}: sha256 must be 64 hex digits (genapi hash-key KEY prints it)")
    return keys


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Reads the TOML file (GENAPI_CONFIG or the bundled default) and applies environment
    overrides. Raises OSError for an unreadable file, ValueError for a bad value."""
    path = Path(path or os.environ.get("GENAPI_CONFIG") or DEFAULT_CONFIG)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    # Relative model paths: against the home directory for the bundled config, else
    # against the config file's directory.
    base = home_dir() if path.resolve() == DEFAULT_CONFIG else path.resolve().parent
    cfg = Config(
        core_targets=list(raw.get("shim", {}).get("core", [])),
        api_keys=_api_keys(raw.get("auth", {})),
        models=[
            ModelConfig(
                name=m["name"],
                task=_task(m["name"], m.get("task", "chat")),
                backend=m.get("backend", "torch"),
                path=_resolve_model_path(m["path"], base) if m.get("path") else "",
                options=dict(m.get("options", {})),
            )
            for m in raw.get("models", [])
        ],
        path=path,
    )
    for table, key, attr, conv, _ in _SETTINGS:
        if key in raw.get(table, {}):
            setattr(cfg, attr, conv(raw[table][key]))
    _apply_env(cfg, os.environ)
    if cfg.threads < 0:
        raise ValueError(f"[shim] threads must be >= 0 (0 = auto), got {cfg.threads}")
    if not cfg.read_timeout_s > 0:
        raise ValueError(f"[shim] read_timeout_s must be > 0, got {cfg.read_timeout_s}")
    if not 0 <= cfg.drain_grace_s < math.inf:
        raise ValueError(f"[shim] drain_grace_s must be >= 0, got {cfg.drain_grace_s}")
    return cfg


def _apply_env(cfg: Config, env) -> None:
    if keys := env.get("GENAPI_API_KEYS"):
        raw_keys = [k.strip() for k in keys.split(",") if k.strip()]
        cfg.api_keys += [ApiKey(f"env-{i}", hash_key(k)) for i, k in enumerate(raw_keys, 1)]
    if v := env.get("GENAPI_CORE"):
        cfg.core_targets = [a.strip() for a in v.split(",") if a.strip()]
    for _, _, attr, conv, var in _SETTINGS:
        if var in env:
            try:
                setattr(cfg, attr, conv(env[var]))
            except ValueError:
                raise ValueError(f"{var}={env[var]!r} is not a valid {conv.__name__}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_error(cfg: Config, host: str, what: str) -> str | None:
    """The one "no keys -> loopback only" rule: a refusal message when `what` (the REST
    API, the gRPC core) would listen on a non-loopback `host` without API keys."""
    if cfg.auth_enabled or is_loopback(host):
        return None
    return (f"refusing to expose the {what} on {host} without API keys: set GENAPI_API_KEYS or "
            "[auth] api_key_sha256 in the config, or listen on 127.0.0.1")
