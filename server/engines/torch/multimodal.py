"""Vision- and audio-language checkpoints in the torch engine's process: the media
encoders that run when a request is admitted, and the language model the batched
runners drive.

A LLaVA-style checkpoint (`LlavaForConditionalGeneration`, `Mistral3ForConditionalGeneration`
with its Pixtral tower and variable image grid, and the others whose inner model has
`get_image_features` and a `language_model`) is a vision tower and projector in front of
an ordinary causal LM; a Qwen2-Audio-style one (`Qwen2AudioForConditionalGeneration`)
an audio encoder (Whisper-like) and projector. The prompt (templated and expanded by the
model's processor in the core) holds one placeholder token per media feature; at
admission the encoders turn each part's processor outputs (`MediaInput.arrays`) into
features [n, hidden], and the prefill puts them in place of the placeholders' embeddings
(`MediaSplice`). From there on the sequence is text to the runner: decoding is the same
batched step.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import numpy as np
import torch

from ..base import media_kinds


def placeholder_id(config, kind: str) -> int:
    """The placeholder token id of a media kind in a multimodal config."""
    for name in (f"{kind}_token_id", f"{kind}_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} names no {kind} token ({kind}_token_id / {kind}_token_index)")


def text_view(model):
    """What the runners drive: the checkpoint's language model with its head, shaped like a
    causal LM (`.model` the decoder stack, `.lm_head`, `.config` the text config)."""
    if not media_kinds(model.config):
        return model
    if hasattr(model.model, "get_rope_index"):  # Qwen2-VL-style multimodal rotary positions
        raise ValueError(f"{type(model).__name__} places media with multimodal rotary positions (M-RoPE), which "
                         "the torch engine's runners do not compute yet; serve a LLaVA-style checkpoint")
    return types.SimpleNamespace(model=model.model.language_model, lm_head=model.lm_head,
                                 config=model.config.get_text_config())


@dataclass
class MediaSplice:
    """A prompt's media features and where they go: `positions` [n] (long, prompt
    indices of the placeholder tokens, ascending) and `features` [n, hidden]."""

    positions: torch.Tensor
    features: torch.Tensor

    def window(self, start: int, end: int) -> "MediaSplice | None":
        """The part inside prompt positions [start, end), positions made relative to start
        (chunked prefill); None when no placeholder falls there."""
        keep = (self.positions >= start) & (self.positions < end)
        if not bool(keep.any()):
            return None
        return MediaSplice(self.positions[keep] - start, self.features[keep])


def splice(h: torch.Tensor, media: list["MediaSplice | None"] | None) -> torch.Tensor:
    """Puts each row's media features in place of its placeholder embeddings: h [B, T, hidden]
    (changed in place and returned); `media[row]` None for a row without media."""
    for row, m in enumerate(media or ()):
        if m is not None:
            h[row, m.positions.to(h.device)] = m.features.to(device=h.device, dtype=h.dtype)
    return h


def embeddable(ids: torch.Tensor, n_embeddings: int) -> torch.Tensor:
    """Placeholder ids outside the embedding table (some checkpoints put the image token
    past it) as 0: their embeddings are replaced anyway."""
    return ids.masked_fill(ids >= n_embeddings, 0)


def _tensor(array, device, dtype):
    t = torch.as_tensor(array, device=device)
    return t.to(dtype) if t.is_floating_point() else t


class ImageEncoder:
    """One image's processor outputs -> its projected features, with the checkpoint's own
    `get_image_features` (vision tower, feature layer and strategy, projector)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        self.inner = model.model
        self.device, self.dtype = device, dtype
        params = inspect.signature(self.inner.get_image_features).parameters
        # Older transformers do not fill these from the config themselves.
        self.defaults = {k: getattr(model.config, k) for k in ("vision_feature_layer", "vision_feature_select_strategy")
                         if k in params and getattr(model.config, k, None) is not None}
        # Pixels per feature of a variable-grid (Pixtral) tower: patch x spatial merge.
        merge = getattr(model.config, "spatial_merge_size", None)
        self.cell = int(model.config.vision_config.patch_size) * int(merge) if merge else None

    def _lone_feature(self, arrays: dict) -> bool:
        """An image of a variable-grid tower that makes a single feature: transformers'
        Mistral3 squeezes that feature's axis away and cannot split it, so such an image
        is encoded beside a copy of itself."""
        sizes = arrays.get("image_sizes")
        return self.cell is not None and sizes is not None and len(sizes) == 1 and \
            all(int(v) // self.cell == 1 for v in sizes[0])

    def encode(self, arrays: dict) -> torch.Tensor:
        lone = self._lone_feature(arrays)
        if lone:
            arrays = {k: np.concatenate([v, v]) for k, v in arrays.items()}
        kwargs = dict(self.defaults, **{k: _tensor(v, self.device, self.dtype) for k, v in arrays.items()})
        feats = self.inner.get_image_features(**kwargs)
        feats = getattr(feats, "pooler_output", feats)  # transformers >= 5: a model output
        if isinstance(feats, (list, tuple)):
            feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
        feats = feats.reshape(-1, feats.shape[-1])
        return feats[:1] if lone else feats


class AudioEncoder:
    """One clip's processor outputs (Qwen2-Audio: `input_features` [1, mel, 3000] and
    `feature_attention_mask` [1, 3000]) -> its projected features, one per 40 ms of the
    clip: the audio tower attends over the clip's own frames only, as the checkpoint's
    forward does."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        inner = model.model
        if not (hasattr(inner, "audio_tower") and hasattr(inner, "multi_modal_projector")):
            raise ValueError(f"{type(model).__name__}: audio input needs a Qwen2-Audio-style audio_tower "
                             "and multi_modal_projector")
        self.tower, self.projector = inner.audio_tower, inner.multi_modal_projector
        self.device, self.dtype = device, dtype

    def encode(self, arrays: dict) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        feats = _tensor(arrays["input_features"], self.device, self.dtype)
        frames = torch.as_tensor(arrays["feature_attention_mask"], device=self.device).sum(-1)
        conv_len, out_len = self.tower._get_feat_extract_output_lengths(frames)
        width = (feats.shape[-1] - 2) // 2 + 1
        valid = (torch.arange(width, device=self.device)[None] < conv_len[:, None]).long()
        mask = create_bidirectional_mask(config=self.tower.config, attention_mask=valid,
                                         inputs_embeds=torch.zeros((feats.shape[0], width, 1), dtype=self.dtype,
                                                                   device=self.device))
        hidden = self.projector(self.tower(feats, attention_mask=mask).last_hidden_state)
        keep = torch.arange(hidden.shape[1], device=self.device)[None] < out_len[:, None]
        return hidden[keep]


ENCODERS = {"image": ImageEncoder, "audio": AudioEncoder}


class MediaEncoder:
    """The encoders of a multimodal checkpoint, one per media kind it takes."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        self.kinds = media_kinds(model.config)
        self.encoders = {kind: ENCODERS[kind](model, device, dtype) for kind in self.kinds}
        self.placeholder_ids = {kind: placeholder_id(model.config, kind) for kind in self.kinds}

    @torch.inference_mode()
    def encode(self, media) -> torch.Tensor:
        """[MediaInput, ...] (in prompt order) -> their features concatenated,
        [total placeholder tokens, hidden]."""
        out = []
        for item in media:
            if item.kind not in self.encoders:
                raise ValueError(f"this model takes no {item.kind} input")
            out.append(self.encoders[item.kind].encode(item.arrays))
        return torch.cat(out)

    def splice_for(self, prompt_ids: list[int], media) -> MediaSplice:
        """The features of a prompt's media and its placeholder positions; ValueError when
        their counts differ (the processor and the checkpoint disagree)."""
        ids = torch.tensor(prompt_ids)
        placeholders = torch.tensor(sorted(self.placeholder_ids.values()))
        positions = torch.isin(ids, placeholders).nonzero().flatten()
        features = self.encode(media)
        if positions.numel() != features.shape[0]:
            raise ValueError(f"the prompt has {positions.numel()} media placeholder tokens but its media gave "
                             f"{features.shape[0]} features")
        return MediaSplice(positions, features)
