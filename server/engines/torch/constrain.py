"""Grammar-constrained sampling inside the shared batch (xgrammar).

Each constrained sequence has its own matcher (server/chat/grammar.py compiles the
grammar); per step, `fill_masks` writes one token bitmask row per constrained sequence
(the scheduler runs it on a thread while the forward pass computes the logits) and
`apply_masks` sets the logits of every token the grammar forbids to -inf in those rows
only; unconstrained rows are untouched. After sampling, each matcher accepts its token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BatchMask:
    """Bitmask [B, ceil(vocab/32)] int32 of a batch; only `rows` were filled."""

    bitmask: torch.Tensor
    rows: list[int]


def fill_masks(matchers: list, vocab_size: int) -> BatchMask | None:
    """One bitmask row per sequence that has a matcher (None entries: unconstrained);
    None when no sequence is constrained."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return None
    import xgrammar as xgr

    bitmask = xgr.allocate_token_bitmask(len(matchers), vocab_size)
    for i in rows:
        matchers[i].fill_next_token_bitmask(bitmask, i)
    return BatchMask(bitmask, rows)


def apply_masks(logits: torch.Tensor, mask: BatchMask | None) -> None:
    """Forbidden tokens of the masked rows -> -inf, in place. logits: [B, vocab] float32."""
    if mask is None:
        return
    import xgrammar as xgr

    xgr.apply_token_bitmask_inplace(logits, mask.bitmask.to(logits.device), indices=mask.rows)
