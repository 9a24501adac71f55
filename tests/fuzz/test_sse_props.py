"""S3: SSE framing of arbitrary token text, property-based (hypothesis).

Token texts holding `\\n\\n`, `data:`, `\\r`, `[DONE]`, NULs, separators, astral and
non-ASCII characters go through the real chunk builder and framing; the bytes are cut
at arbitrary points (as the network would) and parsed with openai-python's own
SSEDecoder: every event is one JSON chunk (or the final [DONE]), the deltas of each
choice concatenate to exactly the non-streaming message, and the running usage and
finish reasons agree with it.
"""
from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from genapi.v1 import common_pb2, content_pb2
from genapi.v1 import generation_service_pb2 as pb
from shim import sse
from shim.errors import APIError
from shim.streaming import error_frames
from shim.translate.chat import ChatChunkBuilder, build_chat_completion

CI = settings(max_examples=150, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NASTY = st.sampled_from(["\n\n", "data: [DONE]\n\n", "\r", "\r\n", "data:", ": keep-alive", "[DONE]", "\x00",
                         "\u2028", "\u0085", "\ufeff", "😀", "é", "\\", '"', "}\n\ndata: {"])
TOKEN = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12), NASTY)


@st.composite
def generations(draw):
    """(n, logprobs, include_usage, events): a Generate event stream as the core sends it."""
    n = draw(st.integers(1, 3))
    logprobs = draw(st.booleans())
    deltas = draw(st.lists(st.tuples(st.integers(0, n - 1), TOKEN), max_size=30))
    events = [pb.GenerateResponse(usage=common_pb2.Usage(prompt_tokens=5, total_tokens=5), started=pb.Started())]
    done = 0
    for i, (choice, text) in enumerate(deltas, 1):
        lp = [pb.TokenLogprob(token=text, logprob=-0.5, bytes=text.encode())] if logprobs else []
        events.append(pb.GenerateResponse(choice_index=choice, text=pb.TextDelta(text=text, logprobs=lp),
                                          usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=i,
                                                                 total_tokens=5 + i)))
        done = i
    for choice in range(n):
        reason = draw(st.sampled_from([content_pb2.FINISH_REASON_STOP, content_pb2.FINISH_REASON_LENGTH]))
        events.append(pb.GenerateResponse(choice_index=choice, finished=pb.Finished(reason=reason),
                                          usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=done,
                                                                 total_tokens=5 + done)))
    return n, logprobs, draw(st.booleans()), events


def split(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    return [raw[a:b] for a, b in zip(points, points[1:])]


@CI
@given(generations(), st.lists(st.integers(0, 10**6), max_size=20), st.lists(st.integers(0, 40), max_size=3))
def test_frames_of_arbitrary_text_parse_and_concatenate_to_the_completion(gen, cuts, keepalives):
    n, logprobs, include_usage, events = gen
    builder = ChatChunkBuilder(model="m", n=n, logprobs=logprobs, include_usage=include_usage,
                               completion_id="chatcmpl-1", created=1)
    pieces = [sse.frames(builder.on_event(ev)) for ev in events]
    for k in keepalives:  # keep-alive comments between frames
        pieces.insert(min(k, len(pieces)), sse.KEEPALIVE)
    raw = b"".join(pieces) + sse.frames(builder.finish()) + sse.DONE
    raw.decode("utf-8")  # always valid UTF-8

    decoded = list(SSEDecoder().iter_bytes(iter(split(raw, cuts))))
    assert decoded[-1].data == "[DONE]" and all(e.data != "[DONE]" for e in decoded[:-1])
    chunks = [json.loads(e.data) for e in decoded[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and "error" not in c for c in chunks)

    completion = build_chat_completion(events, model="m", n=n, logprobs=logprobs)
    for choice in completion["choices"]:
        i = choice["index"]
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert "".join(c["delta"].get("content") or "" for c in mine) == choice["message"]["content"]
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == [choice["finish_reason"]]
        assert mine[0]["delta"]["role"] == "assistant"
        if logprobs:
            streamed = [lp for c in mine if c["logprobs"] for lp in c["logprobs"]["content"]]
            assert streamed == choice["logprobs"]["content"]
    usage = chunks[-1]["usage"]
    assert usage == completion["usage"]
    if include_usage:
        assert chunks[-1]["choices"] == [] and all(c["usage"] is None for c in chunks[:-1])


@CI
@given(st.text(st.characters(blacklist_categories=("Cs",))), st.lists(st.integers(0, 10**4), max_size=8))
def test_an_error_frame_of_arbitrary_text_parses(message, cuts):
    raw = error_frames(APIError(500, message, "server_error"))
    decoded = list(SSEDecoder().iter_bytes(iter(split(raw, cuts))))
    assert [e.data for e in decoded][-1] == "[DONE]"
    assert json.loads(decoded[0].data) == {"error": {"message": message, "type": "server_error", "param": None,
                                                     "code": None}}
