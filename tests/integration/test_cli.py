"""The `python -m server` command line: sub-commands, start-up refusals that fail fast with
a clear message, and signal handling of `serve` (reliability plan F7, lite): SIGTERM and
SIGINT stop the core and the gunicorn shim, leave no process behind, free both ports and
exit 0; a stream in flight at SIGTERM is finished, not cut.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import MODEL, ROOT, Service, free_port, wait_until

STOP_LIMIT_S = 45  # serve's own per-tier stop timeout is 40 s


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "genapi", *args], cwd=ROOT, env={**base, **(env or {})},
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


# --- /proc helpers (no psutil) -------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgid) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st:
            children.setdefault(st[1], []).append(pid)
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def group_members(pgid: int) -> set[int]:
    return {pid for pid in _all_pids() if (st := _stat(pid)) and st[2] == pgid and st[0] not in ("Z", "X")}


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def assert_stops_cleanly(svc: Service, send) -> None:
    """Sends a signal via `send(pid)`; serve exits 0 in time and leaves nothing behind."""
    pid = svc.proc.pid
    kids = descendants(pid)
    cmdlines = " ".join(Path(f"/proc/{k}/cmdline").read_bytes().decode(errors="replace") for k in kids)
    assert "core" in cmdlines and "gunicorn" in cmdlines, cmdlines  # core, shim master and workers
    assert len(kids) >= 4
    t0 = time.monotonic()
    send(pid)
    rc = svc.proc.wait(STOP_LIMIT_S)
    assert rc == 0, svc.log()[-3000:]
    assert time.monotonic() - t0 < STOP_LIMIT_S
    assert wait_until(lambda: not [k for k in kids if alive(k)], 5), svc.log()[-3000:]
    assert group_members(pid) == set()
    assert port_free(svc.port) and port_free(svc.grpc_port)
    assert "Traceback" not in svc.log()


# --- help -----------------------------------------------------------------------------------

def test_help_lists_the_subcommands():
    out, _ = run_cli("--help")
    assert out.returncode == 0
    for name in ("serve", "core", "shim", "hash-key"):
        assert name in out.stdout
    out, _ = run_cli("serve", "--help")
    assert out.returncode == 0 and "--grpc-port" in out.stdout and "--port" in out.stdout


def test_unknown_subcommand_fails():
    out, _ = run_cli("frobnicate")
    assert out.returncode != 0 and "frobnicate" in out.stderr


# --- fail fast on busy ports ----------------------------------------------------------------

@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("which", ["rest", "grpc"])
def test_serve_fails_fast_when_a_port_is_taken(busy_port, which):
    other = free_port()
    rest, grpc_port = (busy_port, other) if which == "rest" else (other, busy_port)
    out, elapsed = run_cli("serve", "--port", str(rest), "--grpc-port", str(grpc_port))
    assert out.returncode != 0
    assert elapsed < 20
    assert str(busy_port) in out.stderr and "in use" in out.stderr
    assert ("--port" if which == "rest" else "--grpc-port") in out.stderr
    assert "Traceback" not in out.stderr
    assert port_free(other)  # nothing was left listening on the other port


def test_core_fails_fast_when_its_port_is_taken(busy_port):
    out, elapsed = run_cli("core", "--grpc-port", str(busy_port))
    assert out.returncode != 0 and elapsed < 20
    assert str(busy_port) in out.stderr and "in use" in out.stderr


def test_shim_fails_fast_when_its_port_is_taken(busy_port):
    out, elapsed = run_cli("shim", "--port", str(busy_port))
    assert out.returncode != 0 and elapsed < 20
    assert str(busy_port) in out.stderr and "in use" in out.stderr


# --- refuse to expose an unauthenticated service ----------------------------------------------

@pytest.mark.parametrize("cmd, host", [("serve", "0.0.0.0"), ("serve", "::"), ("core", "0.0.0.0"),
                                       ("shim", "0.0.0.0"), ("serve", "192.0.2.10")])
def test_refuses_non_loopback_host_without_keys(cmd, host):
    ports = {"serve": ["--port", str(free_port()), "--grpc-port", str(free_port())],
             "core": ["--grpc-port", str(free_port())], "shim": ["--port", str(free_port())]}[cmd]
    out, elapsed = run_cli(cmd, "--host", host, *ports)
    assert out.returncode != 0 and elapsed < 20
    assert "refusing" in out.stderr and host in out.stderr and "API key" in out.stderr
    assert "Traceback" not in out.stderr


def test_loopback_is_allowed_without_keys_and_says_so(busy_port):
    # Passes the exposure check (a notice, not a refusal), then stops at the busy port.
    out, _ = run_cli("serve", "--host", "127.0.0.1", "--port", str(busy_port), "--grpc-port", str(free_port()))
    assert "refusing" not in out.stderr and "in use" in out.stderr


# --- signals ----------------------------------------------------------------------------------

# Long enough to be in flight across the signal (it is held there by the decode pause), short
# enough to finish within the 30 s drain grace on a loaded machine (1000 tokens did not).
STREAM_TOKENS = 100


def _stream_in_background(svc: Service, result: dict, first_chunk: threading.Event) -> threading.Thread:
    def run():
        frames = []
        try:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": STREAM_TOKENS,
                    "ignore_eos": True, "stream": True}
            with httpx.stream("POST", f"{svc.base_url}/v1/chat/completions", json=body, timeout=60) as resp:
                result["status"] = resp.status_code
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        frames.append(line[6:])
                        if len(frames) >= 3:
                            first_chunk.set()
        except Exception as e:  # noqa: BLE001 - reported through `result`
            result["error"] = repr(e)
        finally:
            result["frames"] = frames
            result["ended_at"] = time.monotonic()
            first_chunk.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_sigterm_stops_core_and_shim_and_finishes_the_stream_in_flight(tmp_path):
    # The stream is held in flight (test-only decode pause) until the signal has gone out,
    # then released: it has to finish during the drain, however fast the machine is.
    pause = tmp_path / "pause"
    svc = Service(tmp_path, "sigterm",
                  model_options=f'threads = 1\n[models.options.fault]\npause_decode_file = "{pause}"\n').start()
    try:
        result: dict = {}
        started = threading.Event()
        t = _stream_in_background(svc, result, started)
        assert started.wait(60)
        pause.touch()
        sent_at = []

        def term(pid):
            sent_at.append(time.monotonic())
            os.kill(pid, signal.SIGTERM)
            pause.unlink()

        assert_stops_cleanly(svc, term)
        t.join(30)
        assert not t.is_alive()
        assert result.get("status") == 200 and "error" not in result, result
        frames = result["frames"]
        assert frames[-1] == "[DONE]", frames[-3:]
        chunks = [json.loads(f) for f in frames[:-1]]
        assert all("error" not in c for c in chunks), frames[-3:]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert chunks[-1]["usage"] is None or chunks[-1]["usage"]["completion_tokens"] == STREAM_TOKENS
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 0.9 * STREAM_TOKENS
        assert result["ended_at"] > sent_at[0]  # it really was in flight when the signal came
    finally:
        pause.unlink(missing_ok=True)
        svc.stop()


def test_sigint_to_serve_stops_core_and_shim(tmp_path):
    svc = Service(tmp_path, "sigint").start()
    try:
        assert httpx.get(f"{svc.base_url}/health", timeout=10).status_code == 200
        assert_stops_cleanly(svc, lambda pid: os.kill(pid, signal.SIGINT))
    finally:
        svc.stop()


def test_wildcard_host_with_keys_serves_then_ctrl_c_stops_everything(tmp_path):
    """With API keys the service may listen on 0.0.0.0; Ctrl-C (SIGINT to the whole process
    group, as a terminal sends it) still stops every tier with exit code 0."""
    key = "sk-cli-test-0123456789"
    svc = Service(tmp_path, "wild", extra_toml='host = "0.0.0.0"\n[core]\nhost = "0.0.0.0"\n',
                  env={"GENAPI_API_KEYS": key}).start()
    try:
        assert "refusing" not in svc.log()
        headers = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for _ in range(4):  # let both shim workers come up and serve
            resp = httpx.post(f"{svc.base_url}/v1/chat/completions", json=body, headers=headers, timeout=30)
            assert resp.status_code == 200, resp.text
        assert httpx.post(f"{svc.base_url}/v1/chat/completions", json=body, timeout=30).status_code == 401
        assert_stops_cleanly(svc, lambda pid: os.killpg(pid, signal.SIGINT))
    finally:
        svc.stop()
