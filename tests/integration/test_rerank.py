"""POST /v1/rerank (+ /rerank, /v2/rerank) and RerankService.Rerank: MiniLM by cosine
similarity, and the tiny cross-encoder, whose scores must be the checkpoint's own
(`CrossEncoder.predict` in this process)."""
from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest

from genapi.v1 import rerank_service_pb2 as pb
from genapi.v1 import rerank_service_pb2_grpc as pb_grpc

from ..conftest import CROSS_MODEL, EMBED_MODEL, RERANK_MODEL, TINY_CROSS_ENCODER

QUERY = "How do I bake bread at home?"
DOCUMENTS = [
    "The stock market fell sharply on Tuesday.",
    "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
    "Penguins live in the southern hemisphere.",
    "A guide to changing the oil in your car.",
]


@pytest.fixture(scope="module")
def svc(encoder_service):
    return encoder_service


def rerank(svc, path: str = "/v1/rerank", **body) -> httpx.Response:
    body.setdefault("model", RERANK_MODEL)
    body.setdefault("query", QUERY)
    body.setdefault("documents", DOCUMENTS)
    return httpx.post(svc.base_url + path, json=body, timeout=60)


def test_relevant_document_ranks_first(svc):
    resp = rerank(svc)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"id", "model", "usage", "results"} and body["id"].startswith("rerank-")
    assert body["model"] == RERANK_MODEL
    results = body["results"]
    assert [r["index"] for r in results][0] == 1
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and sorted(r["index"] for r in results) == [0, 1, 2, 3]
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] > 0


def test_scores_are_cosine_similarities_of_the_embeddings(svc):
    """A bi-encoder reranks by the dot product of its normalized embeddings."""
    emb = svc.sdk().embeddings.create(model=EMBED_MODEL, input=[QUERY, *DOCUMENTS], encoding_format="float")
    v = np.array([d.embedding for d in emb.data])
    expected = v[1:] @ v[0]
    got = {r["index"]: r["relevance_score"] for r in rerank(svc).json()["results"]}
    assert np.allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5)


def test_top_n_and_return_documents(svc):
    full = rerank(svc).json()["results"]
    top = rerank(svc, top_n=2, return_documents=False).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert all(set(r) == {"index", "relevance_score"} for r in top)
    assert len(rerank(svc, top_n=0).json()["results"]) == len(DOCUMENTS)  # 0: all


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_aliases_and_document_objects(svc, path):
    """Jina- and Cohere-style clients: other paths, documents as {"text": ...} objects."""
    resp = rerank(svc, path, documents=[{"text": d} for d in DOCUMENTS], top_n=1)
    assert resp.status_code == 200, resp.text
    (best,) = resp.json()["results"]
    assert best["index"] == 1 and best["document"]["text"] == DOCUMENTS[1]


def test_cross_encoder_gives_the_checkpoints_own_scores(svc):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(TINY_CROSS_ENCODER), device="cpu", local_files_only=True)
    expected = ce.predict([(QUERY, d) for d in DOCUMENTS])
    results = rerank(svc, model=CROSS_MODEL).json()["results"]
    got = {r["index"]: r["relevance_score"] for r in results}
    assert np.allclose([got[i] for i in range(len(DOCUMENTS))], expected, atol=1e-5), (got, expected)
    assert [r["index"] for r in results] == sorted(range(len(DOCUMENTS)), key=lambda i: -expected[i])


def test_truncation_extension(svc):
    long_doc = "bread flour yeast " * 200
    resp = rerank(svc, documents=[long_doc, DOCUMENTS[0]])
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "documents"
    assert "256" in resp.json()["error"]["message"]
    for model in (RERANK_MODEL, CROSS_MODEL):
        resp = rerank(svc, model=model, documents=[long_doc, DOCUMENTS[0]], truncate_prompt_tokens=-1)
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["results"]) == 2
    # Cohere's max_tokens_per_doc truncates the same way; the truncated bread text still wins.
    resp = rerank(svc, documents=[DOCUMENTS[0], long_doc], max_tokens_per_doc=64)
    assert resp.json()["results"][0]["index"] == 1
    assert resp.json()["usage"]["prompt_tokens"] <= 64 + 2 * len(DOCUMENTS[0])


def test_grpc_rerank(svc):
    stub = pb_grpc.RerankServiceStub(grpc.insecure_channel(svc.grpc_target))
    reply = stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query=QUERY, documents=DOCUMENTS, top_n=2))
    assert reply.model == RERANK_MODEL and [r.index for r in reply.results][0] == 1 and len(reply.results) == 2
    assert not reply.results[0].HasField("document")
    assert reply.results[0].relevance_score >= reply.results[1].relevance_score
    with pytest.raises(grpc.RpcError) as ei:
        stub.Rerank(pb.RerankRequest(model=RERANK_MODEL, query=QUERY, documents=DOCUMENTS, top_n=5))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_n" in ei.value.details()

