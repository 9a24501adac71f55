"""Hypothesis strategies: valid OpenAI chat requests over every field genapi supports,
and the same with one refused (unsupported) feature added."""
from __future__ import annotations

from hypothesis import strategies as st

from genapi.untrusted import MAX_ID_CHARS, MAX_STOP_CHARS

# Any Unicode scalar value but lone surrogates (JSON from a client cannot carry them as
# valid UTF-8; the shim refuses them separately).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
NON_EMPTY = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
ID = st.one_of(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24),
               st.text(alphabet="ab", min_size=MAX_ID_CHARS, max_size=MAX_ID_CHARS))  # at the bound
INT64 = st.integers(-(2**63), 2**63 - 1)


def _maybe(strategy):
    """Absent, null (= not set) or a value."""
    return st.one_of(st.just(...), st.none(), strategy)


def _content(part_type: str = "text"):
    parts = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}), min_size=1, max_size=3)
    return st.one_of(TEXT, parts)


@st.composite
def messages(draw):
    out = []
    for _ in range(draw(st.integers(1, 5))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool"]))
        msg: dict = {"role": role}
        if role == "assistant":
            kind = draw(st.sampled_from(["text", "parts-with-refusal", "tool_calls", "none"]))
            if kind == "text":
                msg["content"] = draw(TEXT)
            elif kind == "parts-with-refusal":
                msg["content"] = draw(st.lists(st.one_of(
                    st.fixed_dictionaries({"type": st.just("text"), "text": TEXT}),
                    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": TEXT})), min_size=1, max_size=3))
            elif kind == "tool_calls":
                msg["content"] = None
                msg["tool_calls"] = draw(st.lists(st.fixed_dictionaries({
                    "id": ID, "type": st.just("function"),
                    "function": st.fixed_dictionaries({"name": ID, "arguments": TEXT})}), min_size=1, max_size=2))
        else:
            msg["content"] = draw(_content())
        if role == "tool":
            msg["tool_call_id"] = draw(ID)
        elif draw(st.booleans()):
            msg["name"] = draw(ID)
        out.append(msg)
    return out


def _set(body: dict, key: str, value) -> None:
    if value is not ...:
        body[key] = value


@st.composite
def chat_requests(draw):
    """A request genapi's shim must accept (every implemented and ignored field)."""
    body: dict = {"model": draw(ID), "messages": draw(messages())}
    _set(body, "temperature", draw(_maybe(st.floats(0, 2))))
    _set(body, "top_p", draw(_maybe(st.floats(0, 1, exclude_min=True))))
    for key in ("presence_penalty", "frequency_penalty"):
        _set(body, key, draw(_maybe(st.one_of(st.floats(-2, 2), st.integers(-2, 2)))))
    _set(body, "seed", draw(_maybe(INT64)))
    _set(body, "logit_bias", draw(_maybe(st.dictionaries(
        st.integers(0, 2**31 - 1).map(str), st.one_of(st.integers(-100, 100), st.floats(-100, 100)), max_size=4))))
    max_tokens = draw(_maybe(st.integers(1, 2**32 - 1)))
    alias = draw(st.sampled_from(["max_tokens", "max_completion_tokens", "both"]))
    if alias == "both" and max_tokens not in (..., None):
        body["max_tokens"] = body["max_completion_tokens"] = max_tokens
    else:
        _set(body, "max_tokens" if alias == "max_tokens" else "max_completion_tokens", max_tokens)
    _set(body, "ignore_eos", draw(_maybe(st.booleans())))
    _set(body, "stop", draw(_maybe(st.one_of(
        NON_EMPTY, st.lists(st.one_of(NON_EMPTY, st.just("s" * MAX_STOP_CHARS)), max_size=4)))))
    _set(body, "n", draw(_maybe(st.integers(1, 128))))
    logprobs = draw(_maybe(st.booleans()))
    _set(body, "logprobs", logprobs)
    _set(body, "top_logprobs", draw(_maybe(st.integers(0, 20) if logprobs is True else st.just(0))))
    stream = draw(_maybe(st.booleans()))
    _set(body, "stream", stream)
    if stream is True:
        _set(body, "stream_options", draw(_maybe(st.fixed_dictionaries(
            {}, optional={"include_usage": st.booleans(), "include_obfuscation": st.booleans()}))))
    # accepted and ignored
    _set(body, "user", draw(_maybe(ID)))
    _set(body, "safety_identifier", draw(_maybe(st.text(max_size=64))))
    _set(body, "metadata", draw(_maybe(st.dictionaries(st.text(max_size=64), st.text(max_size=512), max_size=16))))
    _set(body, "store", draw(_maybe(st.booleans())))
    _set(body, "service_tier", draw(_maybe(st.sampled_from(["auto", "default", "flex", "priority"]))))
    _set(body, "parallel_tool_calls", draw(_maybe(st.booleans())))
    _set(body, "tool_choice", draw(_maybe(st.sampled_from(["none", "auto"]))))
    _set(body, "response_format", draw(_maybe(st.just({"type": "text"}))))
    _set(body, "modalities", draw(_maybe(st.just(["text"]))))
    return body


# (field, value, expected param): each refused with 400 unsupported_parameter.
UNSUPPORTED = [
    ("tools", [{"type": "custom", "custom": {"name": "f"}}], "tools[0].type"),
    ("audio", {"voice": "alloy", "format": "wav"}, "audio"),
    ("prediction", {"type": "content", "content": "x"}, "prediction"),
    ("web_search_options", {}, "web_search_options"),
    ("moderation", {"model": "m"}, "moderation"),
    ("modalities", ["text", "audio"], "modalities"),
]


@st.composite
def unsupported_requests(draw):
    """A valid request plus one refused feature; returns (body, expected param)."""
    body = draw(chat_requests())
    field, value, param = draw(st.sampled_from(UNSUPPORTED))
    body[field] = value
    if draw(st.booleans()):  # or an unsupported content part in a user message
        i = draw(st.integers(0, len(body["messages"]) - 1))
        part = {"type": "file", "file": {"file_id": "f"}}
        body["messages"].insert(i, {"role": "user", "content": [part]})
        return body, None  # whichever the validator meets first
    return body, param
