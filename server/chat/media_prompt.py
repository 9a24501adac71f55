"""A templated prompt's image placeholders -> the model's own image tokens and inputs.

The chat template renders one placeholder token (the processor's `image_token`, e.g.
`<image>`) where each image part stood; `expand_images` asks the checkpoint's processor
(transformers' AutoProcessor: LlavaProcessor, PixtralProcessor, ...) what one image
becomes, image by image: its token sequence (LLaVA: the placeholder repeated once per
feature; Pixtral: rows of them with break and end tokens) and its pixel arrays. The
prompt is tokenized by the template path (so text a user writes, `<image>` included,
stays text); only the template's own placeholders are expanded. Runs in a worker thread.
"""
from __future__ import annotations

import numpy as np

from ..engines.base import MediaInput
from ..errors import invalid

#: Processor outputs that belong to the text, not to the image.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids"})


def placeholder_token_id(processor) -> int:
    """The token id the chat template writes for an image."""
    token_id = getattr(processor, "image_token_id", None)
    if isinstance(token_id, int):
        return token_id
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


def encode_image(processor, image) -> tuple[list[int], MediaInput]:
    """One RGB PIL image -> (the token ids standing for it, its MediaInput)."""
    out = processor(text=processor.image_token, images=[image], add_special_tokens=False, return_tensors="np")
    ids = [int(t) for t in np.asarray(out["input_ids"])[0]]
    arrays = {k: np.asarray(v) for k, v in out.items() if k not in TEXT_KEYS}
    return ids, MediaInput("image", arrays)


def expand_images(prompt_ids: list[int], images: list, processor) -> tuple[list[int], list[MediaInput]]:
    """The prompt with each image placeholder replaced by that image's tokens (in order),
    and the images' MediaInputs. INVALID_ARGUMENT (param `messages`) when the template did
    not place exactly one placeholder per image (it dropped some: e.g. images in a role
    it does not render)."""
    token = placeholder_token_id(processor)
    where = [i for i, t in enumerate(prompt_ids) if t == token]
    if len(where) != len(images):
        raise invalid(f"This model's chat template placed {len(where)} of the request's {len(images)} images in "
                      "the prompt; send images in user messages only.", "messages")
    out: list[int] = []
    media: list[MediaInput] = []
    last = 0
    for at, image in zip(where, images):
        ids, item = encode_image(processor, image)
        out += prompt_ids[last:at] + ids
        media.append(item)
        last = at + 1
    return out + prompt_ids[last:], media
