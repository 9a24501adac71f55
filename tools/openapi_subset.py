"""The OpenAPI document genapi fuzzes itself against (reliability plan Z1), derived from
OpenAI's openai-openapi spec: only the operations genapi serves, only the schemas they
reach, documentation stripped, plus genapi's documented extensions.

    python tools/openapi_subset.py [SPEC.yaml] [-o tests/fuzz/openapi/openai-subset.json]

SPEC defaults to $GENAPI_OPENAI_SPEC, else ../shared/reference/openai-openapi.yaml next
to the checkout. The output is committed (tests/fuzz/openapi/, with OpenAI's MIT notice
in LICENSE.openai-openapi) so CI needs no copy of the full spec; tests/fuzz derives it
afresh when the full spec is present and checks that the committed copy is current.

Extensions and deliberate differences (each one is what genapi documents in README.md):
  * error statuses of every operation, with OpenAI's ErrorResponse envelope (400, 401,
    404, 413, 415, 429 and 503 with Retry-After, 499, 500, 501, 504) and an `x-request-id`
    header on every response;
  * chat streams: each SSE event's data is `[DONE]`, a chunk, or an error envelope
    (OpenAPI 3.2 `itemSchema`);
  * the request's `ignore_eos` extension; `model` names the served model;
  * leniencies: fields genapi accepts and ignores take any string (a new OpenAI enum
    value must not break clients), `logit_bias` values may be decimals, `stop: []`
    means no stop strings, `null` means "not set" for every optional field;
  * bounds genapi enforces on identifiers (genapi.untrusted) and on metadata.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT.parent / "shared" / "reference" / "openai-openapi.yaml"
FIXTURE = ROOT / "tests" / "fuzz" / "openapi" / "openai-subset.json"
SERVED_MODEL = "genapi-tiny-chat"

# The operations genapi serves, as OpenAI's spec names them (paths below /v1).
OPERATIONS = {"/chat/completions": "post", "/models": "get", "/models/{model}": "get"}

# Keywords that only document; dropped to keep the fixture small.
DOC_KEYS = {"description", "summary", "example", "examples", "default", "deprecated", "externalDocs", "title"}
# Mappings whose keys are names (of properties, statuses, media types), never keywords.
NAME_MAPS = {"properties", "patternProperties", "$defs", "schemas", "responses", "content", "headers", "paths",
             "discriminator", "mapping"}

MAX_ID_CHARS = 256  # genapi.untrusted.MAX_ID_CHARS (kept literal: tools import nothing of genapi)
MAX_STOP_CHARS = 1024

REQUEST_ID_HEADER = {"x-request-id": {"required": True,
                                      "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}}
RETRY_AFTER_HEADER = {"Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[1-9][0-9]*$"}}}
ERROR_STATUSES = {
    "/chat/completions": ["400", "401", "404", "413", "415", "429", "499", "500", "501", "503", "504"],
    "/models": ["401", "500", "503", "504"],
    "/models/{model}": ["400", "401", "404", "500", "503", "504"],
}

LICENSE_NOTE = (
    "Derived by genapi's tools/openapi_subset.py from OpenAI's OpenAPI specification "
    "(https://github.com/openai/openai-openapi), Copyright (c) OpenAI, MIT License; the full "
    "notice is in LICENSE.openai-openapi next to this file. Only the operations genapi serves "
    "are kept, documentation is stripped, and genapi's extensions are added.")


def _strip(obj, names: bool = False):
    """A copy of `obj` without documentation keywords (keys of name maps are kept)."""
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for key, value in obj.items():
        if not names and (key in DOC_KEYS or key.startswith("x-")):
            continue
        out[key] = _strip(value, names=not names and key in NAME_MAPS)
    return out


def _refs(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _refs(value)


def _lookup(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _nullable_to_31(obj):
    """OpenAPI 3.0's `nullable: true` (which the spec still mixes in) as a 3.1 union."""
    if isinstance(obj, list):
        return [_nullable_to_31(v) for v in obj]
    if not isinstance(obj, dict):
        return obj
    obj = {k: _nullable_to_31(v) for k, v in obj.items()}
    if obj.pop("nullable", False) is True:
        return {"anyOf": [obj, {"type": "null"}]}
    return obj


def derive(full: dict, model: str = SERVED_MODEL) -> dict:
    """OpenAI's spec (parsed) -> genapi's fuzzing spec (see the module docstring)."""
    paths = {path: {method: copy.deepcopy(full["paths"][path][method])} for path, method in OPERATIONS.items()}
    components: dict[str, dict] = {}
    todo, seen = list(_refs(paths)), set()
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        _, section, name = ref.removeprefix("#/").split("/")
        node = copy.deepcopy(_lookup(full, ref))
        components.setdefault(section, {})[name] = node
        todo.extend(_refs(node))
    components.pop("responses", None)  # replaced by genapi's own below
    doc = {
        "openapi": full.get("openapi", "3.1.0"),
        "info": {"title": "genapi: the OpenAI API operations it serves", "version": full["info"]["version"],
                 "license": {"name": "MIT", "identifier": "MIT"}, "description": LICENSE_NOTE},
        "servers": [{"url": "http://127.0.0.1:8000/v1"}],
        "paths": _strip(paths, names=True),
        "components": {section: _strip(items, names=True) for section, items in components.items()},
    }
    doc = _nullable_to_31(doc)
    _extend(doc, model)
    _prune(doc)
    return {key: _sorted(value) for key, value in doc.items()}


def _prune(doc: dict) -> None:
    """Drops the components nothing references any more."""
    todo, seen = list(_refs(doc["paths"])), set()
    while todo:
        ref = todo.pop()
        if ref not in seen:
            seen.add(ref)
            todo.extend(_refs(_lookup(doc, ref)))
    for section, items in doc["components"].items():
        for name in list(items):
            if f"#/components/{section}/{name}" not in seen:
                del items[name]


def _sorted(obj):
    if isinstance(obj, dict):
        return {k: _sorted(obj[k]) for k in sorted(obj)}
    if isinstance(obj, list):
        return [_sorted(v) for v in obj]
    return obj


def _flatten(doc: dict, schema: dict) -> dict:
    """An allOf of object schemas (through $refs) as one object schema: properties of later
    parts win, required fields add up. (`additionalProperties: false` on an allOf part
    would refuse the other parts' properties; on the flat schema it means what it says.)"""
    if "$ref" in schema:
        return _flatten(doc, _lookup(doc, schema["$ref"]))
    out: dict = {"type": "object", "properties": {}, "required": []}
    for part in schema.get("allOf", []):
        flat = _flatten(doc, part)
        out["properties"].update(flat["properties"])
        out["required"] += [r for r in flat["required"] if r not in out["required"]]
    out["properties"].update(schema.get("properties", {}))
    out["required"] += [r for r in schema.get("required", []) if r not in out["required"]]
    return out


def _nullable(schema: dict) -> dict:
    return {"anyOf": [schema, {"type": "null"}]}


def _accepts_null(schema: dict) -> bool:
    return any(branch == {"type": "null"} for branch in schema.get("anyOf", []) + schema.get("oneOf", []))


def _optional_nullable(schema: dict) -> None:
    """genapi reads null as "not set" for every optional field."""
    for name, prop in schema["properties"].items():
        if name not in schema.get("required", []) and not _accepts_null(prop):
            schema["properties"][name] = _nullable(prop)


def _drop_branch(schema: dict, ref_name: str) -> None:
    """Removes the oneOf/anyOf branch that references `ref_name` (KeyError if absent)."""
    for key in ("oneOf", "anyOf"):
        branches = schema.get(key, [])
        for branch in branches:
            if branch.get("$ref", "").endswith("/" + ref_name):
                branches.remove(branch)
                return
    raise KeyError(ref_name)


def _extend(doc: dict, model: str) -> None:
    schemas = doc["components"]["schemas"]
    responses = doc["components"].setdefault("responses", {})

    # --- requests ------------------------------------------------------------------------
    schemas["ModelIdsShared"] = {"type": "string", "enum": [model]}  # others: 404 (negative cases)
    request = _flatten(doc, schemas["CreateChatCompletionRequest"])
    request["additionalProperties"] = False  # unknown fields: 400 unknown_parameter
    schemas["CreateChatCompletionRequest"] = request
    props = request["properties"]
    # Refused features (400 unsupported_parameter) are not part of what genapi serves:
    # positive cases leave them out, so they reach the model.
    for name in ("tools", "functions", "audio", "prediction", "web_search_options", "moderation"):
        del props[name]
    props["tool_choice"] = {"type": "string", "enum": ["none", "auto"]}
    props["function_call"] = {"type": "string", "enum": ["none", "auto"]}
    props["response_format"] = {"type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}},
                                "required": ["type"]}
    props["modalities"] = {"type": "array", "items": {"type": "string", "enum": ["text"]}}
    _drop_branch(schemas["ChatCompletionRequestMessage"], "ChatCompletionRequestFunctionMessage")
    for part in ("ChatCompletionRequestMessageContentPartImage", "ChatCompletionRequestMessageContentPartAudio",
                 "ChatCompletionRequestMessageContentPartFile"):
        _drop_branch(schemas["ChatCompletionRequestUserMessageContentPart"], part)
    assistant = schemas["ChatCompletionRequestAssistantMessage"]["properties"]
    del assistant["audio"], assistant["function_call"]
    _drop_branch(schemas["ChatCompletionMessageToolCalls"]["items"], "ChatCompletionMessageCustomToolCall")
    # Keys genapi ignores inside messages and content parts take any value.
    del schemas["ChatCompletionRequestMessageContentPartText"]["properties"]["prompt_cache_breakpoint"]
    # genapi's own
    props["ignore_eos"] = {"type": "boolean"}
    # Accepted and ignored: any string (a new OpenAI enum value must not break a client).
    for name in ("service_tier", "verbosity", "reasoning_effort", "prompt_cache_retention"):
        props[name] = {"type": "string"}
    props["prompt_cache_options"] = {"type": "object"}
    # Bounds and ranges as genapi checks them.
    props["user"] = {"type": "string", "maxLength": MAX_ID_CHARS}
    props["prompt_cache_key"] = {"type": "string", "maxLength": MAX_ID_CHARS}
    props["top_p"] = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
    props["seed"] = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    for name in ("max_tokens", "max_completion_tokens"):
        props[name] = {"type": "integer", "minimum": 1, "maximum": 2**32 - 1}
    # Token ids to biases in [-100, 100]; decimals too.
    props["logit_bias"] = {"type": "object", "propertyNames": {"pattern": "^[0-9]{1,10}$"},
                           "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}}
    _optional_nullable(request)
    for name in ("ChatCompletionRequestDeveloperMessage", "ChatCompletionRequestSystemMessage",
                 "ChatCompletionRequestUserMessage", "ChatCompletionRequestAssistantMessage",
                 "ChatCompletionRequestToolMessage"):
        message = schemas[name]
        for key in ("name", "tool_call_id"):
            if key in message["properties"]:
                message["properties"][key] = {"type": "string", "maxLength": MAX_ID_CHARS}
        _optional_nullable(message)
    call = schemas["ChatCompletionMessageToolCall"]["properties"]
    call["id"] = {"type": "string", "maxLength": MAX_ID_CHARS}
    call["function"]["properties"]["name"] = {"type": "string", "maxLength": MAX_ID_CHARS}
    schemas["StopConfiguration"] = {"oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS},
        {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}},
    ]}
    schemas["Metadata"] = {"type": "object", "maxProperties": 16, "propertyNames": {"maxLength": 64},
                           "additionalProperties": {"type": "string", "maxLength": 512}}

    # GET /models/{model}: any id up to the identifier bound (longer ones: 400). The served
    # model's own object is checked through GET /models.
    for param in doc["paths"]["/models/{model}"]["get"]["parameters"]:
        if param["name"] == "model":
            param["schema"] = {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS}

    # --- responses -----------------------------------------------------------------------
    responses["Error"] = {"description": "genapi's error envelope (OpenAI's ErrorResponse)",
                          "headers": REQUEST_ID_HEADER,
                          "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    responses["RetryableError"] = {**responses["Error"], "headers": {**REQUEST_ID_HEADER, **RETRY_AFTER_HEADER}}
    for path, method in OPERATIONS.items():
        op = doc["paths"][path][method]
        ok = op["responses"]["200"]
        ok["headers"] = REQUEST_ID_HEADER
        ok["description"] = "OK"
        if "text/event-stream" in ok.get("content", {}):
            chunk = ok["content"]["text/event-stream"].pop("schema")
            ok["content"]["text/event-stream"]["itemSchema"] = {
                "type": "object", "required": ["data"],
                "properties": {"data": {"anyOf": [
                    {"const": "[DONE]"},
                    {"type": "string", "contentMediaType": "application/json",
                     "contentSchema": {"anyOf": [chunk, {"$ref": "#/components/schemas/ErrorResponse"}]}},
                ]}},
            }
        op["responses"] = {"200": ok}
        for status in ERROR_STATUSES[path]:
            name = "RetryableError" if status in ("429", "503") else "Error"
            op["responses"][status] = {"$ref": f"#/components/responses/{name}"}


def find_full_spec() -> Path | None:
    for candidate in (os.environ.get("GENAPI_OPENAI_SPEC", ""), str(DEFAULT_SPEC)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def load_full_spec(path: Path) -> dict:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path) as f:
        return yaml.load(f, Loader=loader)


def dumps(doc: dict) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", help="openai-openapi.yaml (default: $GENAPI_OPENAI_SPEC or "
                                                "../shared/reference/openai-openapi.yaml)")
    parser.add_argument("-o", "--output", default=str(FIXTURE))
    args = parser.parse_args(argv)
    spec = Path(args.spec) if args.spec else find_full_spec()
    if spec is None:
        print("openai-openapi.yaml not found: pass its path or set GENAPI_OPENAI_SPEC", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(derive(load_full_spec(spec))))
    print(f"wrote {out} ({out.stat().st_size} bytes) from {spec}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
