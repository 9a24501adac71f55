"""Bad input to /v1/embeddings and /v1/rerank (reliability plan B13-B14): a 400 in the
OpenAI envelope naming the field, and the service keeps serving."""
from __future__ import annotations

import httpx
import pytest

from ..conftest import EMBED_MODEL, RERANK_MODEL
from .test_bad_input import assert_error

LONG = "word " * 300  # 302 tokens: over MiniLM's 256


@pytest.fixture(scope="module")
def svc(encoder_service):
    return encoder_service


def post(svc, path: str, body: dict) -> httpx.Response:
    return httpx.post(svc.base_url + path, json=body, timeout=120)


EMBEDDING_CASES = {
    "empty string": ({"input": ""}, "input"),
    "empty array": ({"input": []}, "input"),
    "empty string in array": ({"input": ["ok", ""]}, "input"),
    "empty token array": ({"input": [[]]}, "input"),
    "2049 items": ({"input": ["a"] * 2049}, "input"),
    "out-of-vocabulary token id": ({"input": [[101, 999_999, 102]]}, "input"),
    "negative token id": ({"input": [101, -1]}, "input"),
    "mixed array": ({"input": ["a", 5]}, "input"),
    "not text": ({"input": {"text": "a"}}, "input"),
    "over-long input": ({"input": ["short", LONG]}, "input"),
    "over 300k tokens": ({"input": ["token " * 200] * 1600}, "input"),  # 1600 x 202 tokens
    "dimensions 0": ({"input": "a", "dimensions": 0}, "dimensions"),
    "dimensions above the model's": ({"input": "a", "dimensions": 385}, "dimensions"),
    "dimensions not an integer": ({"input": "a", "dimensions": "64"}, "dimensions"),
    "bad encoding_format": ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    "truncate 0": ({"input": "a", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    "unknown field": ({"input": "a", "pooling": "cls"}, "pooling"),
    "missing input": ({}, "input"),
}


@pytest.mark.parametrize("case", list(EMBEDDING_CASES))
def test_bad_embeddings_requests(svc, case):
    body, param = EMBEDDING_CASES[case]
    err = assert_error(post(svc, "/v1/embeddings", {"model": EMBED_MODEL, **body}), 400, param=param)
    if case == "over-long input":
        assert "input[1]" in err["message"] and "256" in err["message"]  # names the input and the limit
    if case == "empty string in array":
        assert err["message"] == "Invalid 'input[1]': expected a non-empty string."
    if case == "over 300k tokens":
        assert "300000" in err["message"]


RERANK_CASES = {
    "no documents": ({"documents": []}, "documents"),
    "empty document": ({"documents": ["ok", ""]}, "documents"),
    "non-string document": ({"documents": ["ok", 5]}, "documents"),
    "object without text": ({"documents": [{"title": "x"}]}, "documents"),
    "documents not an array": ({"documents": "ok"}, "documents"),
    "2049 documents": ({"documents": ["a"] * 2049}, "documents"),
    "top_n above the documents": ({"documents": ["a", "b"], "top_n": 3}, "top_n"),
    "negative top_n": ({"documents": ["a"], "top_n": -1}, "top_n"),
    "top_n not an integer": ({"documents": ["a"], "top_n": "1"}, "top_n"),
    "empty query": ({"query": "", "documents": ["a"]}, "query"),
    "return_documents not a boolean": ({"documents": ["a"], "return_documents": "yes"}, "return_documents"),
    "over-long document": ({"documents": ["a", LONG]}, "documents"),
}


@pytest.mark.parametrize("case", list(RERANK_CASES))
def test_bad_rerank_requests(svc, case):
    body, param = RERANK_CASES[case]
    assert_error(post(svc, "/v1/rerank", {"model": RERANK_MODEL, "query": "q", **body}), 400, param=param)


def test_unknown_model_and_still_serving(svc):
    assert_error(post(svc, "/v1/embeddings", {"model": "nope", "input": "a"}), 404, param="model",
                 code="model_not_found")
    assert_error(post(svc, "/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}), 404, param="model")
    assert post(svc, "/v1/embeddings", {"model": EMBED_MODEL, "input": "still serving"}).status_code == 200
    assert post(svc, "/v1/rerank", {"model": RERANK_MODEL, "query": "q", "documents": ["a"]}).status_code == 200
