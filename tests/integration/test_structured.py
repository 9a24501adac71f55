"""Structured outputs (issue 7 A) through the real shim and core with the official SDK,
gRPC stubs and LangChain: response_format json_object / json_schema enforced by the
grammar, whatever the weights of the tiny model; bad schemas (plan row B9) refused with
400 naming response_format while the service keeps serving.

The grammar guarantees a valid document only once the answer completes, so schemas are
small and bounded (strings with maxLength, numbers with ranges, arrays with maxItems)
and max_tokens generous; every answer must end with finish_reason "stop"."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Literal

import grpc
import jsonschema
import openai
import pytest
from google.protobuf import struct_pb2
from pydantic import BaseModel, Field

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, TINY_MODEL, Service, user_messages

MAX_TOKENS = 256
SEEDS = range(50)
CONCURRENCY = 24  # fills most of the batch, within the shim's request threads (32 per worker)
# A real schema that xgrammar needs seconds for (a long bounded regex): over the 1 s
# limit this module's service runs with, far from the milliseconds of the others.
# xgrammar compiles one ([a-z]{1,60}[0-9]{1,60}){1,80} group in about 0.45 s on one CPU core,
# and the time grows with their number: 15 of them take about 7 s, well past the test
# service's 1 s limit however fast the machine (one group alone compiled within 1 s in CI).
SLOW_SCHEMA = {"type": "string", "pattern": "^" + "([a-z]{1,60}[0-9]{1,60}){1,80}" * 15 + "$"}

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "home": {"$ref": "#/$defs/place"},
        "contact": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999},
                              {"type": "string", "pattern": "^[a-z]{1,5}@[a-z]{1,5}$"}]},
    },
    "required": ["name", "age", "score", "role", "code", "tags", "home", "contact"],
    "additionalProperties": False,
    "$defs": {"place": {"type": "object",
                        "properties": {"city": {"type": "string", "maxLength": 6}, "floor": {"type": "integer",
                                                                                          "minimum": 0,
                                                                                          "maximum": 9}},
                        "required": ["city", "floor"], "additionalProperties": False}},
}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": SCHEMA}}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("structured"), "structured", max_batch=32,
                model_options="grammar_compile_timeout_s = 1.0\n").start()
    yield s
    s.stop()


def closing_bias() -> dict[str, int]:
    """json_object allows any object, so a model with random weights may write one key,
    string or number for ever, or keep opening objects: a strong bias towards the tokens
    that hold '"', '}' or ']' but no '{' or '[' makes strings, objects and arrays close
    (the grammar still decides which of them are allowed where, so answers stay varied)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TINY_MODEL)
    pieces = {i: tok.decode([i]) for i in range(len(tok))}
    return {str(i): 20 for i, p in pieces.items() if any(c in p for c in '"}]') and not any(c in p for c in "{[")}


async def answers(svc: Service, response_format: dict, seeds, stream: bool, **kw) -> list[tuple[str, str]]:
    """(content, finish_reason) of one request per seed, CONCURRENCY at a time."""
    client = svc.sdk(asynchronous=True, timeout=600)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(seed):
        async with sem:
            return await ask(seed)

    async def ask(seed):
        args = dict(model=MODEL, messages=user_messages("Describe a person as JSON."), temperature=1, seed=seed,
                    max_tokens=MAX_TOKENS, response_format=response_format, **kw)
        if not stream:
            r = await client.chat.completions.create(**args)
            return r.choices[0].message.content, r.choices[0].finish_reason
        text, finish = [], None
        async for ch in await client.chat.completions.create(stream=True, **args):
            for c in ch.choices:
                text.append(c.delta.content or "")
                finish = c.finish_reason or finish
        return "".join(text), finish

    async with client:
        return await asyncio.gather(*(one(s) for s in seeds))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_json_schema_answer_validates(svc, stream):
    results = asyncio.run(answers(svc, JSON_SCHEMA, [s + 1000 * stream for s in SEEDS], stream))
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for content, finish in results:
        assert finish == "stop", content
        validator.validate(json.loads(content))
    assert len({c for c, _ in results}) > 10  # sampled, not one fixed answer


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_every_json_object_answer_is_an_object(svc, stream):
    results = asyncio.run(answers(svc, {"type": "json_object"}, [s + 1000 * stream for s in SEEDS], stream,
                                  logit_bias=closing_bias()))
    for content, finish in results:
        assert finish == "stop", content
        assert isinstance(json.loads(content), dict)


class Pet(BaseModel):
    name: str = Field(max_length=8)
    legs: int = Field(ge=0, le=8)
    kind: Literal["cat", "dog", "fish"]


class Owner(BaseModel):
    nickname: str = Field(max_length=6)
    pets: list[Pet] = Field(max_length=2)


def test_sdk_parse_returns_the_pydantic_object(svc):
    client = svc.sdk()
    r = client.chat.completions.parse(model=MODEL, messages=user_messages("Who owns which pets?"), seed=3,
                                      temperature=1, max_tokens=MAX_TOKENS, response_format=Owner)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(msg.parsed, Owner) and msg.parsed == Owner.model_validate_json(msg.content)


def test_n_logprobs_and_stop_strings_with_a_schema(svc):
    client = svc.sdk()
    r = client.chat.completions.create(model=MODEL, messages=user_messages("JSON please"), seed=7, n=3,
                                       temperature=1, max_tokens=MAX_TOKENS, response_format=JSON_SCHEMA,
                                       logprobs=True, top_logprobs=5)
    assert [c.finish_reason for c in r.choices] == ["stop"] * 3
    for c in r.choices:
        jsonschema.validate(json.loads(c.message.content), SCHEMA)
        # Log probabilities of the masked distribution: allowed tokens only, never -inf.
        assert c.logprobs.content and all(t.logprob > -9999 for lp in c.logprobs.content for t in lp.top_logprobs)
    cut = client.chat.completions.create(model=MODEL, messages=user_messages("JSON please"), seed=7,
                                         temperature=1, max_tokens=MAX_TOKENS, response_format=JSON_SCHEMA,
                                         stop=['"age"'])
    full, head = r.choices[0].message.content, cut.choices[0].message.content
    assert cut.choices[0].finish_reason == "stop" and full.startswith(head) and full[len(head):].startswith('"age"')


def test_grpc_generate_with_response_format(svc):
    schema = struct_pb2.Struct()
    schema.update(SCHEMA)
    with grpc.insecure_channel(svc.grpc_target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        req = pb.GenerateRequest(
            model=MODEL, messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                                           content=[content_pb2.ContentPart(text="JSON")])],
            sampling=pb.SamplingOptions(temperature=1, seed=11), stopping=pb.StoppingOptions(max_tokens=MAX_TOKENS),
            response_format=content_pb2.ResponseFormat(type=content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                                                       name="person", schema=schema))
        events = list(stub.Generate(req))
        assert events[-1].finished.reason == content_pb2.FINISH_REASON_STOP
        jsonschema.validate(json.loads("".join(e.text.text for e in events if e.HasField("text"))), SCHEMA)
        bad = content_pb2.ResponseFormat(type=content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="x",
                                         schema=struct_pb2.Struct(fields={"type": struct_pb2.Value(number_value=1)}))
        with pytest.raises(grpc.RpcError) as ei:
            list(stub.Generate(pb.GenerateRequest(model=MODEL, messages=req.messages, response_format=bad)))
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Invalid schema" in ei.value.details()


def test_langchain_with_structured_output(svc):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{svc.base_url}/v1", api_key="unused", max_retries=0, temperature=1,
                     max_tokens=MAX_TOKENS, seed=5)
    out = llm.with_structured_output(Owner, method="json_schema").invoke("Who owns which pets?")
    assert isinstance(out, Owner)


# --- B9: bad schemas -----------------------------------------------------------------------

def deep(levels: int) -> dict:
    schema: dict = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def rf(schema) -> dict:
    spec = {"name": "bad"} if schema is None else {"name": "bad", "schema": schema}
    return {"type": "json_schema", "json_schema": spec}


@pytest.mark.parametrize("response_format, says", [
    (rf(None), "needs a schema"),
    (rf(["not", "an", "object"]), "expected an object"),
    (rf({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), "Circular $ref"),
    (rf({"$ref": "#/$defs/missing"}), "could not be compiled"),
    (rf(deep(30)), "nested more than 24 levels"),
    (rf({"type": "string", "pattern": "(unclosed"}), "is not a 'regex'"),
    (rf({"type": "object", "properties": {"a": {"type": "strin"}}}), "is not valid"),
    (rf({"enum": [f"value-{i}" for i in range(30_000)]}), "did not compile within 1 s"),
    (rf(SLOW_SCHEMA), "did not compile within 1 s"),
], ids=["missing", "not-object", "ref-loop", "ref-missing", "deep-30", "bad-regex", "bad-type",
        "huge-enum", "slow"])
def test_bad_schemas_are_400_and_the_next_request_succeeds(svc, response_format, says):
    client = svc.sdk()
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model=MODEL, messages=user_messages("x"), max_tokens=8, stream=stream,
                                           response_format=response_format)
        err = ei.value.body
        assert ei.value.status_code == 400 and says in err["message"] and err["param"].startswith("response_format")
    assert_still_serving(client)


def assert_still_serving(client):
    ok = client.chat.completions.create(model=MODEL, messages=user_messages("x"), max_tokens=64, seed=1,
                                        response_format={"type": "json_object"}, logit_bias=closing_bias())
    assert ok.choices[0].message.content.startswith("{")


def test_a_schema_nested_10k_deep_is_400(svc):
    """Too deep for the SDK to encode: sent as raw bytes."""
    import httpx

    levels = 10_000
    schema = '{"type": "object", "properties": {"a": ' * levels + "{}" + "}}" * levels
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "x"}], "response_format": '
            '{"type": "json_schema", "json_schema": {"name": "deep", "schema": %s}}}') % (MODEL, schema)
    r = httpx.post(f"{svc.base_url}/v1/chat/completions", content=body, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert_still_serving(svc.sdk())


def test_a_slow_schema_is_refused_while_other_streams_decode(svc):
    """Other streams keep receiving tokens while the slow schema compiles, and it is
    refused at the limit (the compilation itself runs on in the background)."""
    client = svc.sdk()
    stream = client.chat.completions.create(model=MODEL, messages=user_messages("Tell a long story."),
                                            max_tokens=2000, temperature=1, seed=2, stream=True,
                                            extra_body={"ignore_eos": True})
    chunks = iter(stream)
    next(chunks)
    refused = threading.Event()
    during: list[int] = []

    def slow():
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model=MODEL, messages=user_messages("x"), max_tokens=8,
                                           response_format=rf({**SLOW_SCHEMA, "maxLength": 5000}))
        assert ei.value.body["param"] == "response_format"
        refused.set()

    t = threading.Thread(target=slow)
    t.start()
    for _ in chunks:
        if refused.is_set():
            break
        during.append(1)
    t.join()
    stream.close()
    assert refused.is_set() and len(during) > 0
