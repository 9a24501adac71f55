"""One TOML config for both tiers; environment variables override it.

Layout (every key optional; see README "Configuration"):

    [core]   host, port, max_message_mb
    [shim]   host, port, core (list of addresses), workers, threads,
             request_timeout_s, max_body_mb, keepalive_s
    [auth]   api_key_sha256 = ["<hex digest>", ...]
    [[models]] name, task, backend, path, [models.options]
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "config" / "default.toml"


@dataclass
class ModelConfig:
    name: str
    task: str = "chat"
    backend: str = "torch"
    path: str = ""
    options: dict = field(default_factory=dict)


@dataclass
class Config:
    core_host: str = "127.0.0.1"
    core_port: int = 50051
    max_message_mb: int = 64
    shim_host: str = "127.0.0.1"
    shim_port: int = 8000
    core_targets: list[str] = field(default_factory=list)
    workers: int = 2
    threads: int = 32
    request_timeout_s: float = 600.0
    max_body_mb: int = 32
    keepalive_s: float = 10.0
    api_key_sha256: list[str] = field(default_factory=list)
    models: list[ModelConfig] = field(default_factory=list)
    path: Path | None = None

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


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _resolve_model_path(path: str, base: Path) -> str:
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (base / p).resolve())


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Reads the TOML file (GENAPI_CONFIG or the default) and applies env overrides."""
    path = Path(path or os.environ.get("GENAPI_CONFIG") or DEFAULT_CONFIG)
    with open(path, "rb") as f:
        raw = tomllib.load(f)
    core, shim, auth = raw.get("core", {}), raw.get("shim", {}), raw.get("auth", {})
    # Relative model paths are relative to the repo root for the bundled config,
    # else to the config file's directory.
    base = REPO_ROOT if path.resolve() == DEFAULT_CONFIG.resolve() else path.resolve().parent
    cfg = Config(
        core_host=core.get("host", "127.0.0.1"),
        core_port=int(core.get("port", 50051)),
        max_message_mb=int(core.get("max_message_mb", 64)),
        shim_host=shim.get("host", "127.0.0.1"),
        shim_port=int(shim.get("port", 8000)),
        core_targets=list(shim.get("core", [])),
        workers=int(shim.get("workers", 2)),
        threads=int(shim.get("threads", 32)),
        request_timeout_s=float(shim.get("request_timeout_s", 600)),
        max_body_mb=int(shim.get("max_body_mb", 32)),
        keepalive_s=float(shim.get("keepalive_s", 10)),
        api_key_sha256=[h.lower() for h in auth.get("api_key_sha256", [])],
        models=[
            ModelConfig(
                name=m["name"],
                task=m.get("task", "chat"),
                backend=m.get("backend", "torch"),
                path=_resolve_model_path(m["path"], base) if m.get("path") else "",
                options=dict(m.get("options", {})),
            )
            for m in raw.get("models", [])
        ],
        path=path,
    )
    _apply_env(cfg)
    return cfg


def _apply_env(cfg: Config) -> None:
    env = os.environ
    if keys := env.get("GENAPI_API_KEYS"):
        cfg.api_key_sha256 += [hash_key(k.strip()) for k in keys.split(",") if k.strip()]
    if v := env.get("GENAPI_CORE"):
        cfg.core_targets = [a.strip() for a in v.split(",") if a.strip()]
    for name, attr, conv in (
        ("GENAPI_HOST", "shim_host", str),
        ("GENAPI_PORT", "shim_port", int),
        ("GENAPI_GRPC_HOST", "core_host", str),
        ("GENAPI_GRPC_PORT", "core_port", int),
        ("GENAPI_WORKERS", "workers", int),
        ("GENAPI_THREADS", "threads", int),
        ("GENAPI_REQUEST_TIMEOUT_S", "request_timeout_s", float),
        ("GENAPI_KEEPALIVE_S", "keepalive_s", float),
    ):
        if name in env:
            setattr(cfg, attr, conv(env[name]))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
