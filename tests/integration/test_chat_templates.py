"""Conversations any chat template accepts, through the official SDK: a checkpoint whose
template has no developer or system role and wants strict alternation (Gemma-style, a
copy of the tiny checkpoint, tools/tiny_models.py write_template_variant) answers every
valid OpenAI conversation, and refuses with a 400 saying why one it cannot render."""
from __future__ import annotations

import openai
import pytest

from tools.tiny_models import write_template_variant

from ..conftest import MODEL, TINY_MODEL, Service

STRICT = "strict-template"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory):
    root = tmp_path_factory.mktemp("strict")
    ckpt = write_template_variant(TINY_MODEL, root / "gemma_style", "gemma_style")
    svc = Service(root, "strict", max_batch=2, model_options=f"""
        [[models]]
        name = "{STRICT}"
        path = "{ckpt}"
        [models.options]
        max_batch = 2
        """).start()
    yield svc.sdk()
    svc.stop()


def ask(sdk, model: str, messages: list[dict]):
    return sdk.chat.completions.create(model=model, messages=messages, max_tokens=4, temperature=0)


CONVERSATION = [{"role": "developer", "content": "Be brief."}, {"role": "system", "content": "Use English."},
                {"role": "user", "content": "Hello."}, {"role": "user", "content": "What is a harbour?"}]


def test_a_conversation_with_roles_the_template_lacks_is_answered(sdk):
    r = ask(sdk, STRICT, CONVERSATION)
    assert r.choices[0].message.content and r.usage.completion_tokens >= 1
    # The same instructions and question as one user turn give the same prompt.
    merged = ask(sdk, STRICT, [{"role": "user", "content": "Be brief.\n\nUse English.\n\nHello.\n\nWhat is a harbour?"}])
    assert r.usage.prompt_tokens == merged.usage.prompt_tokens
    assert r.choices[0].message.content == merged.choices[0].message.content
    # The ChatML model renders the four turns as they are: a longer prompt.
    assert ask(sdk, MODEL, CONVERSATION).usage.prompt_tokens > merged.usage.prompt_tokens


@pytest.mark.parametrize("messages, param, reason", [
    ([{"role": "user", "content": "Hi."}, {"role": "system", "content": "Be brief."}], "messages[1]",
     "no user message follows"),
    ([{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."}], "messages",
     "must alternate"),
])
def test_a_conversation_it_cannot_render_faithfully_is_a_400_saying_why(sdk, messages, param, reason):
    with pytest.raises(openai.BadRequestError) as ei:
        ask(sdk, STRICT, messages)
    assert ei.value.param == param and reason in ei.value.message
