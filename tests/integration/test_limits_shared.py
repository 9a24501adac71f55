"""Rate limits shared through Redis (`[limits] storage = "redis://..."`): two core
replicas behind one shim with two gunicorn workers (gRPC round-robin) hold one key's
requests-per-minute limit together: a concurrent burst gets exactly `rpm` successes.
Needs Debian's redis-server (./build.sh installs it); it runs on loopback for this module."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import openai
import pytest

from genapi.config import hash_key
from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, ROOT, Service, free_port, missing_tool, user_messages, wait_until

KEY = "sk-burst-0123456789abcdef"
DIRECT_KEY = "sk-direct-0123456789abcdef"  # its own window, for the calls straight to each core
RPM = 8
BURST = 24


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    if exe is None:
        missing_tool("redis-server is not installed (./build.sh installs Debian's redis-server)")
    import redis

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)

    def up():
        with contextlib.suppress(redis.RedisError):
            return client.ping()
        return False
    try:
        assert wait_until(up, timeout_s=30), "redis-server did not start"
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_url):
    tables = (f'[limits]\nstorage = "{redis_url}"\n'
              f'[[auth.keys]]\nname = "burst"\nsha256 = "{hash_key(KEY)}"\nrpm = {RPM}\n'
              f'[[auth.keys]]\nname = "direct"\nsha256 = "{hash_key(DIRECT_KEY)}"\nrpm = {RPM}\n')
    cores = [Service(tmp_path_factory.mktemp(f"core{i}"), f"core{i}", extra_toml=tables) for i in range(2)]
    shim = Service(tmp_path_factory.mktemp("shim"), "shim", extra_toml=tables)
    started = []
    try:
        for core in cores:
            started.append(core.start_core())

        def healthy():
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{shim.base_url}/health", timeout=2).status_code == 200
            return False
        shim.proc = subprocess.Popen(
            [sys.executable, "-m", "genapi", "shim", "--config", str(shim.config), "--port", str(shim.port),
             "--core", cores[0].grpc_target, "--core", cores[1].grpc_target],
            cwd=ROOT, env=shim.env, stdout=open(shim.log_path, "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        started.append(shim)
        assert wait_until(healthy, timeout_s=120), shim.log()
        yield cores, shim
    finally:
        for s in started:
            s.stop()


def test_the_limit_holds_across_workers_and_replicas(replicas):
    cores, shim = replicas
    client = shim.sdk(api_key=KEY, timeout=60)

    def one(i: int):
        try:
            client.chat.completions.create(model=MODEL, messages=user_messages(f"burst {i}"), max_tokens=1)
            return 200
        except openai.RateLimitError as e:
            assert e.response.headers["x-ratelimit-limit-requests"] == str(RPM)
            return 429
    with ThreadPoolExecutor(BURST) as pool:
        codes = list(pool.map(one, range(BURST)))
    assert codes.count(200) == RPM and codes.count(429) == BURST - RPM, codes


def generate(core, key: str) -> str:
    """One 1-token Generate straight to `core`: "ok", or the gRPC status code's name."""
    with grpc.insecure_channel(core.grpc_target) as ch:
        req = pb.GenerateRequest(model=MODEL, stopping=pb.StoppingOptions(max_tokens=1), messages=[
            content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text="hi")])])
        try:
            list(pb_grpc.GenerationServiceStub(ch).Generate(req, metadata=[("authorization", f"Bearer {key}")],
                                                            timeout=60))
            return "ok"
        except grpc.RpcError as e:
            return e.code().name


def test_replicas_count_one_window_together(replicas):
    """Half the limit on each core, then one more on either: refused, so the count is
    shared, not per process (which core the shim's burst reached is up to its balancing)."""
    cores, _ = replicas
    codes = [generate(cores[i % 2], DIRECT_KEY) for i in range(RPM)]
    assert codes == ["ok"] * RPM, codes
    assert [generate(core, DIRECT_KEY) for core in cores] == ["RESOURCE_EXHAUSTED"] * 2


def test_a_storage_that_is_down_is_a_503_to_retry(tmp_path):
    tables = (f'[limits]\nstorage = "redis://127.0.0.1:{free_port()}"\n'  # nothing listens there
              f'[[auth.keys]]\nname = "burst"\nsha256 = "{hash_key(KEY)}"\nrpm = {RPM}\n')
    svc = Service(tmp_path, "nostorage", extra_toml=tables).start()
    try:
        with pytest.raises(openai.InternalServerError) as e:
            svc.sdk(api_key=KEY).chat.completions.create(model=MODEL, messages=user_messages("hi"), max_tokens=2)
        assert e.value.status_code == 503 and e.value.response.headers["retry-after"] == "5"
        assert "rate-limit storage is unavailable" in e.value.message
    finally:
        svc.stop()
