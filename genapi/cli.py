"""`genapi` command: serve (core + shim together), core, shim, chat, hash-key."""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

from .config import (DEFAULT_CONFIG, Config, check_model_paths, exposure_error, hash_key, key_problem, load_config,
                     log_level)


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _fail(msg: str) -> None:
    print(f"genapi: {msg}", file=sys.stderr)
    sys.exit(2)


def _check_exposure(cfg: Config, host: str, what: str, notice: bool = True) -> None:
    """Without API keys the service may only listen on loopback."""
    if cfg.auth_enabled:
        return
    if err := exposure_error(cfg, host, what):
        _fail(err)
    if notice:
        print(f"genapi: no API keys configured: auth is off and the {what} listens on loopback only ({host})",
              file=sys.stderr)


def _load(args) -> Config:
    """The config with command-line overrides; one line and exit 2 when it is unusable."""
    try:
        log_level()  # checked in every tier before anything starts
        cfg = load_config(args.config)
    except (OSError, ValueError, KeyError) as e:  # tomllib.TOMLDecodeError is a ValueError
        _fail(f"cannot use the config {_config_file(args)}: "
              f"{e if not isinstance(e, KeyError) else f'missing key {e}'}")
    if getattr(args, "host", None):
        cfg.shim_host = cfg.core_host = args.host
    for flag in ("port", "grpc_port"):
        value = getattr(args, flag, None)
        if value is not None and not 1 <= value <= 65535:
            _fail(f"--{flag.replace('_', '-')} {value}: a port must be 1-65535")
    if getattr(args, "port", None) is not None:
        cfg.shim_port = args.port
    if getattr(args, "grpc_port", None) is not None:
        cfg.core_port = args.grpc_port
    if getattr(args, "core", None):
        cfg.core_targets = args.core
    try:
        cfg.core_target  # several --core addresses must be literal IPv4 (or one dns:/// target)
    except ValueError as e:
        _fail(str(e))
    return cfg


def _config_file(args) -> str:
    return os.path.abspath(args.config or os.environ.get("GENAPI_CONFIG") or DEFAULT_CONFIG)


def _check_models(cfg: Config, args) -> None:
    """Where the models load (core, serve): every checkpoint directory exists."""
    try:
        check_model_paths(cfg)
    except ValueError as e:
        _fail(f"cannot use the config {_config_file(args)}: {e}")


# ---- `genapi serve` supervises the two tiers ---------------------------------------------
#
# serve starts the core and the shim in sessions of their own, so a signal sent to serve's
# process group (Ctrl-C in a terminal, a process manager signalling the group) reaches
# serve alone, and serve stops the tiers in order: the core drains first (health
# NOT_SERVING, new requests 503 with Retry-After, in-flight ones run to their end), then
# the shim, which has nothing left in flight. Each tier asks the kernel for SIGTERM when
# serve dies, so a killed serve leaves no orphan behind.

SUPERVISOR_ENV = "GENAPI_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def _follow_supervisor() -> bool:
    """In a tier started by `genapi serve`: stop (SIGTERM) when serve goes away. True when
    supervised."""
    parent = os.environ.pop(SUPERVISOR_ENV, None)  # not inherited by our own children
    if not parent:
        return False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != int(parent):  # serve died before we could ask
        sys.exit(0)
    return True


def _prepare_tier(args, what: str, address, flag: str, loads_models: bool = False) -> Config:
    """Config for one tier started alone (or by serve): model directories (where they
    load), exposure rule, port check. `address(cfg)` gives the (host, port) this tier
    listens on."""
    supervised = _follow_supervisor()
    cfg = _load(args)
    if loads_models:
        _check_models(cfg, args)
    host, port = address(cfg)
    _check_exposure(cfg, host, what, notice=not supervised)
    if not port_free(host, port):
        _fail(f"{what} port {host}:{port} is already in use (choose another with {flag})")
    return cfg


def _check_distinct_ports(ports: dict[str, int]) -> None:
    """Refuses two listeners of this process tree on one port (`what -> port`, 0 = off)."""
    seen: dict[int, str] = {}
    for what, port in ports.items():
        if port and port in seen:
            _fail(f"{what} {port} is also the {seen[port]}: give each its own port")
        seen.setdefault(port, what)


def cmd_core(args) -> None:
    cfg = _prepare_tier(args, "gRPC core", lambda c: (c.core_host, c.core_port), "--grpc-port", loads_models=True)
    _check_distinct_ports({"gRPC port": cfg.core_port, "[core] metrics_port": cfg.metrics_port})
    from server.app import StartupError, serve  # the core's modules load only in the core's process
    from server.tracing import log_context

    from . import logs
    logs.setup(log_level(), cfg.log_format, log_context)  # every line with its request and trace ids
    os.environ[logs.FORMAT_ENV] = cfg.log_format  # and the engine processes it spawns write the same

    try:
        asyncio.run(serve(cfg, grace_s=args.drain_grace))
    except StartupError as e:  # a model that cannot load, a port taken meanwhile: one line
        _fail(f"{e} (config {_config_file(args)})")


# glibc malloc for the tiers, which take large bodies (media up to 20 MB) on many threads:
# two arenas instead of eight per core, and blocks of 1 MB or more mapped and unmapped
# at free instead of kept in the heap (glibc raises that threshold as large blocks are
# freed). Measured: 60 refused 15 MB images took a shim worker from 50 to 490 MB
# resident; with these, 52 MB. Set them yourself to override.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}


def _shim_env(cfg: Config, args) -> dict:
    """The environment of the shim (and of the core under `serve`)."""
    env = {**MALLOC_ENV, **os.environ}
    if args.config:
        env["GENAPI_CONFIG"] = os.path.abspath(args.config)
    env["GENAPI_HOST"] = cfg.shim_host
    env["GENAPI_PORT"] = str(cfg.shim_port)
    env["GENAPI_DRAIN_GRACE_S"] = str(cfg.drain_grace_s)
    if cfg.core_targets:
        env["GENAPI_CORE"] = ",".join(cfg.core_targets)
    else:  # a wildcard listen address is dialled through loopback
        host = "127.0.0.1" if cfg.core_host in ("0.0.0.0", "::", "") else cfg.core_host
        env["GENAPI_CORE"] = f"{host}:{cfg.core_port}"
    return env


def _shim_argv() -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-c", "python:shim.gunicorn_conf", "shim:create_app()"]


def cmd_shim(args) -> None:
    cfg = _prepare_tier(args, "REST API", lambda c: (c.shim_host, c.shim_port), "--port")
    if args.drain_grace is not None:
        cfg.drain_grace_s = args.drain_grace
    os.execve(sys.executable, _shim_argv(), _shim_env(cfg, args))


def _wait_core(target: str, proc: subprocess.Popen, timeout_s: float, stopping=lambda: False) -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # no C-core INFO lines (GOAWAY) in serve's output
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline and not stopping():
            if proc.poll() is not None:
                if proc.returncode == 2:  # a start-up error, which the core has said in one line
                    sys.exit(2)
                _fail(f"the gRPC core exited during start-up (code {proc.returncode}); see its log above")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    if not stopping():
        _fail(f"the gRPC core did not become ready within {timeout_s:.0f}s")


def _wait_shim(cfg: Config, proc: subprocess.Popen, timeout_s: float, stopping) -> bool:
    """Waits until the shim answers GET /health (any status: it listens). False when it
    exited or a stop came first."""
    import http.client

    host = "127.0.0.1" if cfg.shim_host in ("0.0.0.0", "") else "::1" if cfg.shim_host == "::" else cfg.shim_host
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stopping() and proc.poll() is None:
        conn = http.client.HTTPConnection(host, cfg.shim_port, timeout=2)
        try:
            conn.request("GET", "/health")
            conn.getresponse().read()
            return True
        except OSError:
            time.sleep(0.2)
        finally:
            conn.close()
    if proc.poll() is not None:
        print(f"genapi: the shim exited during start-up (code {proc.returncode})", file=sys.stderr, flush=True)
    elif not stopping():
        print(f"genapi: the shim did not answer within {timeout_s:.0f}s", file=sys.stderr, flush=True)
    return False


def cmd_serve(args) -> None:
    """Core and shim as two supervised child processes; SIGTERM or SIGINT (Ctrl-C) drains
    the core, then stops the shim."""
    cfg = _load(args)
    _check_models(cfg, args)
    _check_exposure(cfg, cfg.shim_host, "service")
    _check_distinct_ports({"REST API port": cfg.shim_port, "gRPC port": cfg.core_port,
                           "[core] metrics_port": cfg.metrics_port})
    for host, port, flag in ((cfg.shim_host, cfg.shim_port, "--port"), (cfg.core_host, cfg.core_port, "--grpc-port")):
        if not port_free(host, port):
            _fail(f"port {host}:{port} is already in use (choose another with {flag})")
    env = _shim_env(cfg, args)
    env[SUPERVISOR_ENV] = str(os.getpid())
    config = ["--config", os.path.abspath(args.config)] if args.config else []
    core_argv = [sys.executable, "-m", "genapi", "core", "--host", cfg.core_host, "--grpc-port", str(cfg.core_port),
                 "--drain-grace", str(args.drain_grace), *config]
    shim_argv = [sys.executable, "-m", "genapi", "shim", *config]  # its address comes from env
    core = shim = None
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    def reload(*_):  # SIGHUP: both tiers re-read the keys (the shim's gunicorn restarts its workers)
        for p in (core, shim):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    try:
        core = subprocess.Popen(core_argv, env=env, start_new_session=True)
        _wait_core(env["GENAPI_CORE"].split(",")[0], core, args.start_timeout, lambda: stopping)
        if stopping:
            return
        shim = subprocess.Popen(shim_argv, env=env, start_new_session=True)
        if _wait_shim(cfg, shim, args.start_timeout, lambda: stopping):
            print(f"genapi: serving http://{cfg.shim_host}:{cfg.shim_port}/v1 (gRPC {cfg.core_host}:{cfg.core_port})",
                  file=sys.stderr, flush=True)
        else:
            stopping = True
        while not stopping:
            for p, name in ((core, "core"), (shim, "shim")):
                if p.poll() is not None:
                    print(f"genapi: {name} exited with code {p.returncode}; stopping", file=sys.stderr, flush=True)
                    stopping = True
            time.sleep(0.2)
    finally:
        # The core first: it drains while the shim still answers (503 for new requests,
        # /health 503), then the shim, whose requests have all ended by then.
        _stop_tier(core, "core", args.drain_grace + 10)
        _stop_tier(shim, "shim", max(args.stop_timeout, cfg.drain_grace_s + 10))
    if any(p is not None and p.returncode not in (0, -signal.SIGTERM) for p in (core, shim)):
        sys.exit(1)


def _stop_tier(p: subprocess.Popen | None, name: str, timeout_s: float) -> None:
    if p is None:
        return
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        print(f"genapi: the {name} did not stop within {timeout_s:.0f}s; killing it", file=sys.stderr, flush=True)
        p.kill()
        p.wait()


def cmd_hash_key(args) -> None:
    if problem := key_problem(args.key):
        _fail(f"hash-key: {problem}")
    print(hash_key(args.key))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="genapi", description="Self-hosted OpenAI-compatible generative API")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, rest=True, grpc=True):
        p.add_argument("--config", help="TOML config file (default: $GENAPI_CONFIG, else the bundled genapi/default.toml)")
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        if rest:
            p.add_argument("--port", type=int, help="REST port (default 8000)")
        if grpc:
            p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")

    def drain_grace(p, default=30.0, what="30"):
        p.add_argument("--drain-grace", type=float, default=default,
                       help=f"on SIGTERM/SIGINT, seconds in-flight requests get to finish (default {what})")

    p = sub.add_parser("serve", help="start the gRPC core and the REST shim together")
    common(p)
    p.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for models to load")
    p.add_argument("--stop-timeout", type=float, default=40, help="seconds to wait for the shim to stop")
    drain_grace(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("core", help="start the gRPC core only")
    common(p, rest=False)
    drain_grace(p)
    p.set_defaults(func=cmd_core)
    p = sub.add_parser("shim", help="start the REST shim only (gunicorn)")
    common(p, grpc=False)
    p.add_argument("--core", action="append", help="core address host:port (repeat for several replicas)")
    drain_grace(p, None, "the config's [shim] drain_grace_s, 30")
    p.set_defaults(func=cmd_shim)
    p = sub.add_parser("chat", help="ask a running server a question and stream the answer")
    from . import chat_cli

    chat_cli.add_arguments(p)
    p.set_defaults(func=chat_cli.main)
    p = sub.add_parser("hash-key", help="print the SHA-256 digest of an API key for the config")
    p.add_argument("key")
    p.set_defaults(func=cmd_hash_key)
    from . import batch_cli

    batch_cli.register(sub)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
