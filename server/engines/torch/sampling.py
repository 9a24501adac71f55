"""Per-request logits processing and sampling inside a shared batch.

Penalties, logit_bias, temperature, top_p and the draw are computed for the whole batch at
once; each sampled sequence contributes one uniform number from its own generator, so a
seeded request samples the same tokens whatever else shares its batch.
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
    """Applies logit_bias and presence/frequency penalties, to the rows that have them
    only. logits: [B, vocab] float32; returns `logits` itself when no row has either (the
    forward's logits are inference tensors: a copy is changed, never them)."""
    penalized = [i for i, s in enumerate(samplers) if s.params.presence_penalty or s.params.frequency_penalty]
    biased = [i for i, s in enumerate(samplers) if s.bias is not None]
    if not penalized and not biased:
        return logits
    out = logits.clone()
    if penalized:
        counts = torch.stack([samplers[i].counts for i in penalized])
        pres = logits.new_tensor([samplers[i].params.presence_penalty for i in penalized]).unsqueeze(1)
        freq = logits.new_tensor([samplers[i].params.frequency_penalty for i in penalized]).unsqueeze(1)
        out[penalized] -= pres * (counts > 0) + freq * counts
    if biased:
        out[biased] += torch.stack([samplers[i].bias for i in biased])
    return out


def sample(logits: torch.Tensor, samplers: list[SeqSampler]) -> list[int]:
    """Draws one token per row from processed logits [B, vocab], vectorized over the batch
    with one device-to-host transfer (the final list).

    Greedy rows take the argmax. Each sampled row draws one uniform number from its own
    generator and takes the token where it falls in the row's cumulative distribution
    (inverse-CDF sampling, with its temperature and top_p): in vocabulary order, or, with
    top_p, in order of probability. A row's draw depends only on its own logits and
    generator, so a seeded row draws the same tokens whatever else shares the batch."""
    tokens = logits.argmax(dim=-1)
    for nucleus in (False, True):
        rows = [i for i, s in enumerate(samplers) if s.generator is not None and (s.params.top_p < 1.0) == nucleus]
        if rows:
            tokens[rows] = _draw(logits[rows], [samplers[i] for i in rows], nucleus)
    return tokens.tolist()


def _draw(logits: torch.Tensor, samplers: list[SeqSampler], nucleus: bool) -> torch.Tensor:
    """One token per row of `logits` [R, vocab] by inverse CDF: [R] token ids. `nucleus`:
    every row has top_p < 1."""
    temperature = logits.new_tensor([s.params.temperature for s in samplers]).unsqueeze(1)
    probs = torch.softmax(logits / temperature, dim=-1)
    ids = None
    if nucleus:
        # Keep the smallest prefix (by probability) whose mass reaches top_p (always at
        # least one token).
        top_p = logits.new_tensor([s.params.top_p for s in samplers]).unsqueeze(1)
        probs, ids = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=s.generator, device=logits.device) for s in samplers])
    # right=True: the first index whose cdf exceeds u × total, a token of non-zero mass.
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).clamp_(max=cdf.shape[1] - 1)
    return (picked if ids is None else ids.gather(1, picked)).squeeze(1)


def logprobs_of(logits: torch.Tensor, tokens: list[int], k: int):
    """Log-probabilities (of the processed distribution, before temperature) of the chosen
    tokens and the top-k alternatives: ([B], [B, k] values, [B, k] ids)."""
    lp = torch.log_softmax(logits, dim=-1)
    chosen = lp.gather(1, torch.tensor(tokens, device=lp.device).unsqueeze(1)).squeeze(1).tolist()
    if k:
        vals, ids = lp.topk(k, dim=-1)
        return chosen, vals.tolist(), ids.tolist()
    return chosen, None, None
