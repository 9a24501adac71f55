"""Vectorized sampling (issue 17): the seeded draws of a mixed batch are pinned to what the
per-row code drew before, whichever path a row takes (partial top-k or full sort for
top_p, sparse penalties and logit_bias, argmax of greedy rows only), and each row draws
the same tokens alone as in any batch."""
import resource

import pytest
import torch

from server.engines.base import SamplingParams
from server.engines.torch import sampling
from server.engines.torch.direct_decode import DirectDecoder, decoder_for
from server.engines.torch.host_memory import keep_freed_memory
from server.engines.torch.sampling import SeqSampler, logprobs_of, process_logits, sample

VOCAB = 4096  # wider than NUCLEUS_TOPK: both top_p paths run
SETTINGS = [dict(temperature=0), dict(temperature=0.7, seed=11), dict(temperature=1.3, top_p=0.8, seed=12),
            dict(temperature=1.0, top_p=0.3, seed=13), dict(temperature=1.0, top_p=0.995, seed=14),
            dict(temperature=0.9, presence_penalty=1.5, frequency_penalty=0.5, seed=15),
            dict(temperature=0, frequency_penalty=2.0),
            dict(temperature=1.0, top_p=0.9, logit_bias={3: 5.0, 4: -100.0}, seed=16),
            dict(temperature=1.0, logit_bias={7: 2.0}, presence_penalty=-1.0, seed=17)]
SHARPNESS = [4.0, 0.3, 2.0, 6.0, 1.0, 3.0, 1.0, 2.5, 0.5]  # logits scale per row: narrow to wide nuclei

# Drawn by the sampler before issue 17 (dense penalties and bias, a full sort per top_p
# row, argmax over the whole batch), 25 steps of each row of SETTINGS.
EXPECTED = [
    [1931, 2793, 2122, 1077, 2033, 685, 1694, 392, 442, 563, 918, 905, 2310, 4083, 1486, 373, 2628, 1525, 714, 3616, 1229, 923, 1242, 1804, 544],
    [2446, 3387, 1110, 1951, 2651, 2997, 3317, 2739, 1353, 3667, 680, 372, 2359, 2931, 317, 3591, 1741, 448, 3468, 1430, 2083, 180, 2743, 1777, 188],
    [3197, 2014, 251, 599, 1179, 1110, 1122, 2715, 4016, 3681, 4033, 2169, 319, 2837, 1253, 535, 2473, 1788, 1690, 1955, 118, 3932, 1157, 3597, 823],
    [1604, 2817, 714, 317, 580, 2896, 3843, 3343, 2484, 3217, 1618, 671, 1223, 2629, 3600, 3019, 3229, 479, 2295, 3939, 617, 309, 1164, 2623, 358],
    [1977, 270, 2870, 2014, 1003, 1191, 3488, 847, 2578, 3436, 3884, 768, 1967, 1651, 245, 1252, 645, 801, 2011, 3216, 302, 3193, 615, 1742, 1259],
    [1721, 602, 3886, 2934, 538, 2549, 3509, 2698, 513, 866, 2497, 2432, 3645, 2241, 3559, 3890, 2462, 3757, 2069, 999, 1258, 3160, 212, 1473, 749],
    [1846, 765, 2018, 292, 3373, 1373, 3840, 1115, 1850, 829, 2653, 272, 2267, 3841, 3461, 3323, 2463, 3330, 520, 63, 1816, 3864, 135, 2592, 1664],
    [1111, 3922, 3, 1652, 2231, 772, 3927, 104, 3325, 3549, 800, 661, 3021, 3162, 1485, 3349, 3066, 3271, 3723, 2799, 3348, 3666, 2746, 4004, 1586],
    [95, 2910, 1859, 3707, 926, 3685, 3316, 2371, 2310, 2099, 715, 187, 331, 315, 2069, 2588, 1467, 603, 2728, 3130, 2721, 4085, 1764, 701, 1540],
]


def samplers(indices):
    return [SeqSampler.create(SamplingParams(**{k: v for k, v in SETTINGS[i].items() if k != "seed"}),
                              SETTINGS[i].get("seed", 0), VOCAB, torch.device("cpu")) for i in indices]


def steps(n=25):
    gen = torch.Generator().manual_seed(123)
    scale = torch.tensor(SHARPNESS).unsqueeze(1)
    return [torch.randn(len(SETTINGS), VOCAB, generator=gen) * scale for _ in range(n)]


def draw(indices, logits_per_step):
    """Tokens per row of `indices` over the steps, those rows sampled as one batch."""
    ss, out = samplers(indices), []
    for logits in logits_per_step:
        rows = logits[indices].clone()
        toks = sample(process_logits(rows, ss), ss)
        for s, t in zip(ss, toks):
            s.observe(t)
        out.append(toks)
    return [list(r) for r in zip(*out)]


def test_seeded_draws_are_those_of_the_sampler_before_the_rewrite():
    assert draw(list(range(len(SETTINGS))), steps()) == EXPECTED


def test_a_row_draws_the_same_alone_in_any_batch():
    logits = steps()
    alone = [draw([i], logits)[0] for i in range(len(SETTINGS))]
    assert alone == EXPECTED
    assert draw([8, 2, 5, 0], logits) == [EXPECTED[8], EXPECTED[2], EXPECTED[5], EXPECTED[0]]


@pytest.mark.parametrize("topk", [1, 8, VOCAB])
def test_top_p_draws_the_same_whether_its_candidates_or_a_full_sort_decide(monkeypatch, topk):
    """A nucleus narrower than the top-k candidates is drawn from them; a wider one from
    the whole row sorted: the same prefix sums, so the same token."""
    monkeypatch.setattr(sampling, "NUCLEUS_TOPK", topk)
    nucleus_rows = [i for i, s in enumerate(SETTINGS) if s.get("top_p", 1) < 1]
    assert draw(nucleus_rows, steps()) == [EXPECTED[i] for i in nucleus_rows]


def test_penalties_and_bias_change_only_the_entries_they_name():
    s = samplers([5, 8])  # presence 1.5 + frequency 0.5; bias {7: 2} with presence -1
    for tok in (9, 9, 3):
        s[0].observe(tok)
    s[1].observe(9)
    logits = torch.zeros(2, VOCAB)
    out = process_logits(logits, s)
    assert out is logits  # in place
    assert out[0, 9].item() == -(1.5 + 0.5 * 2) and out[0, 3].item() == -(1.5 + 0.5)
    assert out[1, 9].item() == 1.0 and out[1, 7].item() == 2.0
    out[0, [9, 3]] = 0
    out[1, [9, 7]] = 0
    assert not out.any()


def test_logprobs_of_some_rows_are_those_of_the_whole_batch():
    logits = torch.randn(5, 300)
    tokens = [3, 1, 4, 1, 5]
    chosen, vals, ids = logprobs_of(logits, tokens, 3)
    some = logprobs_of(logits, tokens, 3, [1, 4])
    assert some == ([None, chosen[1], None, None, chosen[4]], [None, vals[1], None, None, vals[4]],
                    [None, ids[1], None, None, ids[4]])
    assert logprobs_of(logits, tokens, 0, [2]) == ([None, None, chosen[2], None, None], None, None)
    # Alternatives only for the rows that ask (top_logprobs per row).
    assert logprobs_of(logits, tokens, [0, 3, 2], [0, 1, 3]) == (
        [chosen[0], chosen[1], None, chosen[3], None], [None, vals[1], None, vals[3], None],
        [None, ids[1], None, ids[3], None])


class FakeFast:
    """A fast tokenizer's surface: the Rust backend and the clean-up flag."""

    def __init__(self, clean_up):
        self._tokenizer = self
        self.clean_up_tokenization_spaces = clean_up

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(97 + i) for i in ids) + ("" if skip_special_tokens else "!")


def test_detokenizers_decode_straight_from_the_backend_only_when_that_is_the_same_text():
    direct = decoder_for(FakeFast(clean_up=False))
    assert isinstance(direct, DirectDecoder)
    assert direct.decode([0, 1], skip_special_tokens=True) == "ab" and direct.decode([2]) == "c!"
    cleaning = FakeFast(clean_up=True)
    assert decoder_for(cleaning) is cleaning
    slow = object()
    assert decoder_for(slow) is slow


def test_step_sized_tensors_reuse_the_heap_once_freed_memory_is_kept():
    """A [320, 32000] float32 logits matrix (41 MB) is above glibc's largest default mmap
    threshold: without keep_freed_memory each one is a fresh mmap, every page faulted in."""
    assert keep_freed_memory()  # glibc on every machine this project runs on
    rows = 320
    pages = rows * 32000 * 4 // 4096

    def faults_of_steps(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            torch.ones(rows, 32000).sum()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_steps(8)  # the heap grows to its working size (alignment leaves gaps at first)
    faults = faults_of_steps(8)
    assert faults < pages, (faults, pages)  # 8 fresh mmaps would fault 8 x pages
