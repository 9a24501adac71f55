"""A templated prompt's media placeholders -> the model's own media tokens and inputs.

The chat template renders one placeholder token (the processor's `image_token`, e.g.
`<image>`, or `audio_token`, e.g. `<|AUDIO|>`) where each image or audio part stood;
`expand_media` asks the checkpoint's processor (transformers' AutoProcessor:
LlavaProcessor, Qwen2AudioProcessor, ...; chat/processors.py) what one part becomes, part by part: its token
sequence (LLaVA: the placeholder repeated once per feature; Pixtral: rows of them with
break and end tokens; Qwen2-Audio: one per 40 ms) and its arrays (pixels, log-mel
features). The prompt is tokenized by the template path (so text a user writes, `<image>`
included, stays text); only the template's own placeholders are expanded. Runs in a
worker thread.
"""
from __future__ import annotations

import numpy as np

from ..engines.base import MediaInput
from ..errors import invalid
from ..media.resolve import PLURALS

#: Processor outputs that belong to the text, not to the media part.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "num_audio_tokens"})
#: `detail: "low"` divides a variable resolution processor's longest image edge by this (low_detail_edge).
LOW_DETAIL_DIVISOR = 4


def placeholder_token_id(processor, kind: str) -> int:
    """The token id the chat template writes for a part of this kind ("image", "audio")."""
    token_id = getattr(processor, f"{kind}_token_id", None)
    if isinstance(token_id, int):
        return token_id
    return processor.tokenizer.convert_tokens_to_ids(getattr(processor, f"{kind}_token"))


def sampling_rate(processor) -> int:
    """The audio sample rate the processor's feature extractor wants (Hz)."""
    return int(getattr(processor.feature_extractor, "sampling_rate", 16_000))


def max_audio_seconds(processor) -> float | None:
    """The longest clip the model's feature extractor takes whole (Whisper-style: 30 s)."""
    fe = getattr(processor, "feature_extractor", None)
    n = getattr(fe, "n_samples", None)
    return n / sampling_rate(processor) if n else None


def low_detail_edge(processor) -> int | None:
    """The longest image edge `detail: "low"` asks of a variable resolution processor
    (Pixtral's `size.longest_edge`): 1/LOW_DETAIL_DIVISOR of its own, never under one token
    cell (patch x merge), so an image takes about 1/LOW_DETAIL_DIVISOR^2 of the tokens.
    None for a fixed resolution processor (LLaVA's CLIP: every image the same size)."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    edge = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if not edge:
        return None
    cell = int(getattr(processor, "patch_size", 1) or 1) * int(getattr(processor, "spatial_merge_size", 1) or 1)
    return max(cell, int(edge) // LOW_DETAIL_DIVISOR)


def detail_image(processor, image, detail: str | None):
    """The image an image part's `detail` hands the processor: for "low", where the
    processor has a low_detail_edge, a copy scaled down (bicubic, aspect kept) to fit it;
    else the image itself ("high", "auto"). Scaled before the processor, not by its
    options, so a backend that takes the decoded image (TensorRT-LLM) gets the same one."""
    edge = low_detail_edge(processor) if detail == "low" else None
    if edge is None or max(image.size) <= edge:
        return image
    from PIL import Image

    small = image.copy()
    small.thumbnail((edge, edge), Image.Resampling.BICUBIC)
    return small


def encode_part(processor, kind: str, value) -> tuple[list[int], MediaInput]:
    """One RGB PIL image or float32 mono clip -> (the token ids standing for it, its MediaInput)."""
    if kind == "image":
        out = processor(text=processor.image_token, images=[value], add_special_tokens=False, return_tensors="np")
    else:
        out = processor(text=processor.audio_token, audio=[value], sampling_rate=sampling_rate(processor),
                        add_special_tokens=False, return_tensors="np")
    ids = [int(t) for t in np.asarray(out["input_ids"])[0]]
    arrays = {k: np.asarray(v) for k, v in out.items() if k not in TEXT_KEYS}
    return ids, MediaInput(kind, arrays)


def expand_media(prompt_ids: list[int], parts: list[tuple[str, object]], processor,
                 keep_sources: bool = False) -> tuple[list[int], list[MediaInput]]:
    """The prompt with each placeholder replaced by its part's tokens, and the parts'
    MediaInputs in prompt order. `parts`: (kind, image or samples[, detail]) in request
    order (the order the template places them; detail: an image's "low" / "high" /
    "auto"); `keep_sources`: each MediaInput keeps its part too. INVALID_ARGUMENT (param `messages`) when the
    template did not place exactly one placeholder per part (it dropped some: e.g. parts
    in a role it does not render)."""
    queues: dict[str, list] = {}
    for kind, value, *detail in parts:
        queues.setdefault(kind, []).append(detail_image(processor, value, detail[0]) if detail else value)
    ids_of = {placeholder_token_id(processor, kind): kind for kind in queues}
    for token, kind in ids_of.items():
        placed = prompt_ids.count(token)
        if placed != len(queues[kind]):
            raise invalid(f"This model's chat template placed {placed} of the request's {len(queues[kind])} "
                          f"{PLURALS[kind]} in the prompt; send them in user messages only.", "messages")
    out: list[int] = []
    media: list[MediaInput] = []
    for token in prompt_ids:
        kind = ids_of.get(token)
        if kind is None:
            out.append(token)
            continue
        value = queues[kind].pop(0)
        ids, item = encode_part(processor, kind, value)
        item.placeholder, item.span = token, (len(out), len(ids))
        if keep_sources:
            item.source = value
        out += ids
        media.append(item)
    return out, media
