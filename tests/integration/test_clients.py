"""The example clients in clients/ (TypeScript on Node, Go, C++), generated from protos/
and built by ./build.sh (clients/build.sh), against a real `genapi core` on loopback that
requires an API key: with the key each lists the models, streams a completion (the same
text and usage as the Python stubs get) and shows an unknown model as NOT_FOUND with
ErrorInfo reason `model_not_found`; without it, UNAUTHENTICATED / `invalid_api_key`.

A client whose toolchain is missing here skips with the reason clients/build.sh recorded
(and fails under CI, where ./build.sh installs every toolchain).
"""
from __future__ import annotations

import os
import re
import subprocess

import grpc
import pytest

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, ROOT, Service, missing_tool

KEY = "sk-clients-0123456789abcdef"
# How to run each example (from the repository root); the last word is the built file.
CLIENTS = {
    "ts": ["node", "clients/ts/dist/example.js"],
    "go": ["clients/go/build/example"],
    "cpp": ["clients/cpp/build/example"],
}
USAGE = re.compile(r"^usage: prompt_tokens=(\d+) completion_tokens=(\d+) total_tokens=(\d+)$", re.M)


def built(lang: str) -> None:
    """Skips (fails under CI) unless clients/build.sh built `lang`'s example."""
    if not (ROOT / CLIENTS[lang][-1]).exists():
        why = ROOT / "clients" / ".build" / f"{lang}.skip"
        missing_tool(f"{lang} client not built: " + (why.read_text().strip() if why.exists() else "run ./build.sh"))


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    if not any((ROOT / command[-1]).exists() for command in CLIENTS.values()):
        built("ts")  # none is: no need for a core
    svc = Service(tmp_path_factory.mktemp("clients"), "clients", env={"GENAPI_API_KEYS": KEY}).start_core()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def expected(core):
    """What the examples request (greedy, 16 tokens, the same prompt), through the Python
    stubs: (text, usage)."""
    req = pb.GenerateRequest(
        model=MODEL, sampling=pb.SamplingOptions(temperature=0), stopping=pb.StoppingOptions(max_tokens=16),
        messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                          content=[content_pb2.ContentPart(text="Say hello in one sentence.")])])
    with grpc.insecure_channel(core.grpc_target) as ch:
        events = list(pb_grpc.GenerationServiceStub(ch).Generate(
            req, metadata=[("authorization", f"Bearer {KEY}")], timeout=60))
    return "".join(e.text.text for e in events), events[-1].usage


def run_client(lang: str, target: str, key: str | None) -> subprocess.CompletedProcess:
    built(lang)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
    if key is not None:
        env["GENAPI_API_KEY"] = key
    return subprocess.run([*CLIENTS[lang], target, MODEL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("lang", CLIENTS)
def test_client_lists_models_streams_text_and_usage_and_reports_not_found(core, expected, lang):
    r = run_client(lang, core.grpc_target, KEY)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert f"model: {MODEL} task=MODEL_TASK_CHAT context_length=2048\n" in out, out
    text, usage = expected
    streamed = re.search(r"^text: (.*)\nfinish_reason: (\w+)$", out, re.M | re.S)
    assert streamed, out
    assert streamed.group(1) == text and text  # every delta arrived, in order
    assert streamed.group(2) in ("FINISH_REASON_LENGTH", "FINISH_REASON_STOP")
    numbers = USAGE.search(out)
    assert numbers, out
    assert tuple(map(int, numbers.groups())) == (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: code=NOT_FOUND reason=model_not_found param=model message="), out
    assert "no-such-model" in last


@pytest.mark.parametrize("lang", CLIENTS)
def test_client_without_api_key_reports_unauthenticated(core, lang):
    r = run_client(lang, core.grpc_target, None)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("error: code=UNAUTHENTICATED reason=invalid_api_key param= message="), r.stdout
