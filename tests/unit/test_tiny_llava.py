"""tools/tiny_llava.py: the tiny vision-language checkpoint is a real LLaVA (its own
processor, image token expansion and chat template), built idempotently."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools import tiny_llava

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "models" / "tiny-chat"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return tiny_llava.build(BASE, tmp_path_factory.mktemp("vision") / "tiny-vision")


def test_rebuild_is_skipped_when_up_to_date(built, capsys):
    before = (built / "model.safetensors").stat().st_mtime_ns
    assert tiny_llava.build(BASE, built) == built
    assert (built / "model.safetensors").stat().st_mtime_ns == before
    assert "up to date" in capsys.readouterr().err


def test_refuses_to_overwrite_a_foreign_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError):
        tiny_llava.build(BASE, tmp_path)


def test_processor_expands_one_image_token_into_its_patches(built):
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(built)
    out = proc(text=proc.image_token, images=[Image.new("RGB", (50, 30), "red")], add_special_tokens=False)
    assert type(proc).__name__ == "LlavaProcessor"
    assert out["input_ids"][0] == [proc.image_token_id] * 16  # (32 / 8)^2 patches, CLS dropped
    assert tuple(np.asarray(out["pixel_values"]).shape) == (1, 3, 32, 32)


def test_template_places_images_where_they_stand_and_user_text_cannot_forge_one(built):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built)
    image_id = tok.convert_tokens_to_ids(tiny_llava.IMAGE_TOKEN)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a <image> b"}, {"type": "image"},
                                         {"type": "text", "text": "c"}, {"type": "image"}]}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\na <image> b\n<image>\nc\n<image><|im_end|>\n<|im_start|>assistant\n"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False,
                                  sanitize_control_tokens=True)
    assert list(ids).count(image_id) == 2  # the user's own "<image>" is text


def test_model_is_llava_with_the_tiny_chat_language_model(built):
    import torch
    from transformers import AutoModelForImageTextToText, LlamaForCausalLM

    vlm = AutoModelForImageTextToText.from_pretrained(built)
    lm = LlamaForCausalLM.from_pretrained(BASE)
    assert type(vlm).__name__ == "LlavaForConditionalGeneration"
    assert torch.equal(vlm.model.language_model.layers[0].mlp.up_proj.weight, lm.model.layers[0].mlp.up_proj.weight)
    assert vlm.lm_head.weight.shape[0] == lm.lm_head.weight.shape[0] + 1
