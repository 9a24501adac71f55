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

#: Processor outputs that belong to the text, not to the media part.
TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "num_audio_tokens"})
NAMES = {"image": "images", "audio": "audio parts"}
#: `detail: "low"` divides a variable resolution processor's longest image edge by this.
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


def image_kwargs(processor, detail: str | None) -> dict:
    """The processor's image options for an image part's `detail`: "low" caps a variable
    resolution processor's longest edge (Pixtral's `size.longest_edge`) at 1/LOW_DETAIL_DIVISOR
    of its own, never under one token cell (patch x merge), so the image takes about
    1/LOW_DETAIL_DIVISOR^2 of the tokens; "high", "auto" and a fixed resolution processor
    (LLaVA's CLIP: every image the same size) change nothing."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    edge = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if detail != "low" or not edge:
        return {}
    cell = int(getattr(processor, "patch_size", 1) or 1) * int(getattr(processor, "spatial_merge_size", 1) or 1)
    return {"size": {"longest_edge": max(cell, int(edge) // LOW_DETAIL_DIVISOR)}}


def encode_part(processor, kind: str, value, detail: str | None = None) -> tuple[list[int], MediaInput]:
    """One RGB PIL image or float32 mono clip -> (the token ids standing for it, its
    MediaInput). `detail`: an image part's "low" / "high" / "auto" (image_kwargs)."""
    if kind == "image":
        out = processor(text=processor.image_token, images=[value], add_special_tokens=False, return_tensors="np",
                        **image_kwargs(processor, detail))
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
        queues.setdefault(kind, []).append((value, detail[0] if detail else None))
    ids_of = {placeholder_token_id(processor, kind): kind for kind in queues}
    for token, kind in ids_of.items():
        placed = prompt_ids.count(token)
        if placed != len(queues[kind]):
            raise invalid(f"This model's chat template placed {placed} of the request's {len(queues[kind])} "
                          f"{NAMES[kind]} in the prompt; send them in user messages only.", "messages")
    out: list[int] = []
    media: list[MediaInput] = []
    for token in prompt_ids:
        kind = ids_of.get(token)
        if kind is None:
            out.append(token)
            continue
        value, detail = queues[kind].pop(0)
        ids, item = encode_part(processor, kind, value, detail)
        item.placeholder, item.span = token, (len(out), len(ids))
        if keep_sources:
            item.source = value
        out += ids
        media.append(item)
    return out, media


def expand_images(prompt_ids: list[int], images: list, processor) -> tuple[list[int], list[MediaInput]]:
    """expand_media for images only."""
    return expand_media(prompt_ids, [("image", image) for image in images], processor)
