"""The TensorRT-LLM adapter without TensorRT-LLM: driven by a fake `tensorrt_llm` module
scripted per request."""
from __future__ import annotations

import asyncio
import sys
import types
from types import SimpleNamespace

import pytest

from server.engines.base import (
    EngineError,
    EngineOverloaded,
    EngineUnavailable,
    FinishEvent,
    TextEvent,
    TokenLogprob,
    TopLogprob,
)
from server.engines.trtllm import mapping as m
from server.engines.trtllm.adapter import MISSING_EXTRA, TrtllmEngine

from .trtllm_support import (
    RequestError,
    TrtLLM,
    TrtResult as FakeResult,
    TrtSamplingParams,
    finishes,
    req,
    sp,
)


def test_start_without_tensorrt_llm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import raises ImportError
    engine = TrtllmEngine("m", "/nonexistent", {})
    with pytest.raises(EngineUnavailable) as err:
        asyncio.run(engine.start())
    assert "genapi[trtllm]" in str(err.value)
    assert "'trtllm' extra" in str(err.value)
    assert str(err.value) == MISSING_EXTRA
    assert not engine.ready()


def test_start_refuses_cpu_device():
    with pytest.raises(EngineUnavailable, match="CUDA"):
        asyncio.run(TrtllmEngine("m", "/x", {"device": "cpu"}).start())


def test_generate_before_start_is_unavailable():
    with pytest.raises(EngineUnavailable):
        TrtllmEngine("m", "/x", {}).generate(req())


# ---- a fake tensorrt_llm module made of the stand-ins in trtllm_support


@pytest.fixture
def fake_trt(monkeypatch):
    mod = types.ModuleType("tensorrt_llm")
    mod.LLM = TrtLLM
    mod.SamplingParams = TrtSamplingParams
    mod.__version__ = "fake"
    llmapi = types.ModuleType("tensorrt_llm.llmapi")
    llmapi.KvCacheConfig = lambda **kw: ("KvCacheConfig", kw)
    mod.llmapi = llmapi
    monkeypatch.setitem(sys.modules, "tensorrt_llm", mod)
    monkeypatch.setitem(sys.modules, "tensorrt_llm.llmapi", llmapi)
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def load_hf(self):
        self.tokenizer = SimpleNamespace(
            decode=lambda ids, skip_special_tokens=True: f"<{ids[0]}>",
            convert_ids_to_tokens=lambda i: f"<{i}>", all_special_ids=[2])
        self.context_length = 128
        self.vocab_size = 10
        self.eos_token_ids = [2, 3]

    monkeypatch.setattr(TrtllmEngine, "_load_hf", load_hf)
    return mod


def started(options=None) -> TrtllmEngine:
    engine = TrtllmEngine("m", "/models/x", options or {})
    asyncio.run(engine.start())
    return engine


async def drain(it):
    return [ev async for ev in it]


def test_start_builds_llm_from_options(fake_trt):
    engine = started({"max_batch": 4, "free_gpu_memory_fraction": 0.3, "dtype": "float16"})
    assert engine.ready()
    assert engine._llm.kwargs == {"model": "/models/x", "max_batch_size": 4, "dtype": "float16",
                                  "kv_cache_config": ("KvCacheConfig",
                                                      {"free_gpu_memory_fraction": 0.3})}
    assert engine.stats().cache_slots_total == 4
    asyncio.run(engine.stop())
    assert not engine.ready()


def test_generate_streams_and_maps(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([[("Hel", 1, None, None)],
                                          [("Hello", 2, "stop", None)]]))
    r = req(stop=["x"], sampling=sp(temperature=0.5))
    events = asyncio.run(drain(engine.generate(r)))
    assert events == [TextEvent(0, "Hel", 1), TextEvent(0, "lo", 1), FinishEvent(0, "stop", 0)]
    inputs, params = engine._llm.submitted[0]
    assert inputs == {"prompt_token_ids": [1, 2, 3]}
    # end_id is left to TensorRT-LLM's _setup, which also tokenizes the stop strings
    assert "end_id" not in params.kwargs and params.end_id == TrtLLM.tokenizer.eos_token_id
    assert params._get_stop_words() == [[2], [3], TrtLLM.tokenizer.encode("x")]
    assert params.kwargs["stop_token_ids"] == [2, 3] and params.kwargs["stop"] == ["x"]
    s = engine.stats()
    assert s.requests_finished == 1 and s.active_sequences == 0 and s.budget_tokens_used == 0


def test_greedy_n_is_replicated(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([[("ok", 2, "length", None)]]))
    events = asyncio.run(drain(engine.generate(req(n=2, sampling=sp(temperature=0)))))
    assert events == [TextEvent(0, "ok", 2), TextEvent(1, "ok", 2),
                      FinishEvent(0, "length", 0), FinishEvent(1, "length", 0)]
    kw = engine._llm.submitted[0][1].kwargs
    assert kw["n"] == 1 and kw["top_k"] == 1


def test_logit_bias_becomes_embedding_bias(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    asyncio.run(drain(engine.generate(req(sampling=sp(logit_bias={1: 2.0, 9: -100.0})))))
    bias = engine._llm.submitted[0][1].kwargs["embedding_bias"]
    assert bias.tolist() == [0, 2.0, 0, 0, 0, 0, 0, 0, 0, -100.0]
    assert str(bias.dtype) == "torch.float32"
    with pytest.raises(m.UnsupportedRequest):  # outside the 10-token vocabulary
        engine.generate(req(sampling=sp(logit_bias={10: 1.0})))


def test_logprobs_are_converted(fake_trt):
    engine = started()
    # Sampled tokens 4 (rank 1) and 5 (rank 3): with top_logprobs=2 the mapping asks for
    # 3 per position, so the PyTorch sampler's top-k still holds token 5.
    dists = [(4, {4: -0.5, 6: -1.5, 7: -3.0, 8: -4.0}),
             (5, {6: -0.2, 7: -0.9, 5: -1.1, 8: -5.0})]
    engine._llm.script.append(FakeResult([[("ab", 2, "length", None)]], dists))
    events = asyncio.run(drain(engine.generate(
        req(logprobs=True, top_logprobs=2, sampling=sp(temperature=1.0)))))
    assert events[0].logprobs == [
        TokenLogprob("<4>", -0.5, b"<4>", [TopLogprob("<4>", -0.5, b"<4>"),
                                           TopLogprob("<6>", -1.5, b"<6>")]),
        TokenLogprob("<5>", -1.1, b"<5>", [TopLogprob("<6>", -0.2, b"<6>"),
                                           TopLogprob("<7>", -0.9, b"<7>")]),
    ]
    assert events[1] == FinishEvent(0, "length", 0)


def test_sampled_token_outside_the_top_k_gets_an_upper_bound(fake_trt):
    engine = started()
    # Sampled token 5 ranks 4th; top_logprobs=1 asks for 2: it is not in the mapping.
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]],
                                         [(5, {6: -0.2, 7: -0.9, 8: -1.0, 5: -2.5})]))
    events = asyncio.run(drain(engine.generate(
        req(logprobs=True, top_logprobs=1, sampling=sp(temperature=1.0)))))
    (lp,) = events[0].logprobs
    assert lp.token == "<5>" and lp.top == [TopLogprob("<6>", -0.2, b"<6>")]
    assert lp.logprob == -0.9  # the lowest logprob listed: the sampled one is at most that


def test_admission_control(fake_trt):
    engine = started({"max_batch": 1, "max_queue": 1})

    async def scenario():
        engine._llm.script += [FakeResult([[("a", 1, "length", None)]]) for _ in range(3)]
        a = engine.generate(req(request_id="a"))
        b = engine.generate(req(request_id="b"))
        with pytest.raises(EngineOverloaded):
            engine.generate(req(request_id="c"))
        assert engine.stats().requests_rejected == 1
        assert engine.stats().queued_requests == 1
        await drain(a)
        await drain(b)
        assert engine.stats().active_sequences == 0
        await drain(engine.generate(req(request_id="c")))  # room again
        return engine.stats()

    s = asyncio.run(scenario())
    assert s.requests_finished == 3 and s.requests_rejected == 1


def test_dropped_stream_releases_its_slot(fake_trt):
    engine = started({"max_batch": 1, "max_queue": 0})
    it = engine.generate(req(request_id="a"))
    with pytest.raises(EngineOverloaded):
        engine.generate(req(request_id="b"))
    del it  # never iterated
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    asyncio.run(drain(engine.generate(req(request_id="b"))))


def test_token_budget(fake_trt):
    engine = started({"max_budget_tokens": 30})
    a = engine.generate(req(request_id="a", max_tokens=20))  # 3 + 20
    with pytest.raises(EngineOverloaded, match="budget"):
        engine.generate(req(request_id="b", max_tokens=20))
    assert engine.stats().budget_tokens_used == 23
    del a


def test_a_reservation_holds_a_place_until_generate_takes_it_or_it_is_released(fake_trt):
    engine = started({"max_batch": 1, "max_queue": 1})
    first, second = engine.reserve(), engine.reserve()  # requests being templated count
    with pytest.raises(EngineOverloaded, match="capacity"):
        engine.reserve()
    second.release()
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    stream = engine.generate(req(request_id="a"), first)
    first.release()  # taken over by generate(): no effect
    assert engine._inflight_requests == 1
    asyncio.run(drain(stream))
    assert engine._inflight_requests == 0
    place = engine.reserve()
    with pytest.raises(m.UnsupportedRequest):  # refused in generate(): the place is given back
        engine.generate(req(request_id="b", prompt_ids=[]), place)
    assert engine._inflight_requests == 0


def test_a_request_without_a_max_tokens_bound_is_charged_what_it_generates(fake_trt):
    engine = started({"max_budget_tokens": 30})

    async def scenario():
        engine._llm.script.append(FakeResult([[("a", 4, None, None)], [("ab", 9, "length", None)]]))
        it = engine.generate(req(request_id="a", max_tokens=125, charge_by_use=True))
        seen = [engine.stats().budget_tokens_used]
        async for _ in it:
            seen.append(engine.stats().budget_tokens_used)
        return seen

    assert asyncio.run(scenario())[:3] == [3, 3 + 4, 3 + 9]  # not 3 + 125
    assert engine.stats().budget_tokens_used == 0


def test_closing_the_stream_aborts_the_request(fake_trt):
    engine = started()
    result = FakeResult([[("a", 1, None, None)], [("ab", 2, None, None)],
                         [("abc", 3, "length", None)]])
    engine._llm.script.append(result)

    async def scenario():
        it = engine.generate(req())
        first = await it.__anext__()
        await it.aclose()
        return first

    assert asyncio.run(scenario()) == TextEvent(0, "a", 1)
    assert result.aborted
    s = engine.stats()
    assert s.requests_aborted == 1 and s.requests_finished == 0 and s.active_sequences == 0


def test_abort_by_request_id_ends_the_stream(fake_trt):
    engine = started()
    result = FakeResult([[("a", 1, None, None)], [("ab", 2, None, None)],
                         [("abc", 3, "length", None)]])
    engine._llm.script.append(result)

    async def scenario():
        got = []
        async for ev in engine.generate(req(request_id="r9")):
            got.append(ev)
            await engine.abort("r9")
            await engine.abort("r9")  # idempotent
        return got

    events = asyncio.run(scenario())
    assert events == [TextEvent(0, "a", 1)]  # no FinishEvent after an abort
    assert result.aborted
    assert engine.stats().requests_aborted == 1
    asyncio.run(engine.abort("unknown"))


def test_llm_args_backend_other_than_pytorch_is_refused_at_load(fake_trt):
    with pytest.raises(EngineUnavailable, match="llm_args.backend"):
        started({"llm_args": {"backend": "tensorrt"}})
    assert started({"llm_args": {"backend": "pytorch"}}).ready()


def test_seeded_sampling_is_refused_with_param_seed(fake_trt):
    from server.errors import from_engine_error

    engine = started()
    with pytest.raises(m.UnsupportedRequest) as err:
        engine.generate(req(sampling=sp(temperature=0.7, seed=3)))
    status = from_engine_error(err.value)
    assert status.code.name == "INVALID_ARGUMENT"
    assert (status.reason, status.param) == ("unsupported_parameter", "seed")
    assert not engine._llm.submitted and engine.stats().active_sequences == 0
    # greedy output is deterministic anyway: a seed there is accepted
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    asyncio.run(drain(engine.generate(req(sampling=sp(temperature=0, seed=3)))))


@pytest.mark.parametrize("prompt_len, max_tokens, param", [
    (128, 1, "messages"),  # at the context length: no room for a completion
    (200, 1, "messages"),
    (120, 9, "max_tokens"),
])
def test_prompt_at_or_past_the_context_is_refused_before_submission(fake_trt, prompt_len,
                                                                    max_tokens, param):
    engine = started()  # context 128, the stand-in LLM's max_seq_len
    with pytest.raises(m.UnsupportedRequest) as err:
        engine.generate(req(prompt_ids=[1] * prompt_len, max_tokens=max_tokens))
    assert (err.value.reason, err.value.param) == ("context_length_exceeded", param)
    assert not engine._llm.submitted
    engine._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    asyncio.run(drain(engine.generate(req(prompt_ids=[1] * 127, max_tokens=1))))


def test_prompt_longer_than_max_num_tokens_is_refused_without_chunked_prefill(fake_trt):
    engine = started({"max_num_tokens": 16})
    with pytest.raises(m.UnsupportedRequest) as err:
        engine.generate(req(prompt_ids=[1] * 17, max_tokens=1))
    assert err.value.reason == "context_length_exceeded"
    chunked = started({"max_num_tokens": 16, "llm_args": {"enable_chunked_prefill": True}})
    chunked._llm.script.append(FakeResult([[("a", 1, "length", None)]]))
    asyncio.run(drain(chunked.generate(req(prompt_ids=[1] * 17, max_tokens=1))))


def test_sampled_n_above_max_batch_is_refused(fake_trt):
    # The PyTorch-backend LLM does not check n against max_batch_size: we must.
    engine = started({"max_batch": 2})
    with pytest.raises(m.UnsupportedRequest, match="max_batch"):
        engine.generate(req(n=3, sampling=sp(temperature=1.0)))
    # llm_args.max_batch_size is what the LLM gets (llm_kwargs), so it is the limit.
    engine = started({"max_batch": 8, "llm_args": {"max_batch_size": 2}})
    assert engine._llm.kwargs["max_batch_size"] == 2
    with pytest.raises(m.UnsupportedRequest, match="max_batch"):
        engine.generate(req(n=3, sampling=sp(temperature=1.0)))


def test_worker_error_becomes_engine_error(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([], error=RequestError("enqueue failed")))
    with pytest.raises(EngineError, match="enqueue failed"):
        asyncio.run(drain(engine.generate(req())))
    assert engine.stats().active_sequences == 0


def test_sampling_params_value_error_is_invalid_argument(fake_trt, monkeypatch):
    engine = started()

    def boom(**kw):
        raise ValueError("prompt too long")

    monkeypatch.setattr(fake_trt, "SamplingParams", boom)
    with pytest.raises(m.UnsupportedRequest, match="prompt too long"):
        asyncio.run(drain(engine.generate(req())))
    assert engine.stats().active_sequences == 0


def test_executor_error_becomes_engine_error(fake_trt):
    engine = started()

    class Broken(FakeResult):
        async def _gen(self):
            yield SimpleNamespace(outputs=self._outputs([("a", 1, None, None)]))
            raise RuntimeError("CUDA error")

    engine._llm.script.append(Broken([]))
    with pytest.raises(EngineError, match="CUDA error"):
        asyncio.run(drain(engine.generate(req())))
    assert engine.stats().requests_aborted == 1


def test_request_cancelled_by_trtllm_is_an_error(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([[("a", 1, "cancelled", None)]]))
    with pytest.raises(EngineError, match="without finishing"):
        asyncio.run(drain(engine.generate(req())))


def test_siblings_of_a_stopped_choice_are_closed(fake_trt):
    engine = started()
    engine._llm.script.append(FakeResult([[("x", 1, "stop", "END"), ("yy", 2, None, None)]]))
    events = asyncio.run(drain(engine.generate(req(n=2, stop=["END"],
                                                   sampling=sp(temperature=1.0)))))
    assert finishes(events) == [FinishEvent(0, "stop", 0, "END"), FinishEvent(1, "length", 0)]


@pytest.mark.slow
def test_load_hf_reads_the_tiny_checkpoint(tmp_path):
    """Tokenizer, context length, vocabulary and EOS ids from a real HF directory."""
    from tools import tiny_models

    tiny_models.build(tmp_path / "m", preset="tiny")
    engine = TrtllmEngine("m", str(tmp_path / "m"), {"max_context": 512})
    engine._load_hf()
    assert engine.context_length == 512
    assert engine.vocab_size == 4096
    assert engine.eos_token_ids == [engine.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert engine._token_text(engine.eos_token_ids[0]) == ("<|im_end|>", b"<|im_end|>")
    other = TrtllmEngine("m", str(tmp_path / "m"), {})
    other._load_hf()
    assert other.context_length == tiny_models.PRESETS["tiny"].context


def test_media_go_to_tensorrt_llm_as_the_templates_ids_and_the_decoded_parts(fake_trt):
    from server.engines.base import MediaInput

    engine = started()
    engine._llm.script.append(FakeResult([[("ok", 1, "stop", None)]]))
    image, clip = object(), [0.0, 0.5]
    r = req()
    r.prompt_ids = [1, 9, 9, 9, 2, 8, 8, 3]  # an image (3 tokens) and a clip (2 tokens), expanded
    r.media = [MediaInput("image", {}, 9, (1, 3), source=image), MediaInput("audio", {}, 8, (5, 2), source=clip)]
    asyncio.run(drain(engine.generate(r)))
    inputs, _ = engine._llm.submitted[0]
    assert inputs == {"prompt_token_ids": [1, 9, 2, 8, 3],
                      "multi_modal_data": {"image": [image], "audio": [(clip, 16_000)]}}
    assert r.media == []  # the stream, alive for the whole generation, no longer holds the media


def test_load_hf_of_a_vision_checkpoint_asks_for_the_decoded_media(tmp_path):
    from tools import tiny_llava
    from tools.tiny_models import MODELS_DIR

    tiny_llava.build(MODELS_DIR / "tiny-chat", tmp_path / "v")
    engine = TrtllmEngine("v", str(tmp_path / "v"), {})
    engine._load_hf()
    info = engine.chat_info
    assert info.media == ("image",) and info.raw_media and type(info.processor).__name__ == "LlavaProcessor"
    assert engine.vocab_size == 4097  # the text config's, with the image token
