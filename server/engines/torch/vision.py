"""Vision-language checkpoints in the torch engine's process: the image encoder that runs
when a request is admitted, and the language model the batched runners drive.

A LLaVA-style checkpoint (`LlavaForConditionalGeneration`, and the others transformers
loads with AutoModelForImageTextToText whose inner model has `get_image_features` and a
`language_model`) is a vision tower and projector in front of an ordinary causal LM. The
prompt (templated and expanded by the model's processor in the core) holds one
placeholder token per image feature; at admission the encoder turns each image's
processor outputs (`MediaInput.arrays`) into features [n, hidden], and the prefill puts
them in place of the placeholders' embeddings (`MediaSplice`). From there on the
sequence is text to the runner: decoding is the same batched step.
"""
from __future__ import annotations

import inspect
import types
from dataclasses import dataclass

import torch


def is_vision_config(config) -> bool:
    """True for a checkpoint config with a vision tower (config.json `vision_config`)."""
    return getattr(config, "vision_config", None) is not None


def placeholder_id(config) -> int:
    """The image placeholder token id of a vision-language config."""
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"{type(config).__name__} names no image token (image_token_id / image_token_index)")


def text_view(model):
    """What the runners drive: the checkpoint's language model with its head, shaped like a
    causal LM (`.model` the decoder stack, `.lm_head`, `.config` the text config)."""
    if not is_vision_config(model.config):
        return model
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


class ImageEncoder:
    """Processor outputs of images -> projected features, with the checkpoint's own
    `get_image_features` (vision tower, feature layer and strategy, projector)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype):
        self.inner = model.model
        self.config = model.config
        self.device, self.dtype = device, dtype
        self.image_token_id = placeholder_id(model.config)
        params = inspect.signature(self.inner.get_image_features).parameters
        # Older transformers do not fill these from the config themselves.
        self.defaults = {k: getattr(self.config, k) for k in ("vision_feature_layer", "vision_feature_select_strategy")
                         if k in params and getattr(self.config, k, None) is not None}

    @torch.inference_mode()
    def encode(self, media) -> torch.Tensor:
        """[MediaInput, ...] (images, in prompt order) -> their features concatenated,
        [total placeholder tokens, hidden]."""
        out = []
        for item in media:
            kwargs = dict(self.defaults)
            for name, array in item.arrays.items():
                t = torch.as_tensor(array, device=self.device)
                kwargs[name] = t.to(self.dtype) if t.is_floating_point() else t
            feats = self.inner.get_image_features(**kwargs)
            feats = getattr(feats, "pooler_output", feats)  # transformers >= 5: a model output
            if isinstance(feats, (list, tuple)):
                feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in feats])
            out.append(feats.reshape(-1, feats.shape[-1]))
        return torch.cat(out)

    def splice_for(self, prompt_ids: list[int], media) -> MediaSplice:
        """The features of a prompt's images and its placeholder positions; ValueError when
        their counts differ (the processor and the checkpoint disagree)."""
        ids = torch.tensor(prompt_ids)
        positions = (ids == self.image_token_id).nonzero().flatten()
        features = self.encode(media)
        if positions.numel() != features.shape[0]:
            raise ValueError(f"the prompt has {positions.numel()} image placeholder tokens but its images gave "
                             f"{features.shape[0]} features")
        return MediaSplice(positions, features)
