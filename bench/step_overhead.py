"""Host time of one decode step outside the model forward, at 1, 64 and 256 sequences.

The real torch scheduler runs in this process on the `step` checkpoint (one small layer,
32,000-row output: the forward pass is cheap, the vocabulary realistic), with mixed
sampling settings per sequence (greedy, temperature, top_p, seeded, penalties,
logit_bias, logprobs). Each decode step is timed whole and its forward pass apart; the
difference is what the scheduler spends on logits processing, sampling, logprobs, stop
checks, detokenization and events.

Both sides of the comparison run in one go: the vectorized sampler the engine uses
(`sampling.sample`: one device-to-host transfer per step) against a per-sequence
reference loop (a softmax, top_p sort and multinomial per sequence, one transfer each),
kept here only as the baseline. Target (issue 17): <= 3 ms per step at 256 sequences.
Wall-clock medians move with the machine's load; the CPU time of the same steps (all of
this process's threads, forward excluded) moves far less, so both are printed.

    .venv/bin/python bench/step_overhead.py [--device cpu|cuda] [--steps 30] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from common import bench_model

from server.engines.base import GenerationRequest, SamplingParams
from server.engines.torch import scheduler as scheduler_mod
from server.engines.torch.sampling import sample

SIZES = (1, 64, 256)
PROMPT = list(range(100, 132))


def _top_p_reference(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_p, idx = probs.sort(descending=True)
    sorted_p[sorted_p.cumsum(-1) - sorted_p >= top_p] = 0
    return torch.zeros_like(probs).scatter_(-1, idx, sorted_p)


def reference_sample(logits: torch.Tensor, samplers) -> list[int]:
    """The per-sequence loop the engine used before (baseline only)."""
    greedy = logits.argmax(dim=-1).tolist()
    tokens = []
    for i, s in enumerate(samplers):
        if s.generator is None:
            tokens.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / s.params.temperature, dim=-1)
        if s.params.top_p < 1.0:
            probs = _top_p_reference(probs, s.params.top_p)
        tokens.append(int(torch.multinomial(probs, 1, generator=s.generator)))
    return tokens


def mixed_request(i: int, max_tokens: int) -> GenerationRequest:
    """Every fifth sequence of each kind: greedy, tempered, nucleus, penalized, biased."""
    kind = i % 5
    sampling = [SamplingParams(temperature=0),
                SamplingParams(temperature=0.8, seed=i),
                SamplingParams(temperature=1.0, top_p=0.9, seed=i),
                SamplingParams(temperature=0.7, presence_penalty=0.5, frequency_penalty=0.3),
                SamplingParams(temperature=1.0, logit_bias={5: -100.0, 7: 3.0})][kind]
    return GenerationRequest(f"r{i}", PROMPT, max_tokens, ignore_eos=True, sampling=sampling,
                             logprobs=i % 4 == 0, top_logprobs=2 if i % 8 == 0 else 0, stop=["\n\n\n"])


def measure(model_dir, device: str, batch: int, steps: int, sampler, threads: int) -> tuple[float, float]:
    """Median host overhead of a decode step with `batch` sequences: (wall ms, CPU ms)."""
    scheduler_mod.sample = sampler
    sch = scheduler_mod.Scheduler("step", str(model_dir), {"device": device, "max_batch": batch,
                                                            "threads": threads})
    sch.load()
    for i in range(batch):
        sch._enqueue(scheduler_mod._Req(mixed_request(i, steps + 8)))
    while sch._waiting or sch._chunking:
        sch._admit()
        sch._prefill_chunk()
    forward = []  # (wall s, CPU s) of each forward pass
    decode = sch.runner.decode

    def timed_decode(*args):
        t0, c0 = time.perf_counter(), time.process_time()
        out = decode(*args)
        if out.is_cuda:
            torch.cuda.synchronize()
        forward.append((time.perf_counter() - t0, time.process_time() - c0))
        return out

    sch.runner.decode = timed_decode
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        sch._decode()
        if device == "cuda":
            torch.cuda.synchronize()
        wall.append(time.perf_counter() - t0 - forward[-1][0])
        cpu.append(time.process_time() - c0 - forward[-1][1])
        sch._events.clear()
    assert len(sch._active) == batch, "every sequence must still be decoding"
    # The first steps warm up.
    return statistics.median(wall[2:]) * 1000, statistics.median(cpu[2:]) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    args = ap.parse_args()
    model_dir = bench_model("step")
    print(f"decode-step host overhead (ms, median of {args.steps} steps; forward pass excluded), {args.device}, "
          f"{args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    print(f"{'sequences':>10} {'per-sequence loop':>18} {'vectorized':>11} {'ratio':>6}"
          f" {'loop CPU':>9} {'vect. CPU':>10} {'ratio':>6}")
    try:
        for batch in SIZES:
            ref, ref_cpu = measure(model_dir, args.device, batch, args.steps, reference_sample, args.threads)
            new, new_cpu = measure(model_dir, args.device, batch, args.steps, sample, args.threads)
            print(f"{batch:>10} {ref:>18.2f} {new:>11.2f} {ref / new:>6.2f}"
                  f" {ref_cpu:>9.2f} {new_cpu:>10.2f} {ref_cpu / new_cpu:>6.2f}")
        print(f"load average at the end {os.getloadavg()[0]:.2f}")
    finally:
        scheduler_mod.sample = sample


if __name__ == "__main__":
    main()
