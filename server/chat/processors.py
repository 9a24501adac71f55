"""A multimodal checkpoint's processor: transformers' AutoProcessor, or for a Pixtral
processor on an install without torchvision, `PixtralGrid`.

transformers' PixtralProcessor requires torchvision (its module imports the torchvision
image processor for one helper), which genapi does not install: the Pillow image
processor (`PixtralImageProcessorPil`) does the pixels, and the token grid is Pixtral's
rule, small enough to state here: an image resized to H x W pixels (multiples of
patch x merge) becomes H/(patch*merge) rows of W/(patch*merge) `[IMG]` tokens, each row
followed by `[IMG_BREAK]`, the last one by `[IMG_END]` instead. With torchvision
installed the real PixtralProcessor is used.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PROCESSOR_FILE = "processor_config.json"


class PixtralGrid:
    """The part of PixtralProcessor genapi calls: `processor(text=image_token, images=[img],
    add_special_tokens=False, return_tensors="np", **images_kwargs)` -> {"input_ids" [1, n],
    "pixel_values" [1, 3, H, W] float32, "image_sizes" [1, 2]}; `image_token`,
    `image_token_id`, `tokenizer`, `image_processor`."""

    def __init__(self, image_processor, tokenizer, patch_size: int, spatial_merge_size: int = 1,
                 image_token: str = "[IMG]", image_break_token: str = "[IMG_BREAK]",
                 image_end_token: str = "[IMG_END]", chat_template: str | None = None, **_):
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.patch_size, self.spatial_merge_size = int(patch_size), int(spatial_merge_size)
        self.image_token = image_token
        self.image_token_id, self.break_id, self.end_id = (
            tokenizer.convert_tokens_to_ids(t) for t in (image_token, image_break_token, image_end_token))
        self.chat_template = chat_template

    def grid_ids(self, height: int, width: int) -> list[int]:
        """The token ids of an image resized to height x width pixels."""
        cell = self.patch_size * self.spatial_merge_size
        rows = ([self.image_token_id] * (width // cell) + [self.break_id]) * (height // cell)
        rows[-1] = self.end_id
        return rows

    def __call__(self, text: str, images, add_special_tokens: bool = False, return_tensors: str = "np", **kwargs):
        if text != self.image_token or len(images) != 1:
            raise ValueError("PixtralGrid expands one image placeholder at a time")
        cell = self.patch_size * self.spatial_merge_size
        out = self.image_processor(images, patch_size={"height": cell, "width": cell}, return_tensors="np", **kwargs)
        height, width = (int(v) for v in np.asarray(out["image_sizes"])[0])
        return {"input_ids": np.asarray([self.grid_ids(height, width)]),
                "pixel_values": np.asarray(out["pixel_values"], dtype=np.float32),
                "image_sizes": np.asarray(out["image_sizes"])}


def _pixtral_grid(path: Path) -> PixtralGrid:
    from transformers import AutoTokenizer
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    config = json.loads((path / PROCESSOR_FILE).read_text(encoding="utf-8"))
    image_config = {k: v for k, v in config.pop("image_processor", {}).items() if k != "image_processor_type"}
    template = path / "chat_template.jinja"
    return PixtralGrid(PixtralImageProcessorPil(**image_config), AutoTokenizer.from_pretrained(path),
                       chat_template=template.read_text(encoding="utf-8") if template.is_file() else None,
                       **{k: v for k, v in config.items() if k != "processor_class"})


def load_processor(path: str | Path, **kwargs):
    """The checkpoint's processor (AutoProcessor.from_pretrained(path, **kwargs)); a
    PixtralGrid where that is a PixtralProcessor and torchvision is missing. Other
    failures are raised as they are."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, **kwargs)
    except ImportError:
        p = Path(path)
        try:
            cls = json.loads((p / PROCESSOR_FILE).read_text(encoding="utf-8")).get("processor_class")
        except (OSError, ValueError):
            cls = None
        if cls != "PixtralProcessor":
            raise
        return _pixtral_grid(p)
