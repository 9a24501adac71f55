"""Per-request logits processing and sampling inside a shared batch.

Penalties, logit_bias, temperature, top_p and the draw are computed for the whole batch at
once; each sampled sequence contributes one uniform number from its own generator, so a
seeded request samples the same tokens whatever else shares its batch.

A decode step of hundreds of sequences pays this on top of its forward pass
(bench/step_overhead.py), so every [B, vocab] pass counts: penalties and logit_bias
change only the entries they name (sparse, in place), greedy rows take the argmax of
their own rows only, top_p orders only a row's top `NUCLEUS_TOPK` candidates (a full sort
only when its nucleus is wider), and logprobs are computed for the rows that ask.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..base import GREEDY_BELOW_TEMPERATURE, SamplingParams

#: top_p candidates taken by a partial top-k before a row falls back to a full sort: a
#: nucleus is usually tens to hundreds of tokens wide, and the top 512 of a 32k row cost
#: a fraction of sorting it (bench/RESULTS.md, issue 17).
NUCLEUS_TOPK = 512


@dataclass
class SeqSampler:
    """Sampling state of one sequence (one choice)."""

    params: SamplingParams
    generator: torch.Generator | None  # None: greedy
    # The completion's distinct tokens in first-seen order and how often each came, kept
    # only when a penalty reads them: penalties update those entries, not the vocabulary.
    seen: list[int] = field(default_factory=list)
    times: list[int] = field(default_factory=list)
    _where: dict[int, int] = field(default_factory=dict)  # token -> its index in `seen`
    bias_ids: list[int] = field(default_factory=list)  # logit_bias within the vocabulary
    bias_values: list[float] = field(default_factory=list)

    @classmethod
    def create(cls, params: SamplingParams, seed: int, vocab: int, device: torch.device) -> "SeqSampler":
        gen = None
        # Greedy below the threshold (NaN and negatives too) whoever built the params:
        # `sample` divides the logits by the temperature of every sequence with a generator.
        if params.temperature >= GREEDY_BELOW_TEMPERATURE:
            gen = seeded_generator(seed, device)
        ids = [i for i in params.logit_bias if 0 <= i < vocab]
        return cls(params, gen, bias_ids=ids, bias_values=[float(params.logit_bias[i]) for i in ids])

    def observe(self, token: int) -> None:
        if not (self.params.presence_penalty or self.params.frequency_penalty):  # the only readers
            return
        i = self._where.get(token)
        if i is None:
            self._where[token] = len(self.seen)
            self.seen.append(token)
            self.times.append(1)
        else:
            self.times[i] += 1


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


@torch.inference_mode()  # the forward's logits are inference tensors, changed in place here
def process_logits(logits: torch.Tensor, samplers: list[SeqSampler]) -> torch.Tensor:
    """Applies presence/frequency penalties, then logit_bias, in place, to the entries they
    change only. logits: [B, vocab] float32; returns `logits`.

    Per entry the arithmetic is the dense form's: x - (presence + frequency * count),
    then + bias; entries no penalty or bias names are not touched."""
    rows, ids, amounts = [], [], []
    pen_rows, pres, freq = [], [], []
    for r, s in enumerate(samplers):
        if s.seen:
            pen_rows.extend([r] * len(s.seen))
            ids.extend(s.seen)
            amounts.extend(s.times)
            pres.append(s.params.presence_penalty)
            freq.append(s.params.frequency_penalty)
    if pen_rows:
        per_row = torch.tensor([len(s.seen) for s in samplers if s.seen], device=logits.device)
        times = torch.tensor(amounts, dtype=logits.dtype, device=logits.device)
        pen = (logits.new_tensor(pres).repeat_interleave(per_row)
               + logits.new_tensor(freq).repeat_interleave(per_row) * times)
        at = (torch.tensor(pen_rows, device=logits.device), torch.tensor(ids, device=logits.device))
        logits.index_put_(at, logits[at] - pen)
    for r, s in enumerate(samplers):
        if s.bias_ids:
            rows.extend([r] * len(s.bias_ids))
    if rows:
        bias_ids = [i for s in samplers for i in s.bias_ids]
        values = [v for s in samplers for v in s.bias_values]
        logits.index_put_((torch.tensor(rows, device=logits.device), torch.tensor(bias_ids, device=logits.device)),
                          logits.new_tensor(values), accumulate=True)
    return logits


def sample(logits: torch.Tensor, samplers: list[SeqSampler]) -> list[int]:
    """Draws one token per row from processed logits [B, vocab], vectorized over the batch
    with one device-to-host transfer (the final list).

    Greedy rows take the argmax. Each sampled row draws one uniform number from its own
    generator and takes the token where it falls in the row's cumulative distribution
    (inverse-CDF sampling, with its temperature and top_p): in vocabulary order, or, with
    top_p, in order of probability. A row's draw depends only on its own logits and
    generator, so a seeded row draws the same tokens whatever else shares the batch."""
    kinds: tuple[list[int], list[int], list[int]] = ([], [], [])  # greedy, plain, nucleus rows
    for i, s in enumerate(samplers):
        kinds[0 if s.generator is None else 2 if s.params.top_p < 1.0 else 1].append(i)
    greedy, plain, nucleus = kinds
    if len(greedy) == len(samplers):
        return _argmax(logits).tolist()
    tokens = torch.empty(len(samplers), dtype=torch.long, device=logits.device)
    for rows, draw in ((greedy, None), (plain, _draw_plain), (nucleus, _draw_nucleus)):
        if not rows:
            continue
        index = torch.tensor(rows, device=logits.device)
        part = _rows_of(logits, rows)
        if draw is None:
            tokens[index] = _argmax(part)
            continue
        chosen = [samplers[i] for i in rows]
        temperature = logits.new_tensor([s.params.temperature for s in chosen]).unsqueeze(1)
        # Into its own copy of the rows where there is one (`logits` stays for logprobs).
        probs = torch.softmax(part / temperature if part is logits else part.div_(temperature), dim=-1)
        u = torch.cat([torch.rand(1, generator=s.generator, device=logits.device) for s in chosen])
        tokens[index] = draw(probs, chosen, u)
    return tokens.tolist()


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    """[B] index of each row's maximum (the first of equals; NaN wins, as for argmax):
    torch's CPU max kernel is vectorized where argmax is not (about 4x faster)."""
    return logits.max(dim=-1).indices


def _pick(cdf: torch.Tensor, u: torch.Tensor, last: torch.Tensor | int) -> torch.Tensor:
    """[R, 1] index of the first entry of each row of `cdf` [R, n] above u × its total
    (right=True: a token of non-zero mass), at most `last`."""
    picked = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True)
    return picked.clamp_(max=last) if isinstance(last, int) else torch.minimum(picked, last)


def _draw_plain(probs: torch.Tensor, samplers: list[SeqSampler], u: torch.Tensor) -> torch.Tensor:
    """[R] tokens drawn in vocabulary order from probs [R, vocab]."""
    return _pick(probs.cumsum(-1), u, probs.shape[1] - 1).squeeze(1)


def _draw_nucleus(probs: torch.Tensor, samplers: list[SeqSampler], u: torch.Tensor) -> torch.Tensor:
    """[R] tokens drawn from the nucleus of each row of probs [R, vocab]: the smallest
    prefix by probability whose mass reaches top_p (always at least one token).

    On the CPU the top NUCLEUS_TOPK candidates (sorted) decide it for every row whose
    nucleus ends inside them without ties, and only the other rows sort their whole row:
    the same prefix sums and the tokens in the same order, so the same token is drawn.
    Elsewhere every row is sorted (cheap on a GPU, and no row count to read back)."""
    top_p = probs.new_tensor([s.params.top_p for s in samplers]).unsqueeze(1)
    k = min(NUCLEUS_TOPK, probs.shape[1])
    if probs.device.type != "cpu" or k == probs.shape[1]:
        return _draw_sorted(probs, top_p, u)
    vals, ids = probs.topk(k, dim=-1)
    kept = vals.cumsum(-1) - vals < top_p
    width = kept.sum(-1, keepdim=True)
    # Rows the candidates cannot decide as the full sort does: a nucleus that may go on
    # past them, or equal probabilities in it (the sort orders those its own way).
    wide = ((width >= k).squeeze(1) | ((vals[:, 1:] == vals[:, :-1]) & kept[:, :-1]).any(-1)).nonzero().squeeze(1)
    vals.masked_fill_(~kept, 0.0)
    tokens = ids.gather(1, _pick(vals.cumsum(-1), u, (width - 1).clamp_(min=0))).squeeze(1)
    if len(wide):
        tokens[wide] = _draw_sorted(probs.index_select(0, wide), top_p[wide], u[wide])
    return tokens


def _draw_sorted(probs: torch.Tensor, top_p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """`_draw_nucleus` with each whole row sorted by probability; top_p: [R, 1]."""
    probs, ids = probs.sort(dim=-1, descending=True)
    kept = probs.cumsum(-1) - probs < top_p
    last = (kept.sum(-1, keepdim=True) - 1).clamp_(min=0)  # the least likely token kept
    return ids.gather(1, _pick(probs.masked_fill_(~kept, 0.0).cumsum(-1), u, last)).squeeze(1)


def logprobs_of(logits: torch.Tensor, tokens: list[int], k: int | list[int], rows: list[int] | None = None):
    """Log-probabilities (of the processed distribution, before temperature) of the chosen
    tokens of `rows` (default: all) and their top-k alternatives; `k`: one count for every
    row, or one per row of `rows`. Returns ([B], [B, k] values, [B, k] ids), lists indexed
    by batch row, None for rows not asked for or asking no alternatives (the last two are
    None when no row asks any)."""
    b = logits.shape[0]
    rows = list(range(b)) if rows is None else rows
    ks = [k] * len(rows) if isinstance(k, int) else k
    part = _rows_of(logits, rows)
    lp = torch.log_softmax(part, dim=-1)
    asked = torch.tensor([tokens[r] for r in rows], device=lp.device).unsqueeze(1)
    chosen = _by_row(lp.gather(1, asked).squeeze(1).tolist(), rows, b)
    top = [j for j, n in enumerate(ks) if n]
    if not top:
        return chosen, None, None
    vals, ids = _rows_of(lp, top).topk(max(ks), dim=-1)
    top_rows = [rows[j] for j in top]
    return chosen, _by_row(vals.tolist(), top_rows, b), _by_row(ids.tolist(), top_rows, b)


def _rows_of(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Those rows of `t` (itself when they are all of them, in order)."""
    if len(rows) == t.shape[0]:
        return t
    return t.index_select(0, torch.tensor(rows, device=t.device))


def _by_row(values: list, rows: list[int], b: int) -> list:
    if len(rows) == b:
        return values
    out = [None] * b
    for r, v in zip(rows, values):
        out[r] = v
    return out
