"""The core's pure handling of media parts before any fetch: which parts a request has
(convert/media.py), what the chat template sees (chat/template.py, chat/normalize.py)."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from genapi.v1 import content_pb2 as c
from server.chat.normalize import TemplateTraits, normalize
from server.chat.template import to_template_messages
from server.convert.media import check_media, media_parts
from server.errors import GenapiError


def msg(role, *parts):
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(c.ContentPart(text=p))
        elif isinstance(p, c.ImagePart):
            out.append(c.ContentPart(image=p))
        else:
            out.append(c.ContentPart(audio=p))
    return c.ChatMessage(role=role, content=out)


IMAGE = c.ImagePart(url="https://img.example/a.png")
AUDIO = c.AudioPart(data=b"RIFF", format="wav")
CONVERSATION = [msg(c.ROLE_SYSTEM, "be brief"), msg(c.ROLE_USER, "look", IMAGE, "and listen", AUDIO),
                msg(c.ROLE_ASSISTANT, "ok"), msg(c.ROLE_USER, IMAGE)]


def test_media_parts_in_request_order_with_their_params():
    parts = media_parts(CONVERSATION)
    assert [(i, p, k) for i, p, k, _ in parts] == [
        (1, "messages[1].content[1]", "image"), (1, "messages[1].content[3]", "audio"), (3, "messages[3].content[0]", "image")]
    assert parts[1].part == AUDIO


@pytest.mark.parametrize("accepts, param, words", [
    ((), "messages[1].content[1]", "`m` does not accept image input"),
    (("image",), "messages[1].content[3]", "`m` does not accept audio input"),
])
def test_a_model_without_a_kind_refuses_its_first_part(accepts, param, words):
    with pytest.raises(GenapiError) as e:
        check_media(CONVERSATION, media_parts(CONVERSATION), "m", accepts)
    assert (e.value.code, e.value.param) == (grpc.StatusCode.INVALID_ARGUMENT, param)
    assert words in e.value.message


def test_media_outside_user_messages_are_refused():
    messages = [msg(c.ROLE_ASSISTANT, IMAGE)]
    with pytest.raises(GenapiError) as e:
        check_media(messages, media_parts(messages), "m", ("image",))
    assert e.value.param == "messages[0].content[0]"
    check_media(CONVERSATION, media_parts(CONVERSATION), "m", ("image", "audio"))  # all in user turns


def test_template_messages_keep_media_parts_in_place_and_text_messages_as_strings():
    dicts = to_template_messages(CONVERSATION, ("image", "audio"))
    assert dicts[0]["content"] == "be brief"
    assert dicts[1]["content"] == [{"type": "text", "text": "look"}, {"type": "image"},
                                   {"type": "text", "text": "and listen"}, {"type": "audio"}]
    assert dicts[3]["content"] == [{"type": "image"}]
    with pytest.raises(GenapiError) as e:
        to_template_messages(CONVERSATION, ("image",))
    assert e.value.param == "messages[1].content[3]"


def test_instructions_a_template_cannot_place_go_first_into_a_user_message_with_media():
    dicts = to_template_messages(CONVERSATION[:2], ("image", "audio"))
    out = normalize(dicts, TemplateTraits(system=False))
    assert [m["role"] for m in out] == ["user"]
    assert out[0]["content"][0] == {"type": "text", "text": "be brief\n\n"}
    assert out[0]["content"][1:] == dicts[1]["content"]


def test_strict_alternation_merges_messages_with_media_part_by_part():
    dicts = to_template_messages([msg(c.ROLE_USER, "a"), msg(c.ROLE_USER, IMAGE, "b")], ("image",))
    out = normalize(dicts, TemplateTraits(strict_alternation=True))
    assert out == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "\n\n"},
                                                 {"type": "image"}, {"type": "text", "text": "b"}]}]


# ---- the processor side (chat/media_prompt.py), with the tiny checkpoints' processors ----

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def processors():
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(ROOT / "models" / name) for name in ("tiny-vision", "tiny-audio")}


def test_a_template_that_drops_a_part_is_a_400_not_a_wrong_prompt(processors):
    from PIL import Image

    from server.chat.media_prompt import expand_media, placeholder_token_id

    proc = processors["tiny-vision"]
    token = placeholder_token_id(proc, "image")
    red = Image.new("RGB", (8, 8), "red")
    with pytest.raises(GenapiError) as e:
        expand_media([1, token, 2], [("image", red), ("image", red)], proc)  # two images, one placeholder
    assert e.value.param == "messages" and "placed 1 of the request's 2 images" in e.value.message
    ids, media = expand_media([1, token, 2], [("image", red)], proc)
    assert ids == [1] + [token] * 16 + [2] and media[0].span == (1, 16) and media[0].source is None


def test_audio_limits_and_rate_come_from_the_feature_extractor(processors):
    from server.chat.media_prompt import max_audio_seconds, sampling_rate

    assert (sampling_rate(processors["tiny-audio"]), max_audio_seconds(processors["tiny-audio"])) == (16_000, 30.0)
    assert max_audio_seconds(processors["tiny-vision"]) is None


def test_a_template_kept_with_the_processor_only_renders_the_prompt(tmp_path):
    """A Qwen2-Audio / LLaVA repo may ship its chat template as chat_template.json, which
    AutoProcessor reads and AutoTokenizer does not: the prompt is rendered with it."""
    import json
    import shutil

    from transformers import AutoProcessor, AutoTokenizer

    from server.chat.media_prompt import placeholder_token_id
    from server.chat.template import render_prompt
    from server.engines.base import ChatModelInfo

    model = tmp_path / "audio"
    shutil.copytree(ROOT / "models" / "tiny-audio", model)
    template = (model / "chat_template.jinja").read_text(encoding="utf-8")
    (model / "chat_template.jinja").unlink()
    (model / "chat_template.json").write_text(json.dumps({"chat_template": template}), encoding="utf-8")
    tokenizer, processor = AutoTokenizer.from_pretrained(model), AutoProcessor.from_pretrained(model)
    assert tokenizer.chat_template is None and processor.chat_template == template
    info = ChatModelInfo(tokenizer, 4096, 1000, ("audio",), processor)
    ids = render_prompt(info.tokenizer, [msg(c.ROLE_USER, "listen", AUDIO)], media=info.media)
    assert ids.count(placeholder_token_id(processor, "audio")) == 1
    # a text-only model's tokenizer is left alone
    assert ChatModelInfo(AutoTokenizer.from_pretrained(model), 4096, 1000).tokenizer.chat_template is None


def test_a_prompt_over_the_context_is_refused_before_the_processor_runs(processors):
    """chat_prompt checks the templated prompt (one token per placeholder: a lower bound)
    with `fits` before any media part's features are computed."""
    from types import SimpleNamespace

    from PIL import Image

    from server.chat.media_request import chat_prompt

    calls = []

    class Counting:  # the tiny LLaVA processor, its calls counted
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, *args, **kwargs):
            calls.append(1)
            return self.inner(*args, **kwargs)

    proc = processors["tiny-vision"]
    info = SimpleNamespace(tokenizer=proc.tokenizer, media=("image",), processor=Counting(proc), raw_media=False)
    messages = [msg(c.ROLE_USER, "look", IMAGE)]
    media = [("image", Image.new("RGB", (8, 8), "red"), "auto")]
    seen = []

    def over(n):
        seen.append(n)
        raise ValueError("over the context")

    with pytest.raises(ValueError):
        chat_prompt(info, messages, None, {}, media, over)
    assert calls == [] and seen and seen[0] < 16  # the template's prompt, not the expanded one
    ids, items = chat_prompt(info, messages, None, {}, media, seen.append)
    assert calls == [1] and len(ids) == seen[-1] - 1 + 16 and len(items) == 1
