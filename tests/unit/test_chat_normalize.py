"""Conversations adapted to what a chat template accepts (server/chat/normalize.py), with
test templates in the manner of three model families written into copies of the tiny
checkpoint (tools/tiny_models.py write_template_variant)."""
from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from genapi.v1 import content_pb2  # noqa: E402
from server.chat.normalize import TemplateTraits, normalize, template_traits  # noqa: E402
from server.chat.template import render_prompt  # noqa: E402
from server.errors import GenapiError  # noqa: E402
from tools.tiny_models import template_variants, write_template_variant  # noqa: E402

from ..conftest import TINY_MODEL  # noqa: E402

R = content_pb2
ROLE = {"system": R.ROLE_SYSTEM, "developer": R.ROLE_DEVELOPER, "user": R.ROLE_USER, "assistant": R.ROLE_ASSISTANT}


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("templates")
    out = {"chatml": AutoTokenizer.from_pretrained(TINY_MODEL)}
    for name in template_variants():
        out[name] = AutoTokenizer.from_pretrained(write_template_variant(TINY_MODEL, root / name, name))
    return out


def chat(*turns: tuple[str, str]) -> list:
    return [R.ChatMessage(role=ROLE[role], content=[R.ContentPart(text=text)]) for role, text in turns]


def prompt_text(tok, *turns) -> str:
    return tok.decode(render_prompt(tok, chat(*turns)), skip_special_tokens=False)


def test_each_family_is_recognised_by_probing_its_template(tokenizers):
    assert set(tokenizers) == {"chatml", "qwen3_style", "gemma_style", "mistral_style"}
    assert template_traits(tokenizers["chatml"]) == TemplateTraits()
    assert template_traits(tokenizers["qwen3_style"]) == TemplateTraits(developer=False, system_anywhere=False)
    assert template_traits(tokenizers["gemma_style"]) == TemplateTraits(
        developer=False, system=False, system_anywhere=False, strict_alternation=True)
    assert template_traits(tokenizers["mistral_style"]) == TemplateTraits(
        developer=False, system_anywhere=False, strict_alternation=True)


FULL = (("developer", "Be brief."), ("system", "Answer in English."), ("user", "Hello."),
        ("user", "What is a harbour?"), ("assistant", "A place for boats."), ("user", "And a lighthouse?"))


@pytest.mark.parametrize("family", ["chatml", "qwen3_style", "gemma_style", "mistral_style"])
def test_an_openai_conversation_renders_with_every_family_keeping_all_text_in_order(tokenizers, family):
    text = prompt_text(tokenizers[family], *FULL)
    at = [text.index(t) for _, t in FULL]
    assert at == sorted(at)


def test_qwen3_style_gets_developer_instructions_as_its_system_turn(tokenizers):
    text = prompt_text(tokenizers["qwen3_style"], ("developer", "Be brief."), ("user", "Hi."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi.")
    # A later system message cannot be placed there: it goes with the next user message.
    text = prompt_text(tokenizers["qwen3_style"], ("user", "Hi."), ("assistant", "Hello."),
                       ("system", "Now be formal."), ("user", "Bye."))
    assert "<|im_start|>user\nNow be formal.\n\nBye.<|im_end|>" in text and text.count("system") == 0


def test_gemma_style_gets_instructions_in_the_first_user_turn_and_merged_turns(tokenizers):
    text = prompt_text(tokenizers["gemma_style"], ("system", "Be brief."), ("user", "Hi."), ("user", "Again."))
    assert text == "<|im_start|>user\nBe brief.\n\nHi.\n\nAgain.<|im_end|>\n<|im_start|>model\n"


def test_mistral_style_keeps_its_system_and_merges_consecutive_turns(tokenizers):
    text = prompt_text(tokenizers["mistral_style"], ("system", "Be brief."), ("developer", "No lists."),
                       ("user", "Hi."), ("user", "Again."))
    assert text == "<|im_start|>[INST] Be brief.\n\nNo lists.\n\nHi.\n\nAgain. [/INST]"


def test_the_chatml_template_is_left_as_it_is(tokenizers):
    text = prompt_text(tokenizers["chatml"], ("developer", "D."), ("user", "A."), ("user", "B."))
    assert "<|im_start|>developer\nD.<|im_end|>" in text and text.count("<|im_start|>user") == 2


def test_instructions_with_no_user_message_after_them_are_refused_saying_why(tokenizers):
    with pytest.raises(GenapiError) as ei:
        render_prompt(tokenizers["gemma_style"], chat(("user", "Hi."), ("system", "Be brief.")))
    assert ei.value.param == "messages[1]"
    assert "no system role" in ei.value.message and "no user message follows" in ei.value.message


def test_what_the_template_still_refuses_is_a_400_with_its_own_reason(tokenizers):
    with pytest.raises(GenapiError) as ei:  # cannot be fixed faithfully: the reply would come first
        render_prompt(tokenizers["gemma_style"], chat(("assistant", "Hello."), ("user", "Hi.")))
    assert ei.value.param == "messages" and "must alternate" in ei.value.message


def test_normalize_does_not_change_its_input_and_keeps_non_text_turns_apart():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "", "tool_calls": [{}]},
                {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    copy = [dict(m) for m in messages]
    out = normalize(messages, TemplateTraits(strict_alternation=True))
    assert messages == copy
    assert [m["role"] for m in out] == ["user", "assistant", "assistant", "user"]  # a tool call is not merged
