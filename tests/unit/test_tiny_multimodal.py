"""tools/tiny_llava.py, tools/tiny_pixtral.py and tools/tiny_qwen2_audio.py: the tiny
vision- and audio-language checkpoints are a real LLaVA, a real Mistral3 (Pixtral tower)
and a real Qwen2-Audio (their own processors, token expansion and chat templates) on the
tiny chat LM, built idempotently."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools import tiny_llava, tiny_pixtral, tiny_qwen2_audio

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


@pytest.fixture(scope="module")
def built_audio(tmp_path_factory) -> Path:
    return tiny_qwen2_audio.build(BASE, tmp_path_factory.mktemp("audio") / "tiny-audio")


def test_audio_checkpoint_is_qwen2_audio_with_one_token_per_40_ms(built_audio):
    from transformers import AutoModelForMultimodalLM, AutoProcessor, AutoTokenizer

    proc = AutoProcessor.from_pretrained(built_audio)
    assert type(proc).__name__ == "Qwen2AudioProcessor"
    out = proc(text=proc.audio_token, audio=[np.zeros(16_000, np.float32)], sampling_rate=16_000,
               add_special_tokens=False)
    assert out["input_ids"][0] == [proc.audio_token_id] * 25
    tok = AutoTokenizer.from_pretrained(built_audio)
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "hi"}]}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\n<|audio_bos|><|AUDIO|><|audio_eos|>\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = AutoModelForMultimodalLM.from_pretrained(built_audio)
    assert type(model).__name__ == "Qwen2AudioForConditionalGeneration"
    assert type(model.model.language_model).__name__ == "LlamaModel"


@pytest.fixture(scope="module")
def built_pixtral(tmp_path_factory) -> Path:
    return tiny_pixtral.build(BASE, tmp_path_factory.mktemp("pixtral") / "tiny-pixtral")


def test_pixtral_checkpoint_gives_a_variable_grid_and_the_engines_splice_is_the_models_forward(built_pixtral):
    import torch
    from PIL import Image
    from transformers import AutoModelForMultimodalLM

    from server.chat.media_prompt import detail_image, encode_part
    from server.chat.processors import load_processor
    from server.engines.torch.multimodal import MediaEncoder, text_view

    proc = load_processor(built_pixtral)  # PixtralGrid here (no torchvision), PixtralProcessor with it
    tok = proc.tokenizer
    img, brk, end = (tok.convert_tokens_to_ids(t) for t in (tiny_pixtral.IMAGE_TOKEN, tiny_pixtral.IMAGE_BREAK,
                                                             tiny_pixtral.IMAGE_END))
    wide = Image.new("RGB", (200, 70), "red")  # longest edge to 64: 64x22 -> 2 rows of 4 cells
    ids, media = encode_part(proc, "image", wide)
    assert ids == [img] * 4 + [brk] + [img] * 4 + [end]
    assert tuple(np.asarray(media.arrays["pixel_values"]).shape) == (1, 3, 32, 64)
    low = detail_image(proc, wide, "low")  # longest edge 16: one cell
    assert low.size == (16, 6) and encode_part(proc, "image", low)[0] == [img, end]
    assert detail_image(proc, wide, "high") is wide and detail_image(proc, wide, "auto") is wide
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}],
                                   add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nhi\n[IMG]<|im_end|>\n<|im_start|>assistant\n"

    model = AutoModelForMultimodalLM.from_pretrained(built_pixtral).eval()
    assert type(model).__name__ == "Mistral3ForConditionalGeneration"
    assert type(model.model.vision_tower).__name__ == "PixtralVisionModel"
    prompt = tok("a picture:", add_special_tokens=False)["input_ids"] + ids
    encoder = MediaEncoder(model, torch.device("cpu"), torch.float32)
    splice = encoder.splice_for(prompt, [media])
    assert splice.features.shape[0] == 8  # one feature per [IMG]; break and end are text
    small, small_media = encode_part(proc, "image", Image.new("RGB", (10, 10), "blue"))  # one cell: a lone feature
    assert small == [img, end] and encoder.splice_for(small, [small_media]).features.shape[0] == 1
    lm = text_view(model)
    with torch.no_grad():
        arrays = {k: torch.as_tensor(v) for k, v in media.arrays.items()}
        own = model(input_ids=torch.tensor([prompt]), **arrays).logits[0, -1]
        h = lm.model.embed_tokens(torch.tensor([prompt]))
        h[0, splice.positions] = splice.features
        ours = lm.lm_head(lm.model(inputs_embeds=h).last_hidden_state)[0, -1]
    assert torch.allclose(own, ours, atol=1e-5)
