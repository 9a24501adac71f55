"""A reasoning model through the official openai SDK: the embedded model's reasoning
variant (same weights, a template that opens `<think>`) is parsed for real, its thinking
is reasoning_content (never content) and counted in reasoning_tokens, streamed and not;
reasoning_effort "none" turns the template's thinking off."""
from __future__ import annotations

import pytest

from ..conftest import ROOT, Service

REASONING_MODEL = "genapi-tiny-reasoning"
ASK = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def reasoning_client(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("reasoning"), "reasoning", model_options=f"""
        [[models]]
        name = "{REASONING_MODEL}"
        path = "{ROOT / 'models' / 'tiny-chat-reasoning'}"
        [models.options]
        max_batch = 4
        """).start()
    yield svc.sdk()
    svc.stop()


def create(client, **kw):
    return client.chat.completions.create(model=REASONING_MODEL, messages=ASK, max_tokens=12, temperature=0, **kw)


def test_thinking_is_reasoning_content_streamed_and_not(reasoning_client):
    out = create(reasoning_client)
    message = out.choices[0].message
    reasoning = message.model_extra["reasoning_content"]
    # The prompt opened <think> and the tiny model never closes it: every token is thinking,
    # but the end-of-turn token when it stops by itself before max_tokens.
    assert reasoning and not message.content
    assert "<think>" not in reasoning and "</think>" not in reasoning
    thinking = out.usage.completion_tokens - (out.choices[0].finish_reason == "stop")
    assert out.usage.completion_tokens_details.reasoning_tokens == thinking > 0

    chunks = list(create(reasoning_client, stream=True, stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == reasoning
    assert not "".join(d.content or "" for d in deltas)
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == thinking


def test_reasoning_effort_none_turns_thinking_off(reasoning_client):
    out = create(reasoning_client, reasoning_effort="none")
    message = out.choices[0].message
    assert message.content and "reasoning_content" not in (message.model_extra or {})
    assert out.usage.completion_tokens_details is None  # no reasoning tokens to report
    assert create(reasoning_client, reasoning_effort="high").choices[0].message.model_extra["reasoning_content"]
