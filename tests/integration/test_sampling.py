"""The OpenAI sampling surface per request, inside a shared continuous batch: seeds,
n, logit_bias, presence/frequency penalties, logprobs, stop strings and max_tokens.

Checks compare the service with itself (solo vs under concurrent load, with vs without
a knob); token identities come from the logprobs `bytes` of each generated token, mapped
to ids with the checkpoint's own tokenizer. The trained tiny model ends its turn after a
sentence or two, so requests here pass the `ignore_eos` extension: each knob is seen over
as many tokens as the test asks for.
"""
from __future__ import annotations

import asyncio

import openai
import pytest

from ..conftest import MODEL, TINY_MODEL, chat_create, user_messages

PROMPT = "Write a poem about the sea."
LONG = {"ignore_eos": True}  # extra_body: generate max_tokens tokens past the end of turn


def msgs(text: str = PROMPT) -> list[dict]:
    return user_messages(text)


def create(client, text: str = PROMPT, **kw):
    kw.setdefault("extra_body", LONG)
    return chat_create(client, text, **kw)


def text_of(r, i: int = 0) -> str:
    return r.choices[i].message.content


def token_bytes(r, i: int = 0) -> list[bytes]:
    return [bytes(t.bytes) for t in r.choices[i].logprobs.content]


def logprob_values(r, i: int = 0) -> list[float]:
    return [t.logprob for t in r.choices[i].logprobs.content]


def _byte_level_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE: printable Latin-1 bytes spell themselves, the rest are
    mapped in order onto code points 256, 257, ..."""
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class Vocab:
    """Token id <-> raw bytes of the tiny model's tokenizer."""

    def __init__(self):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(TINY_MODEL))
        decoder = _byte_level_decoder()
        special = set(tok.all_special_ids)
        self.bytes_of: dict[int, bytes] = {}
        for i in range(len(tok)):
            if i in special:  # past the end of turn (ignore_eos) they are listed by their text
                self.bytes_of[i] = tok.decode([i]).encode()
                continue
            piece = tok.convert_ids_to_tokens(i)
            if piece and all(c in decoder for c in piece):
                self.bytes_of[i] = bytes(decoder[c] for c in piece)
        self.id_of = {b: i for i, b in self.bytes_of.items()}
        assert len(self.id_of) == len(self.bytes_of), "token bytes are not unique"
        # Sanity: the mapping agrees with the tokenizer's own decoding.
        sample = tok.encode(" the harbour at night", add_special_tokens=False)
        assert b"".join(self.bytes_of[i] for i in sample) == b" the harbour at night"

    def ids(self, r, i: int = 0) -> list[int]:
        return [self.id_of[b] for b in token_bytes(r, i)]


@pytest.fixture(scope="module")
def vocab():
    return Vocab()


def boundary_stops(r, min_index: int = 2):
    """Stop strings built from a greedy run's tokens that start inside token i and end
    inside a later token, each with the character offset of its first occurrence.
    Yields (stop, offset, tokens_spanned)."""
    bs = token_bytes(r)
    # Only the text before a control token (past the end of turn under ignore_eos), whose
    # logprobs bytes spell it but whose text is not content.
    bs = bs[:next((k for k, b in enumerate(bs) if b.startswith(b"<|") and b.endswith(b"|>")), len(bs))]
    text = b"".join(bs).decode("utf-8", "replace")
    ends, acc = [], b""
    for b in bs:
        acc += b
        ends.append(len(acc.decode("utf-8", "replace")))

    def clean(b):
        return bool(b) and all(32 <= c < 127 for c in b)

    for i in range(min_index, len(bs) - 2):
        if not (clean(bs[i]) and len(bs[i]) >= 2 and clean(bs[i + 1])):
            continue
        # Two tokens: last 2 chars of token i + first char of token i+1.
        two = bs[i].decode()[-2:] + bs[i + 1].decode()[:1]
        if text.find(two) == ends[i] - 2:
            yield two, ends[i] - 2, 2
        # Three tokens: last char of i, all of i+1, first char of i+2.
        if clean(bs[i + 2]):
            three = bs[i].decode()[-1:] + bs[i + 1].decode() + bs[i + 2].decode()[:1]
            if text.find(three) == ends[i] - 1:
                yield three, ends[i] - 1, 3


# --- seeds and n -----------------------------------------------------------------------

OTHER_PROMPTS = [
    "Tell me about the harbour.", "Count to ten.", "List some fruits.", "What is the weather like?",
    "Describe a lighthouse.", "Name three colours.", "Explain tides.", "Who built the bridge?",
]


def _others() -> list[dict]:
    """16 requests that differ from the probe and from each other in every knob."""
    out = []
    for i in range(16):
        kw: dict = {"messages": msgs(OTHER_PROMPTS[i % len(OTHER_PROMPTS)] + f" #{i}"),
                    "max_tokens": 20 + (i % 4) * 8, "extra_body": LONG}
        kw["temperature"] = (0.0, 0.7, 1.0, 1.3)[i % 4]
        if i % 3 == 0:
            kw["seed"] = 1000 + i
        if i % 5 == 1:
            kw["frequency_penalty"] = 1.5
        if i % 5 == 2:
            kw["presence_penalty"] = -1.0
        if i % 4 == 3:
            kw["top_p"] = 0.5
        if i % 6 == 4:
            kw["logit_bias"] = {"300": 5.0}
        if i % 7 == 5:
            kw["n"] = 2
        if i % 2:
            kw["logprobs"] = True
            kw["top_logprobs"] = i % 6
        out.append(kw)
    return out


def test_seed_reproducible_under_concurrent_load(client, aclient):
    probe = dict(messages=msgs(), temperature=1.0, seed=424242, max_tokens=24, extra_body=LONG)
    alone = client.chat.completions.create(model=MODEL, **probe)
    assert alone.choices[0].finish_reason == "length"

    async def main():
        async with aclient:
            others = [aclient.chat.completions.create(model=MODEL, **kw) for kw in _others()]
            # The probe starts in the middle of the others, so it shares their batch.
            tasks = others[:8] + [aclient.chat.completions.create(model=MODEL, **probe)] + others[8:]
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    loaded = results[8]
    assert text_of(loaded) == text_of(alone)
    assert loaded.usage.completion_tokens == alone.usage.completion_tokens == 24
    others = results[:8] + results[9:]
    assert all(c.finish_reason in ("length", "stop") for r in others for c in r.choices)
    for kw, r in zip(_others(), others):
        assert len(r.choices) == kw.get("n", 1)
        for c in r.choices:
            if kw.get("logprobs"):  # each request gets its own number of alternatives
                assert {len(t.top_logprobs) for t in c.logprobs.content} == {kw["top_logprobs"]}
            else:
                assert c.logprobs is None


@pytest.mark.parametrize("other", [424242 - 2**63, 424242 + 2**32])
def test_seeds_differing_only_in_high_bits_give_distinct_streams(client, other):
    kw = dict(temperature=1.0, max_tokens=16)
    assert text_of(create(client, seed=other, **kw)) == text_of(create(client, seed=other, **kw))
    assert text_of(create(client, seed=other, **kw)) != text_of(create(client, seed=424242, **kw))


def test_every_sampling_knob_is_per_request_inside_a_shared_batch(client, aclient, vocab):
    """Requests with different knobs give, when batched together, exactly what each gives
    alone: no knob leaks to batch neighbours."""
    first = vocab.ids(create(client, max_tokens=1, logprobs=True))[0]
    variants = [
        dict(temperature=0),
        dict(temperature=0, frequency_penalty=2.0),
        dict(temperature=0, presence_penalty=-2.0),
        dict(temperature=0, logit_bias={str(first): -100}),
        dict(temperature=1.0, seed=5),
        dict(temperature=0.8, top_p=0.3, seed=5),
        dict(temperature=1.0, seed=6, n=2),
        dict(temperature=0, stop=["e"]),
    ]
    for v in variants:
        v.setdefault("max_tokens", 20)
        v["logprobs"] = True
    alone = [create(client, **v) for v in variants]

    async def main():
        async with aclient:
            return await asyncio.gather(*(
                aclient.chat.completions.create(model=MODEL, messages=msgs(), extra_body=LONG, **v)
                for v in variants))

    batched = asyncio.run(main())
    for v, a, b in zip(variants, alone, batched):
        assert [text_of(b, i) for i in range(len(b.choices))] == [text_of(a, i) for i in range(len(a.choices))], v
        assert [vocab.ids(b, i) for i in range(len(b.choices))] == [vocab.ids(a, i) for i in range(len(a.choices))]
        assert logprob_values(b) == pytest.approx(logprob_values(a), abs=1e-3), v
    # And the knobs did something: every variant's tokens or distribution differ from plain greedy.
    plain = (vocab.ids(alone[0]), logprob_values(alone[0]))
    for v, a in zip(variants[1:], alone[1:]):
        ids, lps = vocab.ids(a), logprob_values(a)
        assert ids != plain[0] or lps != pytest.approx(plain[1], abs=1e-3), v


def test_n_choices_are_distinct_at_temperature(client):
    r = create(client, n=4, temperature=1.0, max_tokens=16)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert all(c.finish_reason == "length" for c in r.choices)
    assert len({text_of(r, i) for i in range(4)}) >= 2
    assert r.usage.completion_tokens == 4 * 16


def test_n_choices_with_a_seed_are_reproducible(client):
    a = create(client, n=3, temperature=1.0, seed=77, max_tokens=12)
    b = create(client, n=3, temperature=1.0, seed=77, max_tokens=12)
    texts = [text_of(a, i) for i in range(3)]
    assert texts == [text_of(b, i) for i in range(3)]
    assert len(set(texts)) >= 2  # one seed, but each choice draws its own tokens


def test_n_choices_at_temperature_zero_are_identical(client):
    r = create(client, n=3, max_tokens=10)
    assert len({text_of(r, i) for i in range(3)}) == 1
    assert text_of(r) == text_of(create(client, max_tokens=10))


# --- logit_bias ------------------------------------------------------------------------

def test_logit_bias_minus_100_bans_the_greedy_token(client, vocab):
    base = create(client, max_tokens=16, logprobs=True, top_logprobs=5)
    banned = vocab.ids(base)[0]
    r = create(client, max_tokens=16, logprobs=True, top_logprobs=5, logit_bias={str(banned): -100})
    ids = vocab.ids(r)
    assert banned not in ids
    assert ids[0] != banned
    # The runner-up of the unbiased distribution takes its place.
    runner_up = bytes(base.choices[0].logprobs.content[0].top_logprobs[1].bytes)
    assert ids[0] == vocab.id_of[runner_up]
    # Also banned when it would come later in the text, and under sampling.
    later = vocab.ids(base)[5]
    r = create(client, max_tokens=16, logprobs=True, logit_bias={str(later): -100})
    assert later not in vocab.ids(r)
    if later not in vocab.ids(base)[:5]:  # the text before it is untouched
        assert vocab.ids(r)[:5] == vocab.ids(base)[:5]
    r = create(client, max_tokens=16, temperature=1.0, seed=3, logprobs=True, logit_bias={str(banned): -100})
    assert banned not in vocab.ids(r)


def test_logit_bias_plus_100_forces_one_token(client, vocab):
    base = create(client, max_tokens=8, logprobs=True)
    forced = next(i for i in sorted(vocab.bytes_of)
                  if i > 1000 and vocab.bytes_of[i][:1] == b" " and vocab.bytes_of[i][1:].isalpha()
                  and len(vocab.bytes_of[i]) >= 4 and i not in vocab.ids(base))
    piece = vocab.bytes_of[forced].decode()
    r = create(client, max_tokens=8, temperature=1.0, seed=9, logprobs=True, logit_bias={str(forced): 100})
    assert vocab.ids(r) == [forced] * 8
    assert text_of(r) == piece * 8
    assert all(t.logprob > -1e-3 for t in r.choices[0].logprobs.content)


def test_logit_bias_out_of_vocabulary_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=2, logit_bias={"999999": 5})
    assert ei.value.param == "logit_bias"


# --- penalties -------------------------------------------------------------------------

PENALTY_PROMPTS = [PROMPT, "Count to ten.", "List some fruits.", "Tell me about the harbour."]


@pytest.fixture(scope="module")
def repetitive(client, vocab):
    """A prompt whose 40-token greedy output repeats at least one token, and its ids."""
    for p in PENALTY_PROMPTS:
        ids = vocab.ids(create(client, p, max_tokens=40, logprobs=True))
        if len(set(ids)) < len(ids):
            return p, ids
    raise AssertionError("no greedy output with a repeated token among the candidate prompts")


def first_change(ids: list[int], base: list[int]) -> int:
    """Where the penalized greedy text first differs from the unpenalized one."""
    d = next((i for i, (a, b) in enumerate(zip(ids, base)) if a != b), None)
    assert d is not None, "the penalty changed nothing"
    return d


# A penalty moves only the tokens the completion already holds (by the same amount for
# presence, in proportion to their count for frequency), so greedy text is unchanged up to
# the first step where that reorders the leader, and there the properties below hold
# whatever the weights (the margins between a trained model's logits vary by build).

@pytest.mark.parametrize("knob", ["frequency_penalty", "presence_penalty"])
def test_positive_penalty_reduces_repeats(client, vocab, repetitive, knob):
    prompt, base = repetitive
    ids = vocab.ids(create(client, prompt, max_tokens=40, logprobs=True, **{knob: 2.0}))
    assert len(ids) == 40
    d = first_change(ids, base)
    assert base[d] in base[:d]  # the unpenalized text repeated a token there...
    if knob == "presence_penalty":  # ...and the penalized one takes a token it has not used
        assert ids[d] not in ids[:d]
    else:  # ...and the penalized one takes a token it has used fewer times
        assert ids[:d].count(ids[d]) < base[:d].count(base[d])


@pytest.mark.parametrize("knob", ["frequency_penalty", "presence_penalty"])
def test_negative_penalty_increases_repeats(client, vocab, repetitive, knob):
    prompt, base = repetitive
    ids = vocab.ids(create(client, prompt, max_tokens=40, logprobs=True, **{knob: -2.0}))
    d = first_change(ids, base)
    assert ids[d] in ids[:d]  # the penalized text repeats a token there...
    if knob == "presence_penalty":  # ...where the unpenalized one took a new token
        assert base[d] not in base[:d]
    else:  # ...one it has used more times than the unpenalized one's choice
        assert ids[:d].count(ids[d]) > base[:d].count(base[d])


def test_penalty_out_of_range_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=2, frequency_penalty=2.5)
    assert ei.value.param == "frequency_penalty"


# --- logprobs --------------------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 5, 20])
def test_top_logprobs_count_is_honoured(client, k):
    r = create(client, max_tokens=6, logprobs=True, top_logprobs=k)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == k
        values = [x.logprob for x in t.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert len({bytes(x.bytes) for x in t.top_logprobs}) == k  # distinct alternatives
        if k:
            assert t.token == t.top_logprobs[0].token
            assert t.logprob == pytest.approx(t.top_logprobs[0].logprob, abs=1e-6)


def test_logprobs_without_top_logprobs(client):
    r = create(client, max_tokens=4, logprobs=True)
    assert [t.top_logprobs for t in r.choices[0].logprobs.content] == [[]] * 4


def test_sampled_logprobs_are_consistent_with_alternatives(client):
    """At temperature 1 the chosen token need not be the most likely one, but its logprob
    never exceeds the top alternative, and it matches its own entry when listed."""
    r = create(client, max_tokens=24, temperature=1.0, seed=21, logprobs=True, top_logprobs=20)
    content = r.choices[0].logprobs.content
    not_top = 0
    for t in content:
        assert t.logprob <= t.top_logprobs[0].logprob + 1e-6
        listed = [x for x in t.top_logprobs if x.bytes == t.bytes]
        if listed:
            assert t.logprob == pytest.approx(listed[0].logprob, abs=1e-6)
        not_top += t.bytes != t.top_logprobs[0].bytes
    assert not_top > 0  # sampling really sampled (24 draws from a flat random model)


def test_top_logprobs_above_20_is_bad_request(client):
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=2, logprobs=True, top_logprobs=21)
    assert ei.value.param == "top_logprobs"


# --- stop strings ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def greedy40(client):
    r = create(client, max_tokens=40, logprobs=True)
    assert r.choices[0].finish_reason == "length"
    return r


def test_stop_strings_spanning_token_boundaries(client, greedy40):
    text = text_of(greedy40)
    found = {}
    for stop, at, span in boundary_stops(greedy40):
        found.setdefault(span, (stop, at))
    assert 2 in found, "no two-token stop string could be built"
    for span, (stop, at) in sorted(found.items()):
        r = create(client, max_tokens=40, stop=[stop])
        assert text_of(r) == text[:at], (span, stop)
        assert r.choices[0].finish_reason == "stop"
        chunks = list(create(client, max_tokens=40, stop=[stop], stream=True))
        assert "".join(c.delta.content or "" for ch in chunks for c in ch.choices) == text[:at]
        assert [c.finish_reason for ch in chunks for c in ch.choices if c.finish_reason] == ["stop"]


def test_stop_string_per_choice_with_n(client):
    """Each choice of a seeded n=2 request stops at the stop's first occurrence in its own text."""
    ref = create(client, n=2, temperature=1.0, seed=31, max_tokens=24)
    texts = [text_of(ref, i) for i in range(2)]
    stop = next(texts[0][k:k + 3] for k in range(6, len(texts[0]) - 3)
                if "\ufffd" not in texts[0][k:k + 3] and texts[0][k:k + 3].strip())
    r = create(client, n=2, temperature=1.0, seed=31, max_tokens=24, stop=[stop])
    for i, t in enumerate(texts):
        if stop in t:
            assert text_of(r, i) == t[:t.index(stop)] and r.choices[i].finish_reason == "stop"
        else:
            assert text_of(r, i) == t and r.choices[i].finish_reason == "length"


# --- max_tokens defaults and the context limit ----------------------------------------

def test_default_max_tokens_with_an_early_stop(client, greedy40):
    text = text_of(greedy40)
    stop, at, _ = next(boundary_stops(greedy40))
    r = client.chat.completions.create(model=MODEL, messages=msgs(), temperature=0, stop=[stop], extra_body=LONG)
    assert r.choices[0].finish_reason == "stop"
    assert text_of(r) == text[:at]
    assert r.usage.completion_tokens < 40


def test_max_tokens_filling_the_context_exactly_is_accepted(client, greedy40):
    stop, at, _ = next(boundary_stops(greedy40))
    room = 2048 - greedy40.usage.prompt_tokens
    r = create(client, max_tokens=room, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and text_of(r) == text_of(greedy40)[:at]


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_plus_max_tokens_above_context_is_bad_request(client, greedy40, stream):
    room = 2048 - greedy40.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as ei:
        create(client, max_tokens=room + 1, stream=stream)
    err = ei.value
    assert err.status_code == 400
    assert err.code == "context_length_exceeded"
    assert err.param == "max_tokens"
    assert "2048" in err.message
