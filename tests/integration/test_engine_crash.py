"""F1-lite: the engine process dies under the core. In-flight requests fail fast, new ones
get 503 with Retry-After, health turns NOT_SERVING, and nothing hangs."""
import os
import signal
from pathlib import Path

import httpx
import pytest

from ..conftest import MODEL, Service, wait_until


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def engine_pid(serve_pid: int) -> int:
    for core in children(serve_pid):
        if b"genapi\x00core" in Path(f"/proc/{core}/cmdline").read_bytes():
            for kid in children(core):
                if b"spawn_main" in Path(f"/proc/{kid}/cmdline").read_bytes():  # not the resource tracker
                    return kid
    raise AssertionError("engine process not found")


@pytest.fixture
def doomed(tmp_path):
    svc = Service(tmp_path, "doomed").start()
    yield svc
    svc.stop()


def test_engine_death_fails_requests_and_flips_health(doomed):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    url = f"{doomed.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=30).status_code == 200
    with httpx.stream("POST", url, json={**body, "max_tokens": 1500, "ignore_eos": True, "stream": True},
                      timeout=30) as r:
        lines = r.iter_lines()
        assert r.status_code == 200 and next(lines).startswith("data: ")
        os.kill(engine_pid(doomed.proc.pid), signal.SIGKILL)
        rest = list(lines)  # must end, not hang: an error frame, then [DONE]
    frames = [line for line in rest if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]" and '"error"' in frames[-2]
    resp = httpx.post(url, json=body, timeout=30)
    assert resp.status_code == 503 and resp.headers.get("retry-after")
    assert resp.json()["error"]["code"] == "engine_unavailable"
    assert wait_until(lambda: httpx.get(f"{doomed.base_url}/health", timeout=5).status_code == 503, 5)
