"""Shared pieces of the benchmarks: a throwaway core or full service on free ports,
the benchmark checkpoint, prompts, and latency statistics."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROMPT_WORDS = ("the river runs past the old mill where the clockmaker keeps a garden of brass "
                "gears and patient seedlings while travellers ask about the road to the harbour").split()


def prompts(count: int, words: int = 24) -> list[str]:
    """Deterministic, distinct prompts of similar length."""
    out = []
    for i in range(count):
        ws = [PROMPT_WORDS[(i * 7 + j * 3) % len(PROMPT_WORDS)] for j in range(words)]
        out.append(f"Request {i}: " + " ".join(ws))
    return out


def bench_model(preset: str, dtype: str = "float32") -> Path:
    from tools.tiny_models import build

    return build(ROOT / "bench" / ".models" / f"{preset}-{dtype}", preset=preset, dtype=dtype)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(model_dir: Path, device: str, max_batch: int = 32, dtype: str = "auto",
                 models: dict[str, dict] | None = None) -> Path:
    """A genapi config serving `model_dir` under each name in `models` (default: "bench"),
    each with the common options plus its own."""
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write("[shim]\nworkers = 2\nthreads = 64\n")
    for name, extra in (models or {"bench": {}}).items():
        options = {"device": device, "dtype": dtype, "max_batch": max_batch, "max_queue": 1024, **extra}
        f.write(f'[[models]]\nname = "{name}"\npath = "{model_dir}"\n[models.options]\n')
        f.writelines(f"{k} = {json.dumps(v)}\n" for k, v in options.items())
    f.close()
    return Path(f.name)


@contextlib.contextmanager
def running(argv: list[str], ready, timeout_s: float = 600, log_name: str = "bench-service.log",
            env: dict | None = None):
    """Starts a genapi process (environment `env`, default ours), waits until `ready()` is
    true, stops it afterwards."""
    log = open(Path(tempfile.gettempdir()) / log_name, "w")
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start; see {log.name}")
            time.sleep(0.3)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def grpc_ready(target: str):
    def check() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(target) as ch:
                r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return r.status == health_pb2.HealthCheckResponse.SERVING
        except Exception:
            return False
    return check


def http_ready(url: str):
    def check() -> bool:
        import httpx

        try:
            return httpx.get(url, timeout=1).status_code == 200
        except Exception:
            return False
    return check


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def latency_summary(name: str, ttft: list[float], itl: list[float]) -> str:
    ms = 1000
    return (f"{name}: TTFT p50 {pct(ttft, 50) * ms:.1f} ms p90 {pct(ttft, 90) * ms:.1f} ms p99 {pct(ttft, 99) * ms:.1f} ms | "
            f"ITL p50 {pct(itl, 50) * ms:.1f} ms p90 {pct(itl, 90) * ms:.1f} ms p99 {pct(itl, 99) * ms:.1f} ms")


def mean(xs):
    return statistics.fmean(xs) if xs else float("nan")


def process_tree(root: int) -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) of process `root` and its live descendants."""
    procs = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            procs[int(p)] = (ppid, open(f"/proc/{p}/cmdline", "rb").read())
        except OSError:
            continue
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += [c for c, (pp, _) in procs.items() if pp == pid and c not in tree]
    return {p: procs[p] for p in tree if p in procs}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` onto `cpus` (sched_setaffinity sets one thread at a time)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pids) -> float:
    """User + system CPU seconds of the live processes `pids`, from /proc."""
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a service started by `running` (core, engine processes, shim master
    and workers): process `root` and its live descendants."""
    return cpu_seconds(process_tree(root))
