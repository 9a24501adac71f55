"""Constraint -> TensorRT-LLM GuidedDecodingParams keywords, without TensorRT-LLM."""
import json

import pytest

from server.engines.base import Constraint, EngineInvalidRequest
from server.engines.trtllm.guided import ANY_OBJECT_SCHEMA, guided_decoding_kwargs

# TensorRT-LLM 1.2's GuidedDecodingParams fields: exactly one may be set.
FIELDS = {"json", "regex", "grammar", "json_object", "structural_tag"}
SCHEMA = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
TAG = json.dumps({"type": "structural_tag", "format": {"type": "const_string", "value": "x"}})


@pytest.mark.parametrize("constraint, expected", [
    (Constraint("json_schema", SCHEMA), {"json": SCHEMA}),
    (Constraint("json_object"), {"json": ANY_OBJECT_SCHEMA}),
    (Constraint("regex", "[a-z]+"), {"regex": "[a-z]+"}),
    (Constraint("ebnf", 'root ::= "a"'), {"grammar": 'root ::= "a"'}),
    (Constraint("structural_tag", TAG), {"structural_tag": TAG}),
])
def test_each_kind_maps_to_one_guide(constraint, expected):
    kw = guided_decoding_kwargs(constraint)
    assert kw == expected and set(kw) <= FIELDS and len(kw) == 1


def test_json_object_is_an_object_schema():
    assert json.loads(guided_decoding_kwargs(Constraint("json_object"))["json"]) == {"type": "object"}


def test_no_constraint_is_no_guide():
    assert guided_decoding_kwargs(None) is None


@pytest.mark.parametrize("constraint", [
    Constraint("json_schema", ""), Constraint("json_schema", "{nope"), Constraint("structural_tag", "<tag>"),
    Constraint("regex", ""), Constraint("ebnf", ""),
])
def test_unusable_specs_are_invalid_requests(constraint):
    with pytest.raises(EngineInvalidRequest) as ei:
        guided_decoding_kwargs(constraint)
    assert ei.value.param == "response_format"
