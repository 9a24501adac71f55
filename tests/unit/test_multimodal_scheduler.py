"""The torch scheduler with the embedded tiny vision-language model (models/tiny-vision):
images are encoded at admission and spliced into the prefill; what it generates equals
transformers' own LlavaForConditionalGeneration.generate, whole or chunked, alone or
batched with text requests."""
from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from server.chat.media_prompt import expand_media  # noqa: E402
from server.engines.base import TextEvent  # noqa: E402

from ..conftest import ROOT  # noqa: E402
from .test_scheduler import Driver  # noqa: E402

VISION_MODEL = ROOT / "models" / "tiny-vision"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(VISION_MODEL), AutoModelForImageTextToText.from_pretrained(VISION_MODEL).eval()


def prompt(hf, images: list, text: str = "What is in the picture?"):
    """(prompt ids with the images expanded, their MediaInputs) as the core makes them."""
    processor, _ = hf
    parts = [{"type": "text", "text": text}] + [{"type": "image"} for _ in images]
    ids = processor.tokenizer.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False)
    return expand_media(list(ids), [("image", image) for image in images], processor)


def reference(hf, ids, media) -> list[int]:
    """transformers' greedy generation for the same prompt and pixels."""
    _, model = hf
    pixels = torch.cat([torch.as_tensor(m.arrays["pixel_values"]) for m in media])
    out = model.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=MAX_TOKENS,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def generated_text(driver, rid) -> str:
    return "".join(e.text for e in driver.events[rid] if isinstance(e, TextEvent))


RED, BLUE = Image.new("RGB", (40, 30), (220, 20, 20)), Image.new("RGB", (30, 30), (20, 20, 220))


@pytest.fixture(scope="module")
def whole():
    d = Driver(VISION_MODEL, prefill_chunk=0)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def chunked():
    d = Driver(VISION_MODEL, prefill_chunk=5)  # chunk borders fall inside the 16 image tokens
    yield d
    d.stop()


def test_image_prompts_generate_what_transformers_does(hf, whole, chunked):
    processor, _ = hf
    ids, media = prompt(hf, [RED, BLUE])
    assert ids.count(processor.image_token_id) == 32 and len(media) == 2
    expected = processor.tokenizer.decode(reference(hf, ids, media), skip_special_tokens=True)
    whole.submit("w", ids, MAX_TOKENS, media=media)
    chunked.submit("c", ids, MAX_TOKENS, n=2, media=media)
    assert whole.wait_ended("w") == chunked.wait_ended("c") == "finished"
    assert generated_text(whole, "w") == expected
    assert chunked.texts("c") == {0: expected, 1: expected}


def test_the_image_changes_the_output_and_batching_keeps_each_alone_output(hf, whole):
    red, blue = prompt(hf, [RED]), prompt(hf, [BLUE])
    text_ids, _ = prompt(hf, [])
    alone = {}
    for rid, (ids, media) in {"red": red, "blue": blue, "text": (text_ids, [])}.items():
        whole.submit(f"alone-{rid}", ids, MAX_TOKENS, media=media)
        whole.wait_ended(f"alone-{rid}")
        alone[rid] = generated_text(whole, f"alone-{rid}")
    assert alone["red"] != alone["blue"]  # the features reach the language model
    for rid, (ids, media) in {"red": red, "blue": blue, "text": (text_ids, [])}.items():
        whole.submit(f"batch-{rid}", ids, MAX_TOKENS, media=media)
    for rid in alone:
        assert whole.wait_ended(f"batch-{rid}") == "finished"
        assert generated_text(whole, f"batch-{rid}") == alone[rid]
    assert whole.idle()


def test_features_that_do_not_match_the_placeholders_fail_only_that_request(hf, whole):
    ids, media = prompt(hf, [RED])
    whole.submit("running", *prompt(hf, [BLUE])[:1], max_tokens=40, media=prompt(hf, [BLUE])[1])
    whole.pump_until(lambda: whole.completion_tokens("running") >= 2)
    whole.submit("bad", ids[:-20], 5, media=media)  # some placeholders cut off
    assert whole.wait_ended("bad").startswith("generation failed")
    assert whole.wait_ended("running") == "finished"
    assert whole.completion_tokens("running") == 40


# ---- audio (models/tiny-audio, Qwen2-Audio) ---------------------------------------------

AUDIO_MODEL = ROOT / "models" / "tiny-audio"


def tone(freq: float, seconds: float):
    import numpy as np

    t = np.arange(int(16_000 * seconds)) / 16_000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="module")
def hf_audio():
    from transformers import AutoModelForMultimodalLM, AutoProcessor

    return AutoProcessor.from_pretrained(AUDIO_MODEL), AutoModelForMultimodalLM.from_pretrained(AUDIO_MODEL).eval()


@pytest.fixture(scope="module")
def audio_chunked():
    d = Driver(AUDIO_MODEL, prefill_chunk=7)
    yield d
    d.stop()


def test_audio_prompts_generate_what_transformers_does(hf_audio, audio_chunked):
    from server.chat.media_prompt import expand_media

    processor, model = hf_audio
    parts = [{"type": "text", "text": "What do you hear?"}, {"type": "audio"}, {"type": "audio"}]
    ids = processor.tokenizer.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=False)
    clips = [tone(440, 1.0), tone(660, 0.5)]
    ids, media = expand_media(list(ids), [("audio", c) for c in clips], processor)
    assert ids.count(processor.audio_token_id) == 25 + 12  # one token per 40 ms (80 frames: 12)
    ref = model.generate(input_ids=torch.tensor([ids]),
                         input_features=torch.cat([torch.as_tensor(m.arrays["input_features"]) for m in media]),
                         feature_attention_mask=torch.cat([torch.as_tensor(m.arrays["feature_attention_mask"])
                                                           for m in media]),
                         max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = processor.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
    audio_chunked.submit("a", ids, MAX_TOKENS, media=media)
    assert audio_chunked.wait_ended("a") == "finished"
    assert generated_text(audio_chunked, "a") == expected


def test_expanded_parts_record_where_they_stand_and_collapse_back_to_the_templates_prompt(hf):
    from server.engines.trtllm.mapping import template_prompt_ids

    processor, _ = hf
    parts = [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}]
    template = list(processor.tokenizer.apply_chat_template([{"role": "user", "content": parts}],
                                                            add_generation_prompt=True, tokenize=True, return_dict=False))
    ids, media = expand_media(template, [("image", RED), ("image", BLUE)], processor)
    assert [m.span[1] for m in media] == [16, 16]
    assert all(ids[m.span[0]:sum(m.span)] == [processor.image_token_id] * 16 for m in media)
    assert template_prompt_ids(ids, media) == template  # what TensorRT-LLM is sent


def test_checkpoints_with_multimodal_rotary_positions_are_refused_at_load():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from server.engines.torch.multimodal import text_view

    cfg = Qwen2VLConfig(text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64},
                        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2})
    with pytest.raises(ValueError, match="M-RoPE"):
        text_view(Qwen2VLForConditionalGeneration(cfg))
