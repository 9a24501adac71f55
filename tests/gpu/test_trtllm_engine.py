"""TrtllmEngine end to end on a real GPU with TensorRT-LLM installed (skipped elsewhere).

Uses the project's tiny Llama checkpoint (built on the fly, bfloat16: TensorRT-LLM's
attention kernels do not take float32). One engine and one event loop for the module:
loading is slow, and TensorRT-LLM's result queues belong to the loop that submitted.
"""
from __future__ import annotations

import asyncio

import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.trtllm]

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("tensorrt_llm", exc_type=ImportError)

from server.engines.base import FinishEvent, GenerationRequest, SamplingParams, TextEvent  # noqa: E402
from server.engines.trtllm.adapter import TrtllmEngine  # noqa: E402
from server.engines.trtllm.mapping import UnsupportedRequest  # noqa: E402

OPTIONS = {"dtype": "bfloat16", "max_batch": 8, "max_queue": 8, "max_context": 1024,
           "free_gpu_memory_fraction": 0.2}


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def engine(loop, tmp_path_factory):
    from tools import tiny_models

    path = tmp_path_factory.mktemp("trtllm") / "m"
    tiny_models.build(path, preset="tiny", dtype="bfloat16")
    eng = TrtllmEngine("tiny", str(path), OPTIONS)
    loop.run_until_complete(eng.start())
    yield eng
    loop.run_until_complete(eng.stop())


_ids = iter(range(10**6))


def request(engine, text="Tell me about the sea.", **kw) -> GenerationRequest:
    prompt = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    kw.setdefault("sampling", SamplingParams(temperature=0.0))
    kw.setdefault("max_tokens", 32)
    return GenerationRequest(request_id=f"gpu-{next(_ids)}", prompt_ids=list(prompt), **kw)


def collect(loop, engine, req):
    async def run():
        return [ev async for ev in engine.generate(req)]
    return loop.run_until_complete(run())


def text_of(events, choice=0):
    return "".join(e.text for e in events if isinstance(e, TextEvent) and e.choice == choice)


def finishes(events, choice=0):
    return [e for e in events if isinstance(e, FinishEvent) and e.choice == choice]


def tokens_of(events, choice=0):
    return sum(e.num_tokens for e in events if e.choice == choice)


def test_greedy_is_deterministic(loop, engine):
    a = collect(loop, engine, request(engine))
    b = collect(loop, engine, request(engine))
    assert text_of(a) and text_of(a) == text_of(b)
    assert len(finishes(a)) == 1 and len(finishes(b)) == 1
    assert 0 < tokens_of(a) <= 32


def test_max_tokens_gives_length(loop, engine):
    events = collect(loop, engine, request(engine, max_tokens=5, ignore_eos=True))
    (fin,) = finishes(events)
    assert fin.reason == "length"
    assert tokens_of(events) == 5


def test_stop_string(loop, engine):
    full = text_of(collect(loop, engine, request(engine, max_tokens=48)))
    assert len(full) > 12, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    expected = full[:full.find(stop)]
    events = collect(loop, engine, request(engine, max_tokens=48, stop=[stop]))
    (fin,) = finishes(events)
    assert fin.reason == "stop" and fin.stop_sequence == stop
    assert text_of(events) == expected


def test_sampled_choices_and_logprobs(loop, engine):
    req = request(engine, n=2, logprobs=True, top_logprobs=2, max_tokens=8,
                  sampling=SamplingParams(temperature=1.0))
    events = collect(loop, engine, req)
    for choice in (0, 1):
        assert len(finishes(events, choice)) == 1
        lps = [lp for e in events if isinstance(e, TextEvent) and e.choice == choice
               for lp in e.logprobs]
        assert lps and all(lp.logprob <= 0 and len(lp.top) <= 2 for lp in lps)


def test_greedy_logprobs_are_exact(loop, engine):
    # Greedy picks the top-1 of the distribution TensorRT-LLM reports logprobs from.
    events = collect(loop, engine, request(engine, logprobs=True, top_logprobs=1, max_tokens=8))
    lps = [lp for e in events if isinstance(e, TextEvent) for lp in e.logprobs]
    assert lps and all(lp.top and lp.top[0].token == lp.token and lp.top[0].logprob == lp.logprob
                       for lp in lps)


def test_refused_before_submission(loop, engine):
    with pytest.raises(UnsupportedRequest) as err:  # the sampler ignores per-request seeds
        engine.generate(request(engine, sampling=SamplingParams(temperature=1.0, seed=7)))
    assert err.value.param == "seed"
    long_prompt = request(engine, max_tokens=1)
    copies = OPTIONS["max_context"] // len(long_prompt.prompt_ids) + 1
    long_prompt.prompt_ids = long_prompt.prompt_ids * copies  # past the context length
    with pytest.raises(UnsupportedRequest) as err:
        engine.generate(long_prompt)
    assert err.value.reason == "context_length_exceeded"
    assert finishes(collect(loop, engine, request(engine, max_tokens=4)))


def test_abort(loop, engine):
    req = request(engine, max_tokens=900, ignore_eos=True)
    before = engine.stats().requests_aborted

    async def run():
        got = []
        async for ev in engine.generate(req):
            got.append(ev)
            if len(got) == 2:
                await engine.abort(req.request_id)
        return got

    events = loop.run_until_complete(asyncio.wait_for(run(), 60))
    assert not finishes(events)
    assert engine.stats().requests_aborted == before + 1
    assert engine.stats().active_sequences == 0
    # closing the stream early aborts too, and the engine keeps serving
    async def close_early():
        it = engine.generate(request(engine, max_tokens=900, ignore_eos=True))
        await it.__anext__()
        await it.aclose()

    loop.run_until_complete(close_early())
    assert engine.stats().requests_aborted == before + 2
    assert finishes(collect(loop, engine, request(engine, max_tokens=4)))
