"""Shapes the shim produces, checked against OpenAI's OpenAPI spec (skipped without it).

The spec lives outside the repo (reference material); set GENAPI_OPENAI_SPEC to point at
openai-openapi.yaml, or keep it at ../shared/reference/ next to the checkout.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from genapi.v1 import common_pb2, generation_service_pb2 as gen_pb2, model_service_pb2
from genapi.v1 import transcription_service_pb2 as audio_pb2
from shim.errors import APIError
from shim.translate.audio import TranscriptAccumulator, TranscriptStreamBuilder
from shim.translate.chat import ChatChunkBuilder, build_chat_completion
from shim.translate.models import model_list_to_dict, model_to_dict

yaml = pytest.importorskip("yaml")

_CANDIDATES = [os.environ.get("GENAPI_OPENAI_SPEC", ""),
               str(Path(__file__).resolve().parents[3] / "shared" / "reference" / "openai-openapi.yaml")]


@pytest.fixture(scope="module")
def schemas():
    for candidate in _CANDIDATES:
        if candidate and Path(candidate).is_file():
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            with open(candidate) as f:
                return yaml.load(f, Loader=loader)["components"]["schemas"]
    pytest.skip("OpenAI OpenAPI spec not available")


def _resolve(schemas, s):
    while "$ref" in s:
        s = schemas[s["$ref"].split("/")[-1]]
    return s


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def check(schemas, s, v, path="$") -> list[str]:
    """A small OpenAPI 3 schema checker: the keywords these response schemas use."""
    if v is None and s.get("nullable"):  # also as a sibling of $ref
        return []
    s = _resolve(schemas, s)
    errors: list[str] = []
    if v is None and s.get("nullable"):
        return []
    for sub in s.get("allOf", []):
        errors += check(schemas, sub, v, path)
    for key in ("anyOf", "oneOf"):  # oneOf checked leniently (overlapping branches are common)
        if key in s and not any(not check(schemas, sub, v, path) for sub in s[key]):
            return [f"{path}: matches no {key} branch"]
    t = s.get("type")
    if t and not _TYPES[t](v):
        return [f"{path}: expected {t}, got {type(v).__name__}"]
    if "enum" in s and v not in s["enum"] and not (v is None and None in s["enum"]):
        errors.append(f"{path}: {v!r} not in {s['enum']}")
    if isinstance(v, dict):
        for req in s.get("required", []):
            if req not in v:
                errors.append(f"{path}: missing required {req}")
        props = s.get("properties", {})
        for k, sub in props.items():
            if k in v:
                errors += check(schemas, sub, v[k], f"{path}.{k}")
        if s.get("additionalProperties") is False:
            errors += [f"{path}: unexpected {k}" for k in v if k not in props]
    if isinstance(v, list) and "items" in s:
        for i, item in enumerate(v):
            errors += check(schemas, s["items"], item, f"{path}[{i}]")
    return errors


def usage(c):
    return common_pb2.Usage(prompt_tokens=4, completion_tokens=c, total_tokens=4 + c)


LP = gen_pb2.TokenLogprob(token="a", logprob=-0.5, bytes=b"a",
                          top_logprobs=[gen_pb2.TopLogprob(token="b", logprob=float("-inf"), bytes=b"b")])
EVENTS = [
    gen_pb2.GenerateResponse(usage=usage(0), started=gen_pb2.Started(model="m")),
    gen_pb2.GenerateResponse(choice_index=0, usage=usage(1), text=gen_pb2.TextDelta(text="a", logprobs=[LP])),
    gen_pb2.GenerateResponse(choice_index=1, usage=usage(2),
                             tool_call=gen_pb2.ToolCallDelta(index=0, id="call_1", name="f", arguments="{")),
    gen_pb2.GenerateResponse(choice_index=1, usage=usage(3), tool_call=gen_pb2.ToolCallDelta(index=0, arguments="}")),
    gen_pb2.GenerateResponse(choice_index=0, usage=usage(3), finished=gen_pb2.Finished(reason=2)),
    gen_pb2.GenerateResponse(choice_index=1, usage=usage(3), finished=gen_pb2.Finished(reason=3)),
]


@pytest.mark.parametrize("logprobs", [False, True])
def test_completion_matches_spec(schemas, logprobs):
    out = build_chat_completion(EVENTS, model="m", n=2, logprobs=logprobs)
    assert check(schemas, schemas["CreateChatCompletionResponse"], out) == []


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("logprobs", [False, True])
def test_chunks_match_spec(schemas, include_usage, logprobs):
    b = ChatChunkBuilder(model="m", n=2, logprobs=logprobs, include_usage=include_usage)
    chunks = [c for ev in EVENTS for c in b.on_event(ev)] + b.finish()
    assert len(chunks) >= 7
    for chunk in chunks:
        assert check(schemas, schemas["CreateChatCompletionStreamResponse"], chunk) == [], chunk


def test_error_envelope_matches_spec(schemas):
    for err in (APIError(400, "m"), APIError(404, "x", param="model", code="model_not_found")):
        assert check(schemas, schemas["ErrorResponse"], err.envelope()) == []


def test_models_match_spec(schemas):
    m = model_service_pb2.Model(id="a/b", task=common_pb2.MODEL_TASK_CHAT, context_length=10, created=1)
    assert check(schemas, schemas["Model"], model_to_dict(m)) == []
    assert check(schemas, schemas["ListModelsResponse"], model_list_to_dict([m])) == []


def test_checker_catches_mistakes(schemas):
    bad = build_chat_completion(EVENTS, model="m")
    bad["choices"][0]["finish_reason"] = "bored"
    del bad["created"]
    errors = check(schemas, schemas["CreateChatCompletionResponse"], bad)
    assert any("created" in e for e in errors) and any("bored" in e for e in errors)


AUDIO_EVENTS = [
    audio_pb2.TranscribeResponse(started=audio_pb2.TranscribeStarted(duration_s=3.4, windows=1)),
    audio_pb2.TranscribeResponse(text=audio_pb2.TranscriptTextDelta(
        text="Hi there", logprobs=[audio_pb2.TranscriptLogprob(token=" Hi", logprob=-0.1, bytes=b" Hi")])),
    audio_pb2.TranscribeResponse(segment=audio_pb2.TranscriptSegment(id=0, start=0, end=1.5, text=" Hi there",
                                                                     tokens=[50364, 1, 2, 50439])),
    audio_pb2.TranscribeResponse(word=audio_pb2.TranscriptWord(word="Hi", start=0.1, end=0.6)),
    audio_pb2.TranscribeResponse(done=audio_pb2.TranscribeDone(
        text="Hi there", language="english", duration_s=3.4, task=audio_pb2.TRANSCRIPTION_TASK_TRANSCRIBE,
        usage=audio_pb2.TranscriptionUsage(seconds=3.4, output_tokens=5, audio_tokens=170))),
]


def _audio_body(fmt: str, grains=(), logprobs=False) -> dict:
    return {"response_format": fmt, "timestamp_granularities": list(grains), "logprobs": logprobs}


@pytest.mark.parametrize("logprobs", [False, True])
def test_transcription_json_matches_spec(schemas, logprobs):
    acc = TranscriptAccumulator(_audio_body("json", logprobs=logprobs))
    for ev in AUDIO_EVENTS:
        acc.add(ev)
    out, _ = acc.result()
    assert check(schemas, schemas["CreateTranscriptionResponseJson"], out) == []
    assert check(schemas, schemas["CreateTranslationResponseJson"], out) == []


def test_transcription_verbose_json_matches_spec(schemas):
    acc = TranscriptAccumulator(_audio_body("verbose_json", ("word", "segment")))
    for ev in AUDIO_EVENTS:
        acc.add(ev)
    out, _ = acc.result()
    assert out["segments"] and out["words"]
    assert check(schemas, schemas["CreateTranscriptionResponseVerboseJson"], out) == []
    assert check(schemas, schemas["CreateTranslationResponseVerboseJson"], out) == []


def test_transcription_stream_events_match_spec(schemas):
    b = TranscriptStreamBuilder(_audio_body("json", logprobs=True))
    events = [e for ev in AUDIO_EVENTS for e in b.on_event(ev)]
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.done"]
    for e in events:
        assert check(schemas, schemas["CreateTranscriptionResponseStreamEvent"], e) == [], e
    assert check(schemas, schemas["TranscriptTextDoneEvent"], events[-1]) == []
