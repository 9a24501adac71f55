"""Builds the tiny Mistral3/Pixtral-style vision-language checkpoint `genapi-tiny-pixtral`:
a Mistral3ForConditionalGeneration whose language model is the trained tiny chat LM
(`models/tiny-chat`, its Llama weights in a Mistral decoder of the same layout) and whose
Pixtral vision tower (2D rotary patches of 8x8 pixels, images up to 64 pixels on their
longest edge, any aspect), patch merger (2x2) and projector have seeded random weights.
An image becomes a variable grid: one `[IMG]` per 16x16 pixels, `[IMG_BREAK]` after each
row, `[IMG_END]` last (a 64x64 image: 4 rows of 4, 20 tokens; 64x32: 2 rows of 4, 10).
Like tools/tiny_llava.py, a demo of the code path (processor, variable token grid, vision
encoder, splice), not an image describer.

Real processor files, made here offline:
- the tiny chat tokenizer plus `[IMG]`, `[IMG_BREAK]`, `[IMG_END]` (special; the embedding
  and lm_head grow by three rows, copies of the pad token's: `[IMG]` rows are replaced by
  image features, the break and end rows are read as ordinary tokens);
- `PixtralImageProcessorPil` (the slow, Pillow-only image processor: the fast one needs
  torchvision, which genapi does not install) and a `PixtralProcessor` config (patch 8,
  merge 2), written as its save_pretrained would: transformers' PixtralProcessor itself
  requires torchvision, so the core loads these files with server/chat/processors.py;
- the tiny chat model's ChatML template with image parts rendered as `[IMG]` in place
  (the LM was trained on ChatML; Mistral's [INST] format would only make its text worse).

    python -m tools.tiny_pixtral [--base models/tiny-chat] [--out models/tiny-pixtral] [--force]

Idempotent like tools/tiny_llava.py (whose build skeleton it shares); seconds to build.
"""
from __future__ import annotations

import json
from pathlib import Path

from tools.tiny_llava import build_dir, cli, save_with_language_model, template_with, text_config, with_template_tokens

SEED = 20261205
IMAGE_TOKEN, IMAGE_BREAK, IMAGE_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
PATCH_SIZE, MERGE, LONGEST_EDGE = 8, 2, 64
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": LONGEST_EDGE, "patch_size": PATCH_SIZE, "head_dim": 16}
# Llama config keys a Mistral decoder shares (the weights' layout is the same).
MISTRAL_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


def _build(base: Path, out: Path) -> int:
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, MistralConfig, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    torch.manual_seed(SEED)
    template = template_with((base / "chat_template.jinja").read_text(encoding="utf-8"),
                             ["image", "image_url", "input_image"], IMAGE_TOKEN)
    tokenizer = with_template_tokens(base, [IMAGE_TOKEN, IMAGE_BREAK, IMAGE_END], template)
    rows, pad_id = len(tokenizer), tokenizer.pad_token_id or 0
    llama = text_config(base, rows)
    text = MistralConfig(**{k: llama[k] for k in MISTRAL_KEYS if k in llama}, sliding_window=None)
    cfg = Mistral3Config(vision_config=PixtralVisionConfig(**VISION).to_dict(), text_config=text.to_dict(),
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), spatial_merge_size=MERGE,
                         vision_feature_layer=-1, tie_word_embeddings=False)
    model = Mistral3ForConditionalGeneration(cfg).eval()  # seeded random vision tower, merger, projector
    save_with_language_model(model, base, rows, pad_id, out)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": LONGEST_EDGE},
                                               patch_size={"height": PATCH_SIZE, "width": PATCH_SIZE})
    # What PixtralProcessor.save_pretrained writes; it cannot be constructed here, as it
    # requires torchvision (server/chat/processors.py loads these files without it).
    config = {"image_processor": image_processor.to_dict() | {"image_processor_type": "PixtralImageProcessor"},
              "image_token": IMAGE_TOKEN, "image_break_token": IMAGE_BREAK, "image_end_token": IMAGE_END,
              "patch_size": PATCH_SIZE, "spatial_merge_size": MERGE, "processor_class": "PixtralProcessor"}
    (out / "processor_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def build(base: str | Path = "models/tiny-chat", out: str | Path = "models/tiny-pixtral", force: bool = False) -> Path:
    """Builds (or keeps, when up to date) the checkpoint in `out`; returns its path."""
    return build_dir(base, out, _build, __file__, force)


def main(argv: list[str] | None = None) -> int:
    return cli(build, __doc__, "models/tiny-pixtral", argv)


if __name__ == "__main__":
    raise SystemExit(main())
