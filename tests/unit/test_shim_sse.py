"""shim.sse framing and shim.jsonutil: frames always parse, output is always UTF-8."""
from __future__ import annotations

import json

import pytest

from shim import sse
from shim.jsonutil import BodyParseError, dumps, loads_body

NASTY = [
    "plain",
    "two\n\nnewlines",
    "data: [DONE]\n\ndata: {\"x\":1}",
    "carriage\rreturn\r\n",
    "lone \ud800 surrogate",
    "trailing \udfff",
    "nul \x00 byte",
    "line\u2028sep\u2029para\x85nel",
    "emoji 😀 and é",
    "",
]


def parse_frames(raw: bytes) -> list[str]:
    """Minimal SSE parser (WHATWG rules: split on blank lines, join data: lines)."""
    text = raw.decode("utf-8")  # must be valid UTF-8
    events = []
    for block in text.replace("\r\n", "\n").replace("\r", "\n").split("\n\n"):
        if not block:
            continue
        data = [line[5:].lstrip(" ") if line.startswith("data:") else None for line in block.split("\n")]
        payload = [d for d in data if d is not None]
        if payload:
            events.append("\n".join(payload))
    return events


@pytest.mark.parametrize("text", NASTY)
def test_frame_round_trips(text):
    raw = sse.frame({"choices": [{"delta": {"content": text}}]})
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n")
    assert raw.count(b"\n") == 2 and b"\r" not in raw  # exactly one line, one terminator
    (payload,) = parse_frames(raw)
    assert json.loads(payload)["choices"][0]["delta"]["content"] == text


def test_stream_of_frames_parses_with_keepalive_and_done():
    raw = sse.frames([{"a": t} for t in NASTY]) + sse.KEEPALIVE + sse.DONE
    events = parse_frames(raw)
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["a"] for e in events[:-1]] == NASTY


def test_frames_parse_with_the_openai_sdk_decoder():
    decoder_mod = pytest.importorskip("openai._streaming")
    raw = sse.frames([{"a": t} for t in NASTY]) + sse.KEEPALIVE + sse.DONE
    decoder = decoder_mod.SSEDecoder()
    events = list(decoder.iter_bytes(iter([raw[i:i + 7] for i in range(0, len(raw), 7)])))
    assert events[-1].data == "[DONE]"
    assert [json.loads(e.data)["a"] for e in events[:-1]] == NASTY


def test_dumps_is_compact_and_keeps_non_ascii():
    assert dumps({"a": "é", "b": [1, None]}) == '{"a":"é","b":[1,null]}'


def test_dumps_escapes_lone_surrogates():
    out = dumps({"a": "x\ud800y"})
    out.encode("utf-8")
    assert json.loads(out) == {"a": "x\ud800y"}


def test_dumps_rejects_nan():
    with pytest.raises(ValueError):
        dumps({"a": float("nan")})


@pytest.mark.parametrize("raw", [b"", b"   ", b"not json{{{", b"{", b'{"a":NaN}', b'{"a":Infinity}',
                                 b'{"a":-Infinity}', b'{"a":1e999}', b"\xff\xfe{}", b'{"a":1} x',
                                 b"[" * 100000, b'{"a":' + b"9" * 5000 + b"}"])
def test_loads_body_rejects(raw):
    with pytest.raises(BodyParseError):
        loads_body(raw)


@pytest.mark.parametrize("raw,value", [(b"{}", {}), (b"[]", []), (b"42", 42), (b"null", None),
                                       (b'\xef\xbb\xbf{"a":1}', {"a": 1}), (b'{"a":"\\ud800"}', {"a": "\ud800"}),
                                       (b'{"a":"\\ud83d\\ude00"}', {"a": "😀"})])
def test_loads_body_accepts(raw, value):
    assert loads_body(raw) == value


@pytest.mark.parametrize("text", ["", "a", "a" * 47, "x" * 300] + NASTY)
def test_obfuscated_frames_are_block_sized_and_parse_to_the_object_plus_noise(text):
    obj = {"id": "c", "choices": [{"delta": {"content": text}}]}
    raw = sse.obfuscated_frame(obj)
    assert raw.startswith(b"data: ") and raw.endswith(b"\n\n") and b"\n" not in raw[:-2]
    payload = raw[len(b"data: "):-2]
    assert len(payload) % sse.OBFUSCATION_BLOCK == 0
    parsed = json.loads(payload)
    noise = parsed.pop("obfuscation")
    assert parsed == json.loads(dumps(obj)) and len(noise) >= sse.OBFUSCATION_MIN
    assert sse.obfuscated_frame(obj) != raw  # random each time
