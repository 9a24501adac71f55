"""Per-request logits processing and sampling inside a shared batch.

Penalties and logit_bias are applied to the whole batch at once; the draw itself uses
each sequence's own generator so a seeded request samples the same tokens whatever else
shares its batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..base import GREEDY_BELOW_TEMPERATURE, SamplingParams


@dataclass
class SeqSampler:
    """Sampling state of one sequence (one choice)."""

    params: SamplingParams
    generator: torch.Generator | None  # None: greedy
    counts: torch.Tensor  # [vocab] occurrences of each token in the completion so far
    bias: torch.Tensor | None  # [vocab] dense logit_bias, or None

    @classmethod
    def create(cls, params: SamplingParams, seed: int, vocab: int, device: torch.device) -> "SeqSampler":
        gen = None
        # Greedy below the threshold (NaN and negatives too) whoever built the params:
        # `sample` divides the logits by the temperature of every sequence with a generator.
        if params.temperature >= GREEDY_BELOW_TEMPERATURE:
            gen = seeded_generator(seed, device)
        bias = None
        if params.logit_bias:
            bias = torch.zeros(vocab, device=device)
            ids = [i for i in params.logit_bias if 0 <= i < vocab]
            bias[ids] = torch.tensor([params.logit_bias[i] for i in ids], device=device)
        return cls(params, gen, torch.zeros(vocab, device=device), bias)

    def observe(self, token: int) -> None:
        if self.params.presence_penalty or self.params.frequency_penalty:  # the only readers
            self.counts[token] += 1


_U64 = (1 << 64) - 1
_MT_WORDS = 624  # 32-bit words of the mt19937 state
_MT_STATE_OFFSET = 24  # CPU generator state: initial seed u64, left i32, seeded i32, next u64


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch generator whose stream depends on all 64 bits of `seed` (any int; negative
    int64 seeds fold onto uint64, so distinct int64 seeds give distinct streams).

    CUDA's Philox takes the 64-bit seed as is. The CPU generator's mt19937 keeps only the
    low 32 bits of `manual_seed` (seeds s and s - 2**63 would give one stream), so its
    624-word state is filled from numpy's SeedSequence of the whole seed instead, the
    way numpy seeds its own MT19937 from seeds of any size."""
    seed &= _U64
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    if gen.device.type != "cpu":
        return gen
    import numpy as np

    words = np.random.SeedSequence(seed).generate_state(_MT_WORDS, np.uint32).astype("<u8")
    state = gen.get_state().numpy().copy()  # uint8 view of torch's CPU generator state
    end = _MT_STATE_OFFSET + 8 * _MT_WORDS
    state[_MT_STATE_OFFSET:end] = np.frombuffer(words.tobytes(), dtype=np.uint8)
    gen.set_state(torch.from_numpy(state))
    return gen


def process_logits(logits: torch.Tensor, samplers: list[SeqSampler]) -> torch.Tensor:
    """Applies logit_bias and presence/frequency penalties. logits: [B, vocab] float32."""
    out = logits
    needs_pen = any(s.params.presence_penalty or s.params.frequency_penalty for s in samplers)
    if needs_pen:
        counts = torch.stack([s.counts for s in samplers])
        pres = logits.new_tensor([s.params.presence_penalty for s in samplers]).unsqueeze(1)
        freq = logits.new_tensor([s.params.frequency_penalty for s in samplers]).unsqueeze(1)
        out = out - pres * (counts > 0) - freq * counts
    if any(s.bias is not None for s in samplers):
        if out is logits:
            out = logits.clone()
        for i, s in enumerate(samplers):
            if s.bias is not None:
                out[i] += s.bias
    return out


def sample(logits: torch.Tensor, samplers: list[SeqSampler]) -> list[int]:
    """Draws one token per row from processed logits [B, vocab]."""
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, s in enumerate(samplers):
        if s.generator is None:
            tokens.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / s.params.temperature, dim=-1)
        if s.params.top_p < 1.0:
            probs = _top_p(probs, s.params.top_p)
        tokens.append(int(torch.multinomial(probs, 1, generator=s.generator)))
    return tokens


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, idx = probs.sort(descending=True)
    cum = sorted_p.cumsum(-1)
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    drop = cum - sorted_p >= top_p
    sorted_p[drop] = 0
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_p)


def logprobs_of(logits: torch.Tensor, tokens: list[int], k: int):
    """Log-probabilities (of the processed distribution, before temperature) of the chosen
    tokens and the top-k alternatives: ([B], [B, k] values, [B, k] ids)."""
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
    if k:
        vals, ids = lp.topk(k, dim=-1)
        return chosen, vals.tolist(), ids.tolist()
    return chosen, None, None
