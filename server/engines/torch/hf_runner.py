"""Fallback runner for causal LMs outside the Llama family: the checkpoint's own forward
with a per-sequence Hugging Face cache. Sequences still interleave step by step in the
scheduler, but each decodes in its own forward pass (no shared batch)."""
from __future__ import annotations

import copy

import torch


class HFRunner:
    def __init__(self, model, slots: int, max_len: int, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.slots = slots
        self.max_len = max_len
        self.cache: dict[int, object] = {}

    @torch.inference_mode()
    def prefill(self, slots: list[int], prompts: list[list[int]]) -> torch.Tensor:
        rows = []
        for slot, ids in zip(slots, prompts):
            out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=True)
            self.cache[slot] = out.past_key_values
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows)

    @torch.inference_mode()
    def extend(self, slot: int, tokens: list[int], start: int) -> torch.Tensor:
        """Chunked prefill: `tokens` at positions start.. after the slot's cache."""
        out = self.model(
            input_ids=torch.tensor([tokens], device=self.device),
            past_key_values=self.cache.get(slot) if start else None,
            position_ids=torch.arange(start, start + len(tokens), device=self.device).unsqueeze(0),
            use_cache=True,
        )
        self.cache[slot] = out.past_key_values
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        rows = []
        for slot, tok, p in zip(slots, tokens, positions):
            out = self.model(
                input_ids=torch.tensor([[tok]], device=self.device),
                past_key_values=self.cache[slot],
                position_ids=torch.tensor([[p]], device=self.device),
                use_cache=True,
            )
            self.cache[slot] = out.past_key_values
            rows.append(out.logits[0, -1].float())
        return torch.stack(rows)

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self.cache[dst] = copy.deepcopy(self.cache[src])

    def free(self, slot: int) -> None:
        self.cache.pop(slot, None)
