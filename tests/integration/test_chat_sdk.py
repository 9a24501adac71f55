"""POST /v1/chat/completions through the official openai SDK (sync and async, no retries).

The tiny model's text is deterministic at temperature 0, so every check compares the
service with itself: streamed vs non-streamed, stopped vs unstopped, concurrent vs
sequential.
"""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from ..conftest import MODEL, TINY_MODEL, chat_create, user_messages

PROMPT = "Tell me about the harbour."


def msgs(text: str = PROMPT) -> list[dict]:
    return user_messages(text)


def create(client, text: str = PROMPT, **kw):
    return chat_create(client, text, **kw)


def stream(client, text: str = PROMPT, **kw) -> list:
    """All chunks of a streamed request (the SDK stops at `data: [DONE]`)."""
    return list(create(client, text, stream=True, **kw))


def streamed_text(chunks, index: int = 0) -> str:
    return "".join(c.delta.content or "" for ch in chunks for c in ch.choices if c.index == index)


def usage_tuple(u) -> tuple[int, int, int]:
    return (u.prompt_tokens, u.completion_tokens, u.total_tokens)


def token_bytes(content) -> list[bytes]:
    return [bytes(t.bytes) for t in content]


def token_text_offsets(content) -> list[int]:
    """End offset (in characters of the decoded text) of each token; valid where the
    bytes up to that token end on a character boundary."""
    out, acc = [], b""
    for b in token_bytes(content):
        acc += b
        out.append(len(acc.decode("utf-8", "replace")))
    return out


def is_clean_ascii(b: bytes) -> bool:
    return bool(b) and all(32 <= c < 127 for c in b)


def boundary_stop(content, start: int = 3) -> tuple[str, int]:
    """A stop string made of the last 2 characters of token i and the first 2 of token
    i+1 (both printable ASCII, i >= start) whose first occurrence in the text is exactly
    there. Returns (stop, character offset where it starts)."""
    bs = token_bytes(content)
    text = b"".join(bs).decode("utf-8", "replace")
    ends = token_text_offsets(content)
    for i in range(start, len(bs) - 1):
        a, b = bs[i], bs[i + 1]
        if not (is_clean_ascii(a) and is_clean_ascii(b) and len(a) >= 2):
            continue
        stop = a.decode()[-2:] + b.decode()[:2]
        at = ends[i] - 2
        if text.find(stop) == at and stop.strip() == stop:
            return stop, at
    raise AssertionError(f"no usable token boundary in {[t.token for t in content]!r}")


@pytest.fixture(scope="module")
def baseline(client):
    """Greedy reference reply with per-token logprobs (up to 30 tokens; the model usually
    ends its turn before)."""
    r = create(client, max_tokens=30, logprobs=True, top_logprobs=2)
    assert len(r.choices[0].logprobs.content) >= 12
    return r


def test_a_reply_ending_its_turn_counts_the_end_token_but_does_not_show_it(baseline):
    """The end-of-turn token counts in completion_tokens (as vLLM counts it) but is no
    content: neither its text nor a logprobs entry (as OpenAI lists content tokens)."""
    c = baseline.choices[0]
    assert c.finish_reason == "stop", "the trained model should end this reply by itself"
    assert baseline.usage.completion_tokens == len(c.logprobs.content) + 1
    assert b"".join(token_bytes(c.logprobs.content)).decode() == c.message.content
    assert "<|im_end|>" not in c.message.content


# --- non-streaming ---------------------------------------------------------------------

def test_non_streaming_completion_shape(client):
    r = create(client, max_tokens=8)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-") and len(r.id) > len("chatcmpl-")
    assert r.model == MODEL
    assert isinstance(r.created, int) and r.created > 0
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.message.tool_calls is None
    assert choice.logprobs is None  # not requested
    assert choice.finish_reason == "length"
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens == 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_ids_are_unique_per_request(client):
    assert create(client, max_tokens=1).id != create(client, max_tokens=1).id


# --- streaming -------------------------------------------------------------------------

def test_streaming_chunks_carry_running_usage(client):
    full = create(client, max_tokens=10)
    chunks = stream(client, max_tokens=10)
    assert len(chunks) >= 3
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(ch.model == MODEL for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishing = [ch for ch in chunks if any(c.finish_reason for c in ch.choices)]
    assert len(finishing) == 1 and finishing[0] is chunks[-1]
    assert finishing[0].choices[0].finish_reason == "length"
    # Scaleway behaviour: running usage on every chunk.
    assert all(ch.usage is not None for ch in chunks)
    completions = [ch.usage.completion_tokens for ch in chunks]
    assert completions == sorted(completions)
    assert {ch.usage.prompt_tokens for ch in chunks} == {full.usage.prompt_tokens}
    assert all(ch.usage.total_tokens == ch.usage.prompt_tokens + ch.usage.completion_tokens for ch in chunks)
    assert usage_tuple(chunks[-1].usage) == usage_tuple(full.usage)
    assert streamed_text(chunks) == full.choices[0].message.content


def test_streaming_include_usage_sends_one_final_usage_chunk(client):
    full = create(client, max_tokens=10)
    chunks = stream(client, max_tokens=10, stream_options={"include_usage": True})
    *body, last = chunks
    assert all(ch.usage is None for ch in body)
    assert last.choices == [] and last.usage is not None
    assert usage_tuple(last.usage) == usage_tuple(full.usage)
    finishing = [ch for ch in body if any(c.finish_reason for c in ch.choices)]
    assert len(finishing) == 1 and finishing[0] is body[-1]
    assert body[0].choices[0].delta.role == "assistant"
    assert streamed_text(chunks) == full.choices[0].message.content


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0, "seed": 1234}],
                         ids=["greedy", "seeded"])
def test_streamed_text_and_usage_equal_non_streamed(client, sampling):
    full = create(client, max_tokens=24, **sampling)
    chunks = stream(client, max_tokens=24, **sampling)
    assert streamed_text(chunks) == full.choices[0].message.content
    assert usage_tuple(chunks[-1].usage) == usage_tuple(full.usage)
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def _raw_stream_payloads(service, **body) -> list[bytes]:
    body = {"model": MODEL, "messages": msgs(), "max_tokens": 6, "temperature": 0, "stream": True, **body}
    with httpx.stream("POST", f"{service.base_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        return [line[len(b"data: "):] for line in r.iter_bytes() for line in line.split(b"\n\n")
                if line.startswith(b"data: {")]


def test_stream_obfuscation_pads_every_chunk_to_a_block_unless_turned_off(service):
    """OpenAI's stream_options.include_obfuscation (default on): chunk sizes do not tell the
    length of their text."""
    default = _raw_stream_payloads(service)
    assert len(default) >= 3
    assert all(len(p) % 64 == 0 and len(json.loads(p)["obfuscation"]) >= 16 for p in default)
    plain = _raw_stream_payloads(service, stream_options={"include_obfuscation": False})
    assert [json.loads(p).get("obfuscation") for p in plain] == [None] * len(plain)
    strip = [{k: v for k, v in json.loads(p).items() if k not in ("obfuscation", "id", "created")} for p in default]
    assert strip == [{k: v for k, v in json.loads(p).items() if k not in ("id", "created")} for p in plain]


# --- stop strings ----------------------------------------------------------------------

def test_stop_string_across_token_boundary(client, baseline):
    text = baseline.choices[0].message.content
    stop, at = boundary_stop(baseline.choices[0].logprobs.content)
    assert text.find(stop) == at  # the reference text and its token bytes agree
    r = create(client, max_tokens=30, stop=[stop])
    out = r.choices[0].message.content
    assert out == text[:at]
    assert stop not in out
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < baseline.usage.completion_tokens


def test_stop_string_across_token_boundary_streaming(client, baseline):
    text = baseline.choices[0].message.content
    stop, at = boundary_stop(baseline.choices[0].logprobs.content)
    chunks = stream(client, max_tokens=30, stop=stop)  # a bare string works too
    out = streamed_text(chunks)
    assert out == text[:at] and stop not in out
    finishing = [c for ch in chunks for c in ch.choices if c.finish_reason]
    assert [c.finish_reason for c in finishing] == ["stop"]


def test_stop_list_of_four_earliest_match_wins(client, baseline):
    text = baseline.choices[0].message.content
    content = baseline.choices[0].logprobs.content
    early, early_at = boundary_stop(content, start=3)
    late, late_at = boundary_stop(content, start=len(content) // 2)
    assert early_at < late_at
    stops = ["\u2603never\u2603", late, "qzqzqzqz", early]
    r = create(client, max_tokens=30, stop=stops)
    assert r.choices[0].message.content == text[:early_at]
    assert r.choices[0].finish_reason == "stop"
    chunks = stream(client, max_tokens=30, stop=stops)
    assert streamed_text(chunks) == text[:early_at]


def test_more_than_four_stop_strings_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=2, stop=["a1", "b2", "c3", "d4", "e5"])
    assert ei.value.param == "stop"


# --- max_tokens ------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_ends_with_length(client, key):
    r = client.chat.completions.create(model=MODEL, messages=msgs(), temperature=0, logprobs=True, **{key: 5})
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert len(r.choices[0].logprobs.content) == 5


def test_max_tokens_and_max_completion_tokens_must_agree(client):
    r = create(client, max_tokens=4, max_completion_tokens=4)
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=9, max_completion_tokens=4)
    assert ei.value.param in ("max_tokens", "max_completion_tokens")


# --- seeds -----------------------------------------------------------------------------

def test_seed_reproducibility_at_temperature_one(client):
    def run(seed):
        return create(client, temperature=1.0, seed=seed, max_tokens=24).choices[0].message.content

    first = run(7)
    assert run(7) == first
    assert run(8) != first  # 24 tokens at temperature 1: a collision is practically impossible


# --- models ----------------------------------------------------------------------------

def test_models_list_and_retrieve(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert all(m.object == "model" for m in models.data)
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL and m.object == "model" and m.owned_by
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    assert ei.value.status_code == 404


# --- async client ----------------------------------------------------------------------

def test_async_concurrent_requests_match_sequential(client, aclient):
    prompts = ["Tell me about the harbour.", "Count to ten.", "Write a poem about the sea.",
               "List some fruits.", "What is the weather like?"]
    def outcome(r) -> tuple:  # the trained model may end its turn before 12 tokens: compare, don't assume
        return r.choices[0].message.content, r.choices[0].finish_reason, r.usage.completion_tokens
    sequential = [outcome(create(client, p, max_tokens=12)) for p in prompts]

    async def main():
        async with aclient:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model=MODEL, messages=msgs(p), temperature=0, max_tokens=12)
                for p in prompts))

    results = asyncio.run(main())
    assert [outcome(r) for r in results] == sequential
    assert all(0 < tokens <= 12 and (reason == "length") == (tokens == 12) for _, reason, tokens in sequential)


def test_async_streaming(client, aclient):
    full = create(client, max_tokens=8)

    async def main():
        async with aclient:
            s = await aclient.chat.completions.create(model=MODEL, messages=msgs(), temperature=0,
                                                      max_tokens=8, stream=True)
            return [ch async for ch in s]

    chunks = asyncio.run(main())
    assert streamed_text(chunks) == full.choices[0].message.content
    assert usage_tuple(chunks[-1].usage) == usage_tuple(full.usage)


# --- request ids -----------------------------------------------------------------------

def test_response_has_request_id_header(client):
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=msgs(), max_tokens=2)
    assert raw.headers.get("x-request-id")
    assert raw.parse().object == "chat.completion"
    other = client.chat.completions.with_raw_response.create(model=MODEL, messages=msgs(), max_tokens=2)
    assert other.headers["x-request-id"] != raw.headers["x-request-id"]


def test_client_request_id_is_echoed(client):
    rid = "test-chat-sdk-0123456789"
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs(), max_tokens=2, extra_headers={"x-request-id": rid})
    assert raw.headers["x-request-id"] == rid
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=msgs(), max_tokens=2, stream=True, extra_headers={"x-request-id": rid})
    assert raw.headers["x-request-id"] == rid
    assert streamed_text(list(raw.parse()))


def test_error_response_has_request_id(client):
    rid = "test-chat-sdk-error"
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model", messages=msgs(), max_tokens=2,
                                       extra_headers={"x-request-id": rid})
    assert ei.value.response.headers["x-request-id"] == rid
    assert ei.value.code == "model_not_found"
    assert f"Available chat models: `{MODEL}`." in ei.value.message  # what the caller could ask for instead
    with pytest.raises(openai.NotFoundError) as ei:
        client.models.retrieve("no-such-model")
    assert f"Available models: `{MODEL}`." in ei.value.message


# --- n choices -------------------------------------------------------------------------

def test_n_two_non_streaming(client):
    r = create(client, n=2, temperature=1.0, seed=11, max_tokens=6)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert all(isinstance(c.message.content, str) and c.message.content for c in r.choices)
    assert r.usage.completion_tokens == 12  # both choices count
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_n_two_streaming_matches_non_streaming(client):
    full = create(client, n=2, temperature=1.0, seed=11, max_tokens=6)
    chunks = stream(client, n=2, temperature=1.0, seed=11, max_tokens=6)
    for i in (0, 1):
        roles = [c for ch in chunks for c in ch.choices if c.index == i and c.delta.role]
        assert [c.delta.role for c in roles] == ["assistant"]
        finishes = [c.finish_reason for ch in chunks for c in ch.choices if c.index == i and c.finish_reason]
        assert finishes == ["length"]
        assert streamed_text(chunks, i) == full.choices[i].message.content
    assert {c.index for ch in chunks for c in ch.choices} == {0, 1}
    assert usage_tuple(chunks[-1].usage) == usage_tuple(full.usage)


# --- logprobs --------------------------------------------------------------------------

def check_logprobs(content, text: str, k: int, greedy: bool = True) -> None:
    assert content, "no logprobs returned"
    for t in content:
        assert isinstance(t.token, str)
        assert t.logprob <= 0
        assert isinstance(t.bytes, list) and all(isinstance(b, int) and 0 <= b < 256 for b in t.bytes)
        assert len(t.top_logprobs) == k
        values = [x.logprob for x in t.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert all(v <= 0 for v in values)
        if greedy and k:
            assert t.token == t.top_logprobs[0].token
            assert t.bytes == t.top_logprobs[0].bytes
            assert t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-6)
    assert b"".join(token_bytes(content)).decode("utf-8", "replace") == text


def test_logprobs_non_streaming(client):
    r = create(client, max_tokens=12, logprobs=True, top_logprobs=3)
    c = r.choices[0]
    assert len(c.logprobs.content) == 12 == r.usage.completion_tokens
    check_logprobs(c.logprobs.content, c.message.content, 3)


def test_logprobs_streaming(client):
    full = create(client, max_tokens=12, logprobs=True, top_logprobs=3)
    chunks = stream(client, max_tokens=12, logprobs=True, top_logprobs=3)
    content = [t for ch in chunks for c in ch.choices if c.logprobs for t in (c.logprobs.content or [])]
    text = streamed_text(chunks)
    check_logprobs(content, text, 3)
    assert [t.model_dump() for t in content] == [t.model_dump() for t in full.choices[0].logprobs.content]


def test_logprob_bytes_cover_text_when_output_ends_mid_character(client):
    """A completion cut by max_tokens right after a token that is not a complete UTF-8
    character must still account for that token in its text (as U+FFFD, as the same
    byte does mid-text), so the bytes of the returned tokens decode to the content. The
    trained model writes whole characters, so logit_bias forces the lead byte of a
    two-byte character (0xC3, spelled "\u00c3" by byte-level BPE) at every step: +100 on
    it and -100 on every other token, since +100 alone does not lift a byte the corpus
    never holds above the model's choice (a build's weights put it 108 below)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    lead = tokenizer.convert_tokens_to_ids("\u00c3")
    kw = dict(max_tokens=2, logit_bias={str(t): 100 if t == lead else -100 for t in range(len(tokenizer))})
    r = create(client, logprobs=True, **kw)
    assert token_bytes(r.choices[0].logprobs.content) == [b"\xc3", b"\xc3"]
    assert r.choices[0].message.content == "\ufffd\ufffd" == b"\xc3\xc3".decode("utf-8", "replace")
    assert r.choices[0].finish_reason == "length"
    assert streamed_text(stream(client, **kw)) == "\ufffd\ufffd"
