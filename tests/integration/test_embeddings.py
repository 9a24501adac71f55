"""POST /v1/embeddings and EmbeddingService.Embed on the real all-MiniLM-L6-v2, through the
official openai SDK, LangChain and the generated stubs; vectors are compared with
sentence-transformers run in this process on the same checkpoint."""
from __future__ import annotations

import base64
import threading

import grpc
import httpx
import numpy as np
import pytest

from genapi.config import package_path
from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc
from genapi.v1 import embedding_service_pb2 as pb
from genapi.v1 import embedding_service_pb2_grpc as pb_grpc

from ..conftest import BATCHING_MODEL, EMBED_MODEL, MINILM_PATH, MODEL, RERANK_MODEL

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods, and the path was long and muddy after the rain.",
    "Kubernetes schedules containers onto nodes.",
    "x",
    "¿Dónde está la biblioteca? 图书馆在哪里？",
]


@pytest.fixture(scope="module")
def svc(encoder_service):
    return encoder_service


@pytest.fixture(scope="module")
def sdk(svc):
    return svc.sdk()


@pytest.fixture(scope="module")
def reference():
    """sentence-transformers in this process on the checkpoint the service serves."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(package_path(MINILM_PATH)), device="cpu", local_files_only=True)


def vectors(resp) -> np.ndarray:
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], dtype=np.float32)


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.9999, cos


def test_related_sentences_are_closer_than_unrelated(sdk):
    v = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:3], encoding_format="float"))
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    related, unrelated = v[0] @ v[1], v[0] @ v[2]
    assert related > unrelated + 0.2, (related, unrelated)


def test_vectors_equal_sentence_transformers_in_process(sdk, reference):
    resp = sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES, encoding_format="float")
    assert resp.model == EMBED_MODEL and resp.object == "list"
    assert [d.index for d in resp.data] == list(range(len(SENTENCES)))
    assert_same(vectors(resp), reference.encode(SENTENCES, normalize_embeddings=True))
    tokens = sum(len(ids) for ids in reference.tokenizer(SENTENCES)["input_ids"])
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == tokens


def test_float_and_base64_give_the_same_vectors(sdk, svc):
    floats = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:2], encoding_format="float"))
    # Without encoding_format the SDK asks for base64 and decodes it itself.
    decoded = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:2]))
    raw = httpx.post(f"{svc.base_url}/v1/embeddings", timeout=60,
                     json={"model": EMBED_MODEL, "input": SENTENCES[:2], "encoding_format": "base64"}).json()
    ours = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in raw["data"]])
    assert np.array_equal(floats, decoded) and np.array_equal(floats, ours)
    assert floats.shape == (2, 384)


def test_dimensions_truncate_and_renormalize(sdk):
    full = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:2], encoding_format="float"))
    short = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:2], dimensions=64,
                                          encoding_format="float"))
    assert short.shape == (2, 64)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    assert np.allclose(short, expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-6)


def test_token_id_inputs_equal_their_text(sdk, reference):
    ids = reference.tokenizer(SENTENCES[:2])["input_ids"]  # with [CLS] ... [SEP]
    by_text = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=SENTENCES[:2], encoding_format="float"))
    by_ids = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=ids, encoding_format="float"))
    single = vectors(sdk.embeddings.create(model=EMBED_MODEL, input=ids[0], encoding_format="float"))
    assert_same(by_ids, by_text)
    assert_same(single, by_text[:1])


def test_truncation_extension(sdk, reference):
    long = "the quick brown fox jumps over the lazy dog " * 60  # ~540 tokens, limit 256
    resp = sdk.embeddings.create(model=EMBED_MODEL, input=long, encoding_format="float",
                                 extra_body={"truncate_prompt_tokens": -1})
    assert resp.usage.prompt_tokens == 256
    assert_same(vectors(resp), reference.encode([long], normalize_embeddings=True))  # it truncates at 256 too
    resp = sdk.embeddings.create(model=EMBED_MODEL, input=long, encoding_format="float",
                                 extra_body={"truncate_prompt_tokens": 16})
    assert resp.usage.prompt_tokens == 16


def test_concurrent_requests_are_merged_into_shared_forward_passes(svc, reference):
    """16 clients at once on the batching model (max_batch 16, long max_wait): the engine
    runs fewer passes than requests, and every vector is still exact."""
    stats = admin_service_pb2_grpc.AdminServiceStub(grpc.insecure_channel(svc.grpc_target))

    def counters():
        e = stats.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=BATCHING_MODEL)).engines[0]
        return e.forward_passes, e.requests_finished

    texts = [f"{s} ({i})" for i, s in enumerate(SENTENCES * 2)]
    assert len(texts) == 16
    before = counters()
    barrier = threading.Barrier(len(texts))
    out: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            client = svc.sdk()
            barrier.wait()
            out[i] = vectors(client.embeddings.create(model=BATCHING_MODEL, input=texts[i], encoding_format="float"))[0]
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    passes, finished = (a - b for a, b in zip(counters(), before))
    assert finished == 16
    assert passes < 16, f"{passes} forward passes for 16 concurrent requests: nothing was merged"
    assert_same(np.array([out[i] for i in range(16)]), reference.encode(texts, normalize_embeddings=True))


def test_langchain_openai_embeddings(svc, reference):
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(model=EMBED_MODEL, base_url=f"{svc.base_url}/v1", api_key="unused",
                           check_embedding_ctx_length=False, max_retries=0)
    docs = np.array(emb.embed_documents(SENTENCES[:3]), dtype=np.float32)
    query = np.array([emb.embed_query(SENTENCES[0])], dtype=np.float32)
    assert_same(docs, reference.encode(SENTENCES[:3], normalize_embeddings=True))
    assert_same(query, docs[:1])


def test_models_list_each_task(sdk):
    models = {m.id: m for m in sdk.models.list().data}
    assert models[EMBED_MODEL].task == "embedding" and models[EMBED_MODEL].dimensions == 384
    assert models[EMBED_MODEL].context_length == 256
    assert models[RERANK_MODEL].task == "rerank" and models[MODEL].task == "chat"


def test_tasks_are_not_mixed(svc):
    """A chat model asked for embeddings, an embedding model asked for chat or rerank: 400
    naming the model's task."""
    from .test_bad_input import assert_error

    cases = [
        ("/v1/embeddings", {"model": MODEL, "input": "hi"}, "a chat model"),
        ("/v1/chat/completions", {"model": EMBED_MODEL, "messages": [{"role": "user", "content": "hi"}]},
         "an embedding model"),
        ("/v1/rerank", {"model": EMBED_MODEL, "query": "q", "documents": ["d"]}, "an embedding model"),
        ("/v1/embeddings", {"model": RERANK_MODEL, "input": "hi"}, "a rerank model"),
    ]
    for path, body, noun in cases:
        err = assert_error(httpx.post(svc.base_url + path, json=body, timeout=60), 400, param="model",
                           code="model_task_mismatch")
        assert noun in err["message"], err


def test_grpc_embed(svc, reference):
    stub = pb_grpc.EmbeddingServiceStub(grpc.insecure_channel(svc.grpc_target))
    reply = stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, dimensions=384,
                                       inputs=[pb.EmbeddingInput(text=s) for s in SENTENCES[:3]]))
    got = np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)
    assert [e.index for e in reply.embeddings] == [0, 1, 2] and reply.model == EMBED_MODEL
    assert_same(got, reference.encode(SENTENCES[:3], normalize_embeddings=True))
    assert reply.usage.prompt_tokens == reply.usage.total_tokens > 0
    with pytest.raises(grpc.RpcError) as ei:
        stub.Embed(pb.EmbedRequest(model=EMBED_MODEL, inputs=[pb.EmbeddingInput(token_ids=pb.TokenIds(ids=[10**6]))]))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in ei.value.details()


def test_embeddings_batch_lines_equal_the_interactive_endpoint(sdk):
    from .batch_support import result_lines, upload, wait_batch

    bodies = {"e-float": {"model": EMBED_MODEL, "input": SENTENCES[:3]},
              "e-base64": {"model": EMBED_MODEL, "input": SENTENCES[3], "encoding_format": "base64"},
              "e-bad": {"model": EMBED_MODEL, "input": []}}
    f = upload(sdk, [{"custom_id": cid, "method": "POST", "url": "/v1/embeddings", "body": body}
                     for cid, body in bodies.items()])
    batch = wait_batch(sdk, sdk.batches.create(input_file_id=f.id, endpoint="/v1/embeddings",
                                               completion_window="24h").id)
    assert (batch.status, batch.model, batch.request_counts.completed, batch.request_counts.failed) == \
        ("completed", EMBED_MODEL, 2, 1)
    out = {r["custom_id"]: r["response"]["body"] for r in result_lines(sdk, batch.output_file_id)}
    def vectors(body: dict) -> np.ndarray:
        values = [d.pop("embedding") for d in body["data"]]
        return np.array([np.frombuffer(base64.b64decode(v), "<f4") if isinstance(v, str) else v for v in values])

    for cid in ("e-float", "e-base64"):
        interactive = httpx.post(f"{sdk.base_url}embeddings", json=bodies[cid]).json()
        # Equal up to float rounding: the line may share a forward pass with other inputs.
        assert np.allclose(vectors(out[cid]), vectors(interactive), atol=1e-5)
        assert out[cid] == interactive  # everything else, exactly
    assert batch.usage.input_tokens == sum(body["usage"]["prompt_tokens"] for body in out.values())
    [err] = result_lines(sdk, batch.error_file_id)
    assert err["custom_id"] == "e-bad" and err["response"]["status_code"] == 400
    assert err["response"]["body"]["error"]["param"] == "input"
