"""The `python -m server` command line: sub-commands, start-up refusals that fail fast with
a clear message, and signal handling of `serve` (reliability plan F7, lite): SIGTERM and
SIGINT stop the core and the gunicorn shim, leave no process behind, free both ports and
exit 0; a stream in flight at SIGTERM is finished, not cut.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import MODEL, ROOT, TINY_MODEL, Service, free_port, wait_until

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


@pytest.mark.parametrize("cmd", ["serve", "core"])
def test_the_metrics_port_may_not_be_one_of_the_service_ports(cmd):
    grpc_port = free_port()
    out, elapsed = run_cli(cmd, "--grpc-port", str(grpc_port), env={"GENAPI_METRICS_PORT": str(grpc_port)})
    assert out.returncode == 2 and elapsed < 20, out.stderr
    assert f"[core] metrics_port {grpc_port} is also the gRPC port" in out.stderr and "Traceback" not in out.stderr
    if cmd == "serve":
        rest = free_port()
        out, _ = run_cli(cmd, "--port", str(rest), "--grpc-port", str(free_port()), env={"GENAPI_METRICS_PORT": str(rest)})
        assert out.returncode == 2 and "is also the REST API port" in out.stderr, out.stderr


def test_json_logs_cover_the_engine_process_too(tmp_path):
    """[logging] format = "json": the core's lines and those of the engine process it
    spawns (the model's `loaded` line) are all JSON objects."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\nformat = "json"\n' + MODEL_TOML)
    out = tmp_path / "core.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
    with open(out, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "genapi", "core", "--config", str(cfg), "--grpc-port",
                                 str(free_port())], cwd=ROOT, env=base, stdout=f, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "gRPC core serving" in out.read_text(), timeout_s=180), out.read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    # every log line, or this raises (the CLI's own "genapi: ..." notices are not log lines)
    lines = [ln for ln in out.read_text().splitlines() if ln.strip() and not ln.startswith("genapi: ")]
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("logger") == "genapi.engine.torch" for r in records), lines


def test_core_fails_fast_when_its_port_is_taken(busy_port):
    out, elapsed = run_cli("core", "--grpc-port", str(busy_port))
    assert out.returncode != 0 and elapsed < 20
    assert str(busy_port) in out.stderr and "in use" in out.stderr


def test_shim_fails_fast_when_its_port_is_taken(busy_port):
    out, elapsed = run_cli("shim", "--port", str(busy_port))
    assert out.returncode != 0 and elapsed < 20
    assert str(busy_port) in out.stderr and "in use" in out.stderr


# --- every start-up failure is one line naming the setting, the value and the file; exit 2 --

_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")


def assert_one_line_failure(out: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, no traceback, and besides log lines and the no-keys notice exactly one line,
    which holds every needle."""
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines()
             if not _LOG_LINE.match(ln) and "no API keys configured" not in ln]
    assert len(lines) == 1 and lines[0].startswith("genapi: "), out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


MODEL_TOML = f'''[[models]]\nname = "m"\npath = "{TINY_MODEL}"\n'''
BAD_CONFIGS = {  # id: (config text, what the line must name besides the file)
    "relative path gone": ('[[models]]\nname = "m"\npath = "models/tiny-chat"\n', ["path", "models/tiny-chat"]),
    "not a checkpoint": ('[[models]]\nname = "m"\npath = "."\n', ["path", "config.json"]),
    "invalid toml": ("[core\nport = 1\n", ["line 1"]),
    "port type": ('[core]\nport = "x"\n' + MODEL_TOML, ["[core] port", "'x'"]),
    "port range": ("[shim]\nport = 70000\n" + MODEL_TOML, ["[shim] port", "70000"]),
    "workers 0": ("[shim]\nworkers = 0\n" + MODEL_TOML, ["[shim] workers", "0"]),
    "max_message_mb 0": ("[core]\nmax_message_mb = 0\n" + MODEL_TOML, ["max_message_mb", "0"]),
    "unknown task": (MODEL_TOML + 'task = "painting"\n', ["task", "painting"]),
    "unknown backend": (MODEL_TOML + 'backend = "vllm"\n', ["backend", "vllm"]),
    "bad dtype": (MODEL_TOML + '[models.options]\ndtype = "float8"\n', ["dtype", "float8"]),
    "bad device": (MODEL_TOML + '[models.options]\ndevice = "tpu"\n', ["device", "tpu"]),
    "max_batch 0": (MODEL_TOML + "[models.options]\nmax_batch = 0\n", ["max_batch", "0"]),
    "max_queue -1": (MODEL_TOML + "[models.options]\nmax_queue = -1\n", ["max_queue", "-1"]),
    "bad reasoning_parser": (MODEL_TOML + '[models.options]\nreasoning_parser = "deepseek"\n',
                             ["reasoning_parser", "deepseek"]),
    "negative grammar timeout": (MODEL_TOML + "[models.options]\ngrammar_compile_timeout_s = -1\n",
                                 ["grammar_compile_timeout_s", "-1"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_config_is_one_line_and_exit_2(tmp_path, case):
    text, needles = BAD_CONFIGS[case]
    config = tmp_path / "copied.toml"
    config.write_text(text)
    out, _ = run_cli("core", "--config", str(config), "--grpc-port", str(free_port()))
    assert_one_line_failure(out, str(config), *needles)


def test_a_port_flag_out_of_range_is_one_line(tmp_path):
    out, _ = run_cli("serve", "--port", "0", "--grpc-port", str(free_port()))
    assert_one_line_failure(out, "--port", "0", "1-65535")


def test_serve_says_a_missing_model_directory_in_one_line(tmp_path):
    config = tmp_path / "copied.toml"
    config.write_text(BAD_CONFIGS["relative path gone"][0])
    out, _ = run_cli("serve", "--config", str(config), "--port", str(free_port()), "--grpc-port", str(free_port()))
    assert_one_line_failure(out, str(config), str(tmp_path / "models" / "tiny-chat"), "config file's directory")
    out, _ = run_cli("core", "--config", str(tmp_path / "absent.toml"), "--grpc-port", str(free_port()))
    assert_one_line_failure(out, str(tmp_path / "absent.toml"), "No such file")


@pytest.fixture
def broken_checkpoint(tmp_path) -> Path:
    """The tiny checkpoint with its weights cut short, as by an interrupted download."""
    ckpt = tmp_path / "broken"
    shutil.copytree(TINY_MODEL, ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return ckpt


def test_a_model_that_cannot_load_is_one_line_and_exit_2(tmp_path, broken_checkpoint):
    """Found in the engine's process: the core says it in one line, serve adds nothing."""
    config = tmp_path / "broken.toml"
    config.write_text(f'[[models]]\nname = "m"\npath = "{broken_checkpoint}"\n')
    out, _ = run_cli("serve", "--config", str(config), "--grpc-port", str(free_port()), "--port", str(free_port()),
                     timeout=120)
    assert_one_line_failure(out, "could not load model 'm'", str(broken_checkpoint), str(config))


def test_a_backend_that_does_not_serve_the_task_is_one_line_and_exit_2(tmp_path):
    """Every task is served by torch; TensorRT-LLM serves chat only."""
    config = tmp_path / "transcription.toml"
    config.write_text(MODEL_TOML + 'task = "transcription"\nbackend = "trtllm"\n')
    out, _ = run_cli("core", "--config", str(config), "--grpc-port", str(free_port()))
    assert_one_line_failure(out, "transcription", "unknown backend 'trtllm'", str(config))


def test_log_level_in_any_case_and_an_unknown_one_refused(tmp_path, broken_checkpoint):
    config = tmp_path / "broken.toml"
    config.write_text(f'[[models]]\nname = "m"\npath = "{broken_checkpoint}"\n')
    out, _ = run_cli("core", "--config", str(config), "--grpc-port", str(free_port()),
                     env={"GENAPI_LOG_LEVEL": "debug"}, timeout=120)
    assert out.returncode == 2 and " DEBUG " in out.stderr  # lower case works, down to the engine
    assert "genapi: could not load model" in out.stderr  # the traceback is there too, for debugging
    out, _ = run_cli("core", "--grpc-port", str(free_port()), env={"GENAPI_LOG_LEVEL": "loud"})
    assert_one_line_failure(out, "GENAPI_LOG_LEVEL", "loud", "debug, info")


def test_hash_key_refuses_an_empty_key():
    out, _ = run_cli("hash-key", "")
    assert_one_line_failure(out, "empty")
    for bad in ("ключ-unicode-key-12345", " ", "sp key ", "tab\tkey"):  # no client could send them
        out, _ = run_cli("hash-key", bad)
        assert_one_line_failure(out, "printable ASCII without spaces")
    out, _ = run_cli("serve", "--port", str(free_port()), env={"GENAPI_API_KEYS": "good-key-1,bad key"})
    assert_one_line_failure(out, "GENAPI_API_KEYS entry 2", "printable ASCII")
    out, _ = run_cli("hash-key", "k")
    assert out.returncode == 0 and len(out.stdout.strip()) == 64


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
        # Past its end of turn (ignore_eos) the demo model also writes control tokens, which
        # have no text: most chunks, not all, carry content.
        assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")) >= 10
        assert result["ended_at"] > sent_at[0]  # it really was in flight when the signal came
    finally:
        pause.unlink(missing_ok=True)
        svc.stop()


def test_sigint_to_serve_stops_core_and_shim(tmp_path):
    svc = Service(tmp_path, "sigint").start()
    try:
        assert httpx.get(f"{svc.base_url}/health", timeout=10).status_code == 200
        # The start-up output: the no-keys notice once, "serving" once the shim listens.
        assert wait_until(lambda: "genapi: serving http://" in svc.log(), 10), svc.log()
        log = svc.log()
        assert log.count("no API keys configured") == 1, log
        assert log.index("the workers listen at http://") < log.index("genapi: serving http://"), log
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
