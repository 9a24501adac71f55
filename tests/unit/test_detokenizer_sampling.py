import pytest
import torch

from server.engines.base import GREEDY_BELOW_TEMPERATURE, SamplingParams
from server.engines.detokenizer import Detokenizer, token_bytes
from server.engines.torch.sampling import SeqSampler, logprobs_of, process_logits, sample, seeded_generator


class CharTokenizer:
    """One token per character; enough to exercise stop-string holding."""

    all_special_ids = []

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def run(text, stop):
    d = Detokenizer(CharTokenizer(), [], stop)
    out = []
    for ch in text:
        d.push(ord(ch))
        t, hit = d.take()
        out.append(t)
        if hit:
            return "".join(out), hit
    return "".join(out) + d.flush(), None


def test_stop_string_spanning_tokens_is_cut_and_never_released():
    assert run("hello world, goodbye", ["wor"]) == ("hello ", "wor")
    assert run("abcabd", ["abd"]) == ("abc", "abd")


def test_partial_stop_prefix_released_when_it_diverges():
    d = Detokenizer(CharTokenizer(), [], ["END"])
    released = ""
    for ch in "xEN":
        d.push(ord(ch))
        released += d.take()[0]
    assert released == "x"  # "EN" held back: could become "END"
    d.push(ord("d"))
    released += d.take()[0]
    assert released == "xENd"


def test_earliest_of_several_stops_wins():
    assert run("one two three", ["three", "two"]) == ("one ", "two")


def test_no_stop_releases_everything():
    assert run("plain text", []) == ("plain text", None)


def _samplers(n, **kw):
    return [SeqSampler.create(SamplingParams(**kw), seed=7, vocab=10, device=torch.device("cpu")) for _ in range(n)]


def test_greedy_and_logit_bias():
    logits = torch.tensor([[0.0, 5.0, 1.0, 0, 0, 0, 0, 0, 0, 0]])
    assert sample(logits, _samplers(1, temperature=0)) == [1]
    s = _samplers(1, temperature=0, logit_bias={1: -100.0, 3: 100.0})
    assert sample(process_logits(logits, s), s) == [3]


@pytest.mark.parametrize("temperature", [5e-324, 1e-30, 1e-6, 9.99e-6, -0.5, float("nan")])
def test_the_sampler_itself_is_greedy_below_the_temperature_floor(temperature):
    """Whoever built the params (not only the convert layer): below 1e-5 the draw is the
    argmax, never a division that overflows to inf and a softmax of NaN."""
    logits = torch.tensor([[0.0, 5.0, 4.999, 1.0, 0, 0, 0, 0, 0, 0], [3.0, -1.0, 0, 0, 0, 0, 0, 0, 0, 2.5]])
    s = _samplers(2, temperature=temperature)
    assert all(x.generator is None for x in s)
    assert sample(logits, s) == [1, 0]


def test_the_temperature_floor_itself_samples():
    s = _samplers(1, temperature=GREEDY_BELOW_TEMPERATURE)
    assert s[0].generator is not None
    assert sample(torch.tensor([[0.0, 5.0, 1.0, 0, 0, 0, 0, 0, 0, 0]]), s) == [1]  # finite, and sharp


def test_penalties_use_completion_counts():
    s = _samplers(1, temperature=0, presence_penalty=1.0, frequency_penalty=2.0)
    s[0].observe(1)
    s[0].observe(1)
    out = process_logits(torch.zeros(1, 10), s)
    assert out[0, 1].item() == -1.0 - 4.0
    assert out[0, 0].item() == 0.0


def test_seeded_sampling_is_reproducible_and_independent_of_batch():
    logits = torch.randn(3, 10)
    a = [sample(logits[i:i + 1], _samplers(1, temperature=1.0))[0] for i in range(3)]
    b = sample(logits, _samplers(3, temperature=1.0))
    assert a == b


def test_a_mixed_batch_samples_each_row_as_if_alone():
    """Greedy, tempered, top_p and penalized rows in one batch, over many steps: every row
    draws what it draws alone (sampling is vectorized, the randomness is per row)."""
    settings = [dict(temperature=0), dict(temperature=0.7, seed=1), dict(temperature=1.3, top_p=0.8, seed=2),
                dict(temperature=1.0, top_p=0.3, seed=3), dict(temperature=1.0, presence_penalty=1.5, seed=4)]

    def samplers():
        return [SeqSampler.create(SamplingParams(**{k: v for k, v in kw.items() if k != "seed"}), kw.get("seed", 0),
                                  50, torch.device("cpu")) for kw in settings]

    together, alone = samplers(), samplers()
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        logits = torch.randn(len(settings), 50, generator=gen) * 3
        batch = sample(process_logits(logits.clone(), together), together)  # in place
        single = [sample(process_logits(logits[i:i + 1].clone(), [s]), [s])[0] for i, s in enumerate(alone)]
        assert batch == single
        for s, a, tok in zip(together, alone, batch):
            s.observe(tok)
            a.observe(tok)


def test_sampled_frequencies_follow_the_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    s = [SeqSampler.create(SamplingParams(temperature=1.0), seed, 4, torch.device("cpu")) for seed in range(4000)]
    counts = torch.bincount(torch.tensor(sample(logits, s)), minlength=4) / 4000
    assert torch.allclose(counts, probs, atol=0.03), counts
    masked = logits.clone()
    masked[:, 0] = float("-inf")  # a token of no mass is never drawn
    assert 0 not in sample(masked, s)


def test_every_bit_of_a_64_bit_seed_changes_the_stream():
    """torch's CPU mt19937 keeps only the low 32 bits of manual_seed; genapi's generators
    use all 64 (s and s - 2**63 differ only in the top bit once folded onto uint64)."""
    def draws(seed):
        return torch.rand(8, generator=seeded_generator(seed, torch.device("cpu"))).tolist()

    s = 424242
    streams = [draws(x) for x in (s, s - 2**63, s + 2**32, s ^ (1 << 62))]
    assert len({tuple(d) for d in streams}) == 4
    assert draws(s) == streams[0] and draws(s - 2**63) == streams[1]  # still deterministic
    assert seeded_generator(s - 2**63, torch.device("cpu")).initial_seed() == s + 2**63


def test_top_p_keeps_the_nucleus_only():
    logits = torch.tensor([[10.0, 9.9, -10, -10, -10, -10, -10, -10, -10, -10]])
    for seed in range(20):
        s = [SeqSampler.create(SamplingParams(temperature=1.0, top_p=0.5), seed, 10, torch.device("cpu"))]
        assert sample(logits, s)[0] == 0


def test_logprobs_sorted_and_consistent():
    logits = torch.randn(2, 10)
    chosen, vals, ids = logprobs_of(logits, [int(logits[0].argmax()), 3], 4)
    assert chosen[0] == vals[0][0]
    assert all(v <= 0 for row in vals for v in row)
    assert all(row == sorted(row, reverse=True) for row in vals)
    assert abs(chosen[1] - torch.log_softmax(logits[1], -1)[3].item()) < 1e-6
