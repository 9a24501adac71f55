"""Pure mapping of a `Constraint` to TensorRT-LLM's guided decoding (no tensorrt_llm import).

API followed: TensorRT-LLM 1.2 `tensorrt_llm.sampling_params.GuidedDecodingParams`
(keyword-only dataclass; exactly one of `json` (str | dict | pydantic model: a JSON
schema), `regex` (str), `grammar` (str: EBNF), `json_object` (bool), `structural_tag`
(str: JSON text)), passed as `SamplingParams(guided_decoding=...)`; the LLM must be built
with `guided_decoding_backend="xgrammar"` (structural tags need the PyTorch backend).

Mapping (Constraint.kind -> keyword):
  json_schema     json=<schema text>
  json_object     json='{"type": "object"}': TensorRT-LLM's `json_object=True` is xgrammar's
                  built-in JSON grammar, which also admits arrays and bare values, while
                  OpenAI's json_object promises an object
  regex           regex=<pattern>;  ebnf  grammar=<grammar text>
  structural_tag  structural_tag=<JSON text>
"""
from __future__ import annotations

import json

from ..base import Constraint, EngineInvalidRequest

#: The schema that makes TensorRT-LLM's JSON grammar an object (OpenAI's json_object).
ANY_OBJECT_SCHEMA = '{"type": "object"}'


def guided_decoding_kwargs(constraint: Constraint | None) -> dict | None:
    """Keyword arguments of GuidedDecodingParams for `constraint` (None: unconstrained).

    Raises EngineInvalidRequest (param "response_format") for a spec the kind cannot use:
    empty, or not JSON text where JSON is expected; TensorRT-LLM reports the rest itself."""
    if constraint is None:
        return None
    kind, spec = constraint.kind, constraint.spec
    if kind == "json_object":
        return {"json": ANY_OBJECT_SCHEMA}
    if not spec:
        raise EngineInvalidRequest(f"a {kind} constraint needs a spec", "response_format")
    if kind in ("json_schema", "structural_tag"):
        try:
            json.loads(spec)
        except ValueError as e:
            raise EngineInvalidRequest(f"the {kind} is not valid JSON: {e}", "response_format") from None
        return {"json": spec} if kind == "json_schema" else {"structural_tag": spec}
    if kind == "regex":
        return {"regex": spec}
    if kind == "ebnf":
        return {"grammar": spec}
    raise EngineInvalidRequest(f"unknown constraint kind {kind!r}", "response_format")
