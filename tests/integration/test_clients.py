"""The example clients in clients/ (TypeScript on Node, Go, C++), generated from protos/
and built by ./build.sh (clients/build.sh), against a real `genapi core` on loopback that
requires an API key: with the key each lists the models, streams a completion (the same
text and usage as the Python stubs get), embeds two texts with all-MiniLM-L6-v2 (384
dimensions, the same values as the Python stubs get), reranks three documents (sorted by
score, the relevant one first) and shows an unknown model as NOT_FOUND with ErrorInfo
reason `model_not_found`; without it, UNAUTHENTICATED / `invalid_api_key`.

A client whose toolchain is missing here skips with the reason clients/build.sh recorded
(and fails under CI, where ./build.sh installs every toolchain).
"""
from __future__ import annotations

import os
import re
import subprocess

import grpc
import pytest

from genapi.v1 import content_pb2, embedding_service_pb2, embedding_service_pb2_grpc
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc
from genapi.v1 import rerank_service_pb2, rerank_service_pb2_grpc

from ..conftest import EMBED_MODEL, MINILM_PATH, MODEL, RERANK_MODEL, ROOT, Service, missing_tool

KEY = "sk-clients-0123456789abcdef"
# How to run each example (from the repository root); the last word is the built file.
CLIENTS = {
    "ts": ["node", "clients/ts/dist/example.js"],
    "go": ["clients/go/build/example"],
    "cpp": ["clients/cpp/build/example"],
}
USAGE = re.compile(r"^usage: prompt_tokens=(\d+) completion_tokens=(\d+) total_tokens=(\d+)$", re.M)
EMBEDDING = re.compile(r"^embedding: index=(\d+) dimensions=(\d+) head=(\S+)$", re.M)
EMBEDDING_USAGE = re.compile(r"^embedding_usage: prompt_tokens=(\d+)$", re.M)
RERANK = re.compile(r'^rerank: index=(\d+) relevance_score=(-?[\d.]+) document="(.*)"$', re.M)
# What the examples embed and rerank (the same in every client).
EMBED_TEXTS = ["The cat sat on the mat.", "Paris is in France."]
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.", "Berlin is the capital of Germany."]
# The clients print 4 decimals.
PRINTED = 1e-4
# The embedding and rerank models the examples call, beside the tiny chat model.
ENCODERS = f"""
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
    """
AUTH = [("authorization", f"Bearer {KEY}")]


def built(lang: str) -> None:
    """Skips (fails under CI) unless clients/build.sh built `lang`'s example."""
    if not (ROOT / CLIENTS[lang][-1]).exists():
        why = ROOT / "clients" / ".build" / f"{lang}.skip"
        missing_tool(f"{lang} client not built: " + (why.read_text().strip() if why.exists() else "run ./build.sh"))


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    if not any((ROOT / command[-1]).exists() for command in CLIENTS.values()):
        built("ts")  # none is: no need for a core
    svc = Service(tmp_path_factory.mktemp("clients"), "clients", model_options=ENCODERS,
                  env={"GENAPI_API_KEYS": KEY}).start_core(timeout_s=300)
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
        events = list(pb_grpc.GenerationServiceStub(ch).Generate(req, metadata=AUTH, timeout=60))
    return "".join(e.text.text for e in events), events[-1].usage


@pytest.fixture(scope="module")
def expected_encoders(core):
    """What the examples' Embed and Rerank calls get through the Python stubs:
    (EmbedResponse, RerankResponse)."""
    with grpc.insecure_channel(core.grpc_target) as ch:
        embedded = embedding_service_pb2_grpc.EmbeddingServiceStub(ch).Embed(embedding_service_pb2.EmbedRequest(
            model=EMBED_MODEL, inputs=[embedding_service_pb2.EmbeddingInput(text=t) for t in EMBED_TEXTS]),
            metadata=AUTH, timeout=60)
        reranked = rerank_service_pb2_grpc.RerankServiceStub(ch).Rerank(rerank_service_pb2.RerankRequest(
            model=RERANK_MODEL, query=QUERY, documents=DOCUMENTS), metadata=AUTH, timeout=60)
    return embedded, reranked


def run_client(lang: str, target: str, key: str | None) -> subprocess.CompletedProcess:
    built(lang)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENAPI_")}
    if key is not None:
        env["GENAPI_API_KEY"] = key
    return subprocess.run([*CLIENTS[lang], target, MODEL, EMBED_MODEL, RERANK_MODEL], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def output(core):
    """output(lang): stdout of `lang`'s example run with the key (run once per module),
    after checking that it exited 0."""
    runs: dict[str, subprocess.CompletedProcess] = {}

    def get(lang: str) -> str:
        if lang not in runs:
            runs[lang] = run_client(lang, core.grpc_target, KEY)
        r = runs[lang]
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout
    return get


@pytest.mark.parametrize("lang", CLIENTS)
def test_client_lists_models_streams_text_and_usage_and_reports_not_found(output, expected, lang):
    out = output(lang)
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
def test_client_embeds_and_reranks(output, expected_encoders, lang):
    out = output(lang)
    embedded, reranked = expected_encoders
    vectors = [(int(i), int(n), [float(v) for v in head.split(",")]) for i, n, head in EMBEDDING.findall(out)]
    assert [(i, n) for i, n, _ in vectors] == [(0, 384), (1, 384)], out
    for (_, _, head), want in zip(vectors, embedded.embeddings):
        assert head == pytest.approx(list(want.values[:3]), abs=PRINTED)  # the same vectors as Python gets
    assert vectors[0][2] != vectors[1][2]
    tokens = EMBEDDING_USAGE.search(out)
    assert tokens and int(tokens.group(1)) == embedded.usage.prompt_tokens > 0, out

    results = [(int(i), float(score), document) for i, score, document in RERANK.findall(out)]
    assert sorted(i for i, _, _ in results) == [0, 1, 2], out
    scores = [score for _, score, _ in results]
    assert scores == sorted(scores, reverse=True), out  # most relevant first
    assert results[0][0] == 0  # "Paris is the capital of France."
    assert all(document == DOCUMENTS[i] for i, _, document in results)  # return_documents
    assert [i for i, _, _ in results] == [r.index for r in reranked.results]
    assert scores == pytest.approx([r.relevance_score for r in reranked.results], abs=PRINTED)


@pytest.mark.parametrize("lang", CLIENTS)
def test_client_without_api_key_reports_unauthenticated(core, lang):
    r = run_client(lang, core.grpc_target, None)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("error: code=UNAUTHENTICATED reason=invalid_api_key param= message="), r.stdout
