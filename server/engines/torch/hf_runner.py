"""Fallback runner for causal LMs outside the Llama family: the checkpoint's own forward
with a per-sequence Hugging Face cache. Sequences still interleave step by step in the
scheduler, but each decodes in its own forward pass (no shared batch).

The cache goes in and out under the name the installed transformers uses: `cache` from
5.2x on (where `past_key_values` is deprecated), `past_key_values` before."""
from __future__ import annotations

import copy
import inspect

import torch

from .multimodal import embeddable, splice


class HFRunner:
    def __init__(self, model, slots: int, max_len: int, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.slots = slots
        self.max_len = max_len
        self.cache: dict[int, object] = {}
        self._cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _forward(self, ids: torch.Tensor, cache, positions: torch.Tensor | None = None, media=None):
        """(last-position logits [rows, vocab] float32, the updated cache). `media`: a
        multimodal.MediaSplice for the one row of `ids`, or None."""
        if media is None:
            inputs = {"input_ids": ids}
        else:  # image and audio features in place of their placeholders' embeddings
            emb = self.model.get_input_embeddings()
            inputs = {"inputs_embeds": splice(emb(embeddable(ids, emb.num_embeddings)), [media])}
        out = self.model(**inputs, position_ids=positions, use_cache=True, **{self._cache_kw: cache})
        return out.logits[:, -1].float(), getattr(out, self._cache_kw)

    @torch.inference_mode()
    def prefill(self, slots: list[int], prompts: list[list[int]], media=None) -> torch.Tensor:
        rows = []
        for i, (slot, ids) in enumerate(zip(slots, prompts)):
            logits, self.cache[slot] = self._forward(torch.tensor([ids], device=self.device), None,
                                                     media=media[i] if media else None)
            rows.append(logits[0])
        return torch.stack(rows)

    @torch.inference_mode()
    def extend(self, slot: int, tokens: list[int], start: int, media=None) -> torch.Tensor:
        """Chunked prefill: `tokens` at positions start.. after the slot's cache."""
        end = start + len(tokens)
        logits, self.cache[slot] = self._forward(
            torch.tensor([tokens], device=self.device), self.cache.get(slot) if start else None,
            torch.arange(start, end, device=self.device).unsqueeze(0),
            media.window(start, end) if media is not None else None)
        return logits

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        rows = []
        for slot, tok, p in zip(slots, tokens, positions):
            logits, self.cache[slot] = self._forward(
                torch.tensor([[tok]], device=self.device), self.cache[slot], torch.tensor([[p]], device=self.device))
            rows.append(logits[0])
        return torch.stack(rows)

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self.cache[dst] = copy.deepcopy(self.cache[src])

    def free(self, slot: int) -> None:
        self.cache.pop(slot, None)
