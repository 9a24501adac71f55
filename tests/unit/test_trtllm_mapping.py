"""TensorRT-LLM backend without TensorRT-LLM: the pure mapping (the adapter, driven by a
fake `tensorrt_llm` module, is tested in test_trtllm_adapter.py)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from server.engines.base import (
    EngineError,
    FinishEvent,
    TextEvent,
    TokenLogprob,
    TopLogprob,
)
from server.engines.trtllm import mapping as m
from server.engines.trtllm.mapping import ChoiceSnapshot as Snap

from .trtllm_support import (
    LP,
    TRTLLM_SAMPLING_FIELDS,
    RequestError,
    TrtLLM,
    TrtResult,
    TrtSamplingParams,
    finishes,
    req,
    sp,
)

# ------------------------------------------------------------------ sampling_kwargs


def test_sampling_kwargs_defaults():
    kw = m.sampling_kwargs(req(), 2)
    assert kw == {
        "max_tokens": 16, "n": 1, "presence_penalty": 0.0, "frequency_penalty": 0.0,
        "ignore_eos": False, "include_stop_str_in_output": False, "detokenize": True,
        "temperature": 1.0, "top_p": 1.0, "stop_token_ids": [2],
    }
    assert set(kw) <= TRTLLM_SAMPLING_FIELDS


def test_sampling_kwargs_every_field():
    r = req(max_tokens=7, n=2, stop=["\n\n", "END"], logprobs=True, top_logprobs=3,
            sampling=sp(temperature=0.7, top_p=0.9, presence_penalty=0.5,
                        frequency_penalty=-0.25, logit_bias={5: 1.0}))
    kw = m.sampling_kwargs(r, 0)
    assert kw["max_tokens"] == 7
    assert kw["n"] == 2
    assert kw["temperature"] == pytest.approx(0.7)
    assert kw["top_p"] == pytest.approx(0.9)
    assert "top_k" not in kw
    assert "seed" not in kw
    assert kw["presence_penalty"] == 0.5 and kw["frequency_penalty"] == -0.25
    assert kw["stop"] == ["\n\n", "END"]
    assert kw["logprobs"] == 4  # one more than top_logprobs: see token_logprob
    assert "end_id" not in kw and kw["stop_token_ids"] == [0]
    assert kw["include_stop_str_in_output"] is False and kw["detokenize"] is True
    assert "logit_bias" not in kw and "embedding_bias" not in kw  # separate spec
    assert set(kw) <= TRTLLM_SAMPLING_FIELDS


def test_greedy_maps_to_top_k_1_without_temperature_or_top_p():
    kw = m.sampling_kwargs(req(sampling=sp(temperature=0.0, top_p=0.5)), 2)
    assert kw["top_k"] == 1
    assert "temperature" not in kw and "top_p" not in kw
    assert m.is_greedy(req(sampling=sp(temperature=0.0)))
    assert not m.is_greedy(req(sampling=sp(temperature=0.01)))


def test_sampling_always_sends_temperature_and_top_p():
    # With temperature, top_p and top_k all unset TensorRT-LLM 1.2 decodes greedily.
    kw = m.sampling_kwargs(req(sampling=sp(temperature=1.0, top_p=1.0)), None)
    assert kw["temperature"] == 1.0 and kw["top_p"] == 1.0 and "top_k" not in kw


def test_greedy_n_runs_one_sequence_and_replicates():
    r = req(n=3, sampling=sp(temperature=0))
    assert m.engine_choices(r) == (1, 3)
    assert m.sampling_kwargs(r, 2)["n"] == 1
    assert m.StreamState.for_request(r).num_choices == 1


def test_sampled_n_runs_n_sequences():
    r = req(n=3, sampling=sp(temperature=0.8))
    assert m.engine_choices(r) == (3, 1)
    assert m.sampling_kwargs(r, 2)["n"] == 3
    assert m.StreamState.for_request(r).num_choices == 3


def test_seed_mapping():
    assert "seed" not in m.sampling_kwargs(req(), 2)
    assert m.sampling_kwargs(req(sampling=sp(seed=0)), 2)["seed"] == 0
    assert m.sampling_kwargs(req(sampling=sp(seed=123)), 2)["seed"] == 123
    # int64 -> uint64 two's complement; deterministic and distinct
    assert m.sampling_kwargs(req(sampling=sp(seed=-1)), 2)["seed"] == 2**64 - 1
    assert m.sampling_kwargs(req(sampling=sp(seed=-2)), 2)["seed"] == 2**64 - 2


def test_logprobs_mapping():
    assert "logprobs" not in m.sampling_kwargs(req(), 2)
    # TensorRT-LLM needs logprobs >= 1 to return anything; one more than the client's
    # top_logprobs, so that the sampled token is more often among them
    assert m.sampling_kwargs(req(logprobs=True), 2)["logprobs"] == 2
    assert m.sampling_kwargs(req(logprobs=True, top_logprobs=5), 2)["logprobs"] == 6
    assert m.sampling_kwargs(req(logprobs=True, top_logprobs=20), 2)["logprobs"] == 21
    # top_logprobs without logprobs asks for nothing
    assert "logprobs" not in m.sampling_kwargs(req(top_logprobs=5), 2)


def test_stop_strings():
    assert "stop" not in m.sampling_kwargs(req(), 2)
    assert "stop" not in m.sampling_kwargs(req(stop=[""]), 2)
    kw = m.sampling_kwargs(req(stop=["a", "", "b", "a"]), 2)
    assert kw["stop"] == ["a", "b"]
    assert isinstance(kw["stop"], list)


def test_end_id_is_left_to_tensorrt_llm():
    # LLM._prepare_sampling_params runs SamplingParams._setup (which tokenizes `stop`)
    # only when end_id is unset: never set it.
    for eos in (2, [2, 7], None, []):
        for r in (req(), req(stop=["x"]), req(ignore_eos=True)):
            assert "end_id" not in m.sampling_kwargs(r, eos)
    kw = m.sampling_kwargs(req(ignore_eos=True), 2)
    assert kw["ignore_eos"] is True and "stop_token_ids" not in kw
    assert "stop_token_ids" not in m.sampling_kwargs(req(), None)


def test_every_eos_id_is_a_stop_token_id():
    assert m.sampling_kwargs(req(), [2, 7, 2, 9])["stop_token_ids"] == [2, 7, 9]
    assert m.sampling_kwargs(req(), 5)["stop_token_ids"] == [5]
    # ignore_eos must not be defeated by the EOS ids
    assert "stop_token_ids" not in m.sampling_kwargs(req(ignore_eos=True), [2, 7])


def test_stand_in_setup_rule_catches_a_set_end_id():
    """The stand-in follows TensorRT-LLM: stop strings are only tokenized when end_id is
    unset, so params carrying end_id and stop fail when the worker builds stop words."""
    params = TrtSamplingParams(**m.sampling_kwargs(req(stop=["x"]), [2]))
    llm = TrtLLM()
    llm.script.append(TrtResult([]))
    assert llm.generate_async({"prompt_token_ids": [1]}, params, streaming=True).error is None
    bad = TrtSamplingParams(end_id=2, stop=["x"])
    llm.script.append(TrtResult([]))
    assert isinstance(llm.generate_async({"prompt_token_ids": [1]}, bad, streaming=True).error,
                      RequestError)


# ------------------------------------------------------------------------ logit bias


def test_logit_bias_spec():
    assert m.logit_bias_spec(req()) is None
    assert m.logit_bias_spec(req(sampling=sp(logit_bias={3: 0.0}))) is None
    spec = m.logit_bias_spec(req(sampling=sp(logit_bias={9: -100.0, 2: 5.5, 4: 0.0})))
    assert spec == m.LogitBias(token_ids=(2, 9), values=(5.5, -100.0))
    assert spec.dense(10) == [0, 0, 5.5, 0, 0, 0, 0, 0, 0, -100.0]
    with pytest.raises(m.UnsupportedRequest):
        spec.dense(5)


def test_logit_bias_is_an_invalid_argument_error():
    assert issubclass(m.UnsupportedRequest, EngineError)
    assert issubclass(m.UnsupportedRequest, ValueError)


# -------------------------------------------------------------------------- validate


@pytest.mark.parametrize("bad", [
    dict(prompt_ids=[]),
    dict(max_tokens=0),
    dict(n=0),
    dict(sampling=sp(temperature=-0.1)),
    dict(sampling=sp(temperature=math.nan)),
    dict(sampling=sp(top_p=0.0)),
    dict(sampling=sp(top_p=1.5)),
    dict(sampling=sp(presence_penalty=math.inf)),
    dict(top_logprobs=21, logprobs=True),
    dict(top_logprobs=-1),
    dict(sampling=sp(logit_bias={5: 101.0})),
    dict(sampling=sp(logit_bias={5: math.nan})),
    dict(sampling=sp(logit_bias={-1: 1.0})),
    dict(sampling=sp(logit_bias={100: 1.0})),  # vocab_size 100
    dict(n=9, sampling=sp(temperature=1.0)),  # max_batch 8
    dict(sampling=sp(temperature=0.5, seed=1)),  # the PyTorch sampler ignores seeds
    dict(prompt_ids=[1] * 16),  # context_length 16
    dict(prompt_ids=[1] * 10, max_tokens=7),
    dict(prompt_ids=[1] * 11, max_tokens=1),  # max_prompt_tokens 10
])
def test_validate_rejects(bad):
    with pytest.raises(m.UnsupportedRequest):
        m.validate(req(**bad), vocab_size=100, max_batch=8, context_length=16,
                   max_prompt_tokens=10)


@pytest.mark.parametrize("bad, reason, param", [
    (dict(sampling=sp(temperature=0.5, seed=1)), "unsupported_parameter", "seed"),
    # the PyTorch sampler applies neither penalty
    (dict(sampling=sp(presence_penalty=0.5)), "unsupported_parameter", "presence_penalty"),
    (dict(sampling=sp(frequency_penalty=-0.1)), "unsupported_parameter", "frequency_penalty"),
    (dict(prompt_ids=[1] * 64), "context_length_exceeded", "messages"),
    (dict(prompt_ids=[1] * 50, max_tokens=15), "context_length_exceeded", "max_tokens"),
    (dict(sampling=sp(top_p=0.0)), "invalid_value", "top_p"),
])
def test_validate_names_reason_and_param(bad, reason, param):
    with pytest.raises(m.UnsupportedRequest) as err:
        m.validate(req(**bad), context_length=64)
    assert (err.value.reason, err.value.param) == (reason, param)


def test_validate_accepts():
    m.validate(req(), vocab_size=100, max_batch=8)
    m.validate(req(n=9, sampling=sp(temperature=0)), vocab_size=100, max_batch=8)  # 1 seq
    m.validate(req(logprobs=True, top_logprobs=20, stop=["x"],
                   sampling=sp(logit_bias={99: -100.0, 0: 100.0}, seed=-5, temperature=0)),
               vocab_size=100, max_batch=8)
    m.validate(req(prompt_ids=[1] * 10, max_tokens=6), context_length=16, max_prompt_tokens=10)
    m.validate(req(sampling=sp(logit_bias={10**6: 1.0})))  # vocab unknown: not checked


# --------------------------------------------------------------------------- options


def test_llm_kwargs():
    kw, kv = m.llm_kwargs("/m", {})
    assert kw == {"model": "/m", "max_batch_size": m.DEFAULT_MAX_BATCH} and kv == {}
    kw, kv = m.llm_kwargs("/m", {
        "max_batch": 8, "dtype": "bfloat16", "max_context": 4096, "max_num_tokens": 2048,
        "tensor_parallel_size": 2, "free_gpu_memory_fraction": 0.5, "trust_remote_code": True,
        "max_queue": 3, "llm_args": {"max_batch_size": 4, "enable_chunked_prefill": True},
    })
    assert kw == {"model": "/m", "max_batch_size": 4, "dtype": "bfloat16", "max_seq_len": 4096,
                  "max_num_tokens": 2048, "tensor_parallel_size": 2, "trust_remote_code": True,
                  "enable_chunked_prefill": True}
    assert kv == {"free_gpu_memory_fraction": 0.5}
    assert "dtype" not in m.llm_kwargs("/m", {"dtype": "auto"})[0]
    with pytest.raises(ValueError):
        m.llm_kwargs("/m", {"llm_args": "backend=tensorrt"})
    # tensorrt_llm.LLM is the PyTorch-backend class: it cannot load TensorRT engines
    assert m.llm_kwargs("/m", {"llm_args": {"backend": "pytorch"}})[0]["backend"] == "pytorch"
    with pytest.raises(ValueError, match="llm_args.backend"):
        m.llm_kwargs("/m", {"llm_args": {"backend": "tensorrt"}})


def test_limits_follow_llm_args_like_llm_kwargs():
    # llm_args wins in llm_kwargs, so the checks before submission must use the same values
    # (else a prompt between the two context lengths fails mid-stream in the worker).
    assert m.batch_limit({}) == m.DEFAULT_MAX_BATCH
    assert m.batch_limit({"max_batch": 8, "llm_args": {"max_batch_size": 4}}) == 4
    assert m.context_limit({}, None) == 2048
    assert m.context_limit({}, 32768) == 32768
    assert m.context_limit({"max_context": 8192}, 32768) == 8192
    assert m.context_limit({"max_context": 8192, "llm_args": {"max_seq_len": 4096}}, 32768) == 4096
    assert m.context_limit({"llm_args": {"max_seq_len": 4096}}, 32768) == 4096
    assert m.batch_limit({"llm_args": "not a table"}) == m.DEFAULT_MAX_BATCH  # llm_kwargs refuses it


def test_prompt_token_limit():
    assert m.prompt_token_limit({}) is None
    assert m.prompt_token_limit({"max_num_tokens": 512}) == 512
    assert m.prompt_token_limit({"max_num_tokens": 512, "llm_args": {"max_num_tokens": 256}}) == 256
    assert m.prompt_token_limit({"max_num_tokens": 512,
                                 "llm_args": {"enable_chunked_prefill": True}}) is None


# -------------------------------------------------------------------------- logprobs


def tt(token_id: int) -> tuple[str, bytes]:
    s = f"<{token_id}>"
    return s, s.encode()


def test_token_logprob_from_dict_with_ranks():
    entry = {7: LP(-0.1, 1), 3: LP(-2.0, 2), 9: LP(-3.0, 3)}
    got = m.token_logprob(3, entry, 2, tt)
    assert got == TokenLogprob(token="<3>", logprob=-2.0, bytes=b"<3>", top=[
        TopLogprob("<7>", -0.1, b"<7>"), TopLogprob("<3>", -2.0, b"<3>")])


def test_token_logprob_from_dict_without_ranks_sorts_by_logprob():
    entry = {1: -3.0, 2: -0.5, 3: -1.0}
    got = m.token_logprob(2, entry, 5, tt)
    assert [t.token for t in got.top] == ["<2>", "<3>", "<1>"]
    assert got.logprob == -0.5


def test_token_logprob_edge_cases():
    assert m.token_logprob(4, -0.25, 3, tt) == TokenLogprob("<4>", -0.25, b"<4>", [])
    assert m.token_logprob(4, {4: LP(-1.0, 1)}, 0, tt).top == []
    # sampled token outside the top-k (PyTorch sampler): the lowest listed, an upper bound
    assert m.token_logprob(4, {5: LP(-1.0, 1), 6: LP(-2.5, 2)}, 1, tt).logprob == -2.5
    assert m.token_logprob(4, {}, 1, tt).logprob == m.MIN_LOGPROB
    assert m.token_logprob(4, -math.inf, 0, tt).logprob == m.MIN_LOGPROB


# ---------------------------------------------------------------- events_from_output


def run(state, *snapshots_per_step):
    """Feeds several steps; returns (all events, final state)."""
    out = []
    for snaps in snapshots_per_step:
        ev, state = m.events_from_output(state, snaps)
        out += ev
    return out, state


def text_of(events, choice=0):
    return "".join(e.text for e in events if isinstance(e, TextEvent) and e.choice == choice)


def tokens_of(events, choice=0):
    return sum(e.num_tokens for e in events if e.choice == choice)


def test_simple_stream_and_stop_finish():
    st = m.StreamState.for_request(req())
    ev, st2 = m.events_from_output(st, [Snap(0, "He", 1)])
    assert ev == [TextEvent(0, "He", 1)]
    assert st.choices[0].sent_chars == 0  # pure: input state untouched
    ev, st3 = m.events_from_output(st2, [Snap(0, "Hello", 2)])
    assert ev == [TextEvent(0, "llo", 1)]
    ev, st4 = m.events_from_output(st3, [Snap(0, "Hello", 3, "stop", None)])
    assert ev == [FinishEvent(0, "stop", 1, "")]  # EOS token: no text, counted on finish
    assert st4.done and st4.any_finished


def test_text_delta_and_finish_in_one_snapshot():
    ev, st = run(m.StreamState.for_request(req()),
                 [Snap(0, "a", 1)], [Snap(0, "abc", 4, "length")])
    assert ev == [TextEvent(0, "a", 1), TextEvent(0, "bc", 3), FinishEvent(0, "length", 0)]


def test_no_duplicate_finish():
    st = m.StreamState.for_request(req())
    ev, st = run(st, [Snap(0, "x", 1, "length")])
    assert len(finishes(ev)) == 1
    again, st = run(st, [Snap(0, "x", 1, "length")], [Snap(0, "xy", 2, "stop")])
    assert again == []


def test_finish_with_stop_string_from_trtllm():
    r = req(stop=["END"])
    ev, st = run(m.StreamState.for_request(r),
                 [Snap(0, "foo E", 2)],   # "E" could start "END": held back
                 [Snap(0, "foo EN", 3)],  # still a prefix: nothing
                 [Snap(0, "foo ", 4, "stop", "END")])  # TensorRT-LLM cut the stop string
    assert ev == [TextEvent(0, "foo ", 2), FinishEvent(0, "stop", 2, "END")]
    assert tokens_of(ev) == 4


def test_held_back_prefix_released_when_it_is_not_a_stop():
    ev, _ = run(m.StreamState.for_request(req(stop=["END"])),
                [Snap(0, "foo E", 2)], [Snap(0, "foo Ex", 3)])
    assert text_of(ev) == "foo Ex"
    assert ev[-1] == TextEvent(0, "Ex", 1)


def test_complete_stop_string_in_running_text_is_never_sent():
    r = req(stop=["##", "END"])
    ev, st = run(m.StreamState.for_request(r), [Snap(0, "ab END cd ## ef", 6)])
    assert text_of(ev) == "ab "
    # finished without TensorRT-LLM cutting it: cut here, report the stop string
    ev2, st = run(st, [Snap(0, "ab END cd ## ef", 7, "length")])
    assert ev2 == [FinishEvent(0, "stop", 7 - 6, "END")]


def test_partial_utf8_is_held_back_and_tokens_follow_the_text():
    ev, _ = run(m.StreamState.for_request(req()),
                [Snap(0, "a\ufffd", 2)], [Snap(0, "a\ufffd", 3)], [Snap(0, "a€", 4)],
                [Snap(0, "a€", 4, "stop")])
    assert ev == [TextEvent(0, "a", 2), TextEvent(0, "€", 2), FinishEvent(0, "stop", 0)]


def test_stop_token_id_and_timeout():
    ev, _ = run(m.StreamState.for_request(req()), [Snap(0, "x", 2, "stop", 151645)])
    assert ev == [TextEvent(0, "x", 2), FinishEvent(0, "stop", 0, "")]
    ev, _ = run(m.StreamState.for_request(req()), [Snap(0, "x", 2, "timeout")])
    assert finishes(ev) == [FinishEvent(0, "length", 0)]


def test_token_ids_shrinking_at_stop_never_gives_negative_counts():
    # TensorRT-LLM drops stop-word tokens from token_ids when it finishes.
    ev, _ = run(m.StreamState.for_request(req(stop=["!"])),
                [Snap(0, "hi", 3)], [Snap(0, "hi", 2, "stop", "!")])
    assert all(e.num_tokens >= 0 for e in ev)
    assert tokens_of(ev) == 3


def test_multi_choice_interleaving():
    r = req(n=2, stop=["STOP"], sampling=sp(temperature=1.0))
    st = m.StreamState.for_request(r)
    steps = [
        [Snap(0, "", 0), Snap(1, "B", 1)],
        [Snap(0, "A", 1), Snap(1, "B", 1)],          # only choice 0 moved
        [Snap(0, "A", 1), Snap(1, "Bb ST", 3)],       # choice 1 holds "ST"
        [Snap(0, "Aa", 2), Snap(1, "Bb ", 4, "stop", "STOP")],
        [Snap(0, "Aaa", 3, "length"), Snap(1, "Bb ", 4, "stop", "STOP")],
        [Snap(0, "Aaa", 3, "length"), Snap(1, "Bb ", 4, "stop", "STOP")],  # repeats
    ]
    all_events = []
    for i, snaps in enumerate(steps):
        ev, st = m.events_from_output(st, snaps)
        all_events.append(ev)
    assert all_events[0] == [TextEvent(1, "B", 1)]
    assert all_events[1] == [TextEvent(0, "A", 1)]
    assert all_events[2] == [TextEvent(1, "b ", 2)]
    assert all_events[3] == [TextEvent(0, "a", 1), FinishEvent(1, "stop", 1, "STOP")]
    assert all_events[4] == [TextEvent(0, "a", 1), FinishEvent(0, "length", 0)]
    assert all_events[5] == []
    flat = [e for ev in all_events for e in ev]
    assert text_of(flat, 0) == "Aaa" and text_of(flat, 1) == "Bb "
    assert tokens_of(flat, 0) == 3 and tokens_of(flat, 1) == 4
    assert len(finishes(flat, 0)) == 1 and len(finishes(flat, 1)) == 1
    assert st.done


def test_snapshots_out_of_order_and_unknown_choice():
    r = req(n=2, sampling=sp(temperature=1.0))
    ev, _ = m.events_from_output(m.StreamState.for_request(r),
                                 [Snap(1, "y", 1), Snap(5, "zzz", 3), Snap(0, "x", 1)])
    assert ev == [TextEvent(0, "x", 1), TextEvent(1, "y", 1)]


def test_logprobs_ride_with_text():
    lps = [TokenLogprob(f"t{i}", -float(i), b"") for i in range(4)]
    ev, _ = run(m.StreamState.for_request(req(logprobs=True)),
                [Snap(0, "a", 1, logprobs=lps[:1])],
                [Snap(0, "a\ufffd", 2, logprobs=lps[:2])],  # held back: logprob waits
                [Snap(0, "ab", 3, logprobs=lps[:3])],
                [Snap(0, "abc", 4, "length", logprobs=lps)])
    texts = [e for e in ev if isinstance(e, TextEvent)]
    assert [len(e.logprobs) for e in texts] == [1, 2, 1]
    assert [lp for e in texts for lp in e.logprobs] == lps


def test_cancelled_choice_gets_no_finish():
    ev, st = run(m.StreamState.for_request(req()),
                 [Snap(0, "ab", 2)], [Snap(0, "abc", 3, "cancelled")])
    assert ev == [TextEvent(0, "ab", 2)]
    assert st.done and not st.any_finished


def test_close_stream_finishes_the_rest_once():
    r = req(n=2, stop=["END"], sampling=sp(temperature=1.0))
    # TensorRT-LLM aborted the request when choice 0 hit a stop string; choice 1 has
    # "to E" with "E" held back.
    ev, st = run(m.StreamState.for_request(r),
                 [Snap(0, "x", 1), Snap(1, "to E", 2)],
                 [Snap(0, "x", 2, "stop", "END"), Snap(1, "to E", 2)])
    assert text_of(ev, 1) == "to "
    assert not st.done
    ev2, st = m.close_stream(st)
    assert ev2 == [TextEvent(1, "E", 0), FinishEvent(1, "length", 0)]
    assert st.done
    assert m.close_stream(st)[0] == []


def test_choice_snapshot_reads_completion_output():
    out = SimpleNamespace(index=1, text="hi", token_ids=[4, 5], finish_reason=None,
                          stop_reason=None, logprobs=[])
    assert m.choice_snapshot(out) == Snap(1, "hi", 2, None, None, ())
    out = SimpleNamespace(index=0, text=None, token_ids=None, finish_reason="stop",
                          stop_reason="\n", logprobs=None)
    assert m.choice_snapshot(out) == Snap(0, "", 0, "stop", "\n", ())


def test_replicate():
    lp = [TokenLogprob("a", -1.0, b"a")]
    evs = [TextEvent(0, "a", 1, lp), FinishEvent(0, "stop", 1, "X")]
    assert m.replicate(evs, 1) == evs
    out = m.replicate(evs, 3)
    assert out == [TextEvent(0, "a", 1, lp), TextEvent(1, "a", 1, lp), TextEvent(2, "a", 1, lp),
                   FinishEvent(0, "stop", 1, "X"), FinishEvent(1, "stop", 1, "X"),
                   FinishEvent(2, "stop", 1, "X")]
    assert out[0].logprobs is not out[1].logprobs


# ------------------------------------------------------------------ multimodal inputs

def _media(kind: str, placeholder: int, start: int, length: int, source=None):
    from server.engines.base import MediaInput

    return MediaInput(kind, {}, placeholder, (start, length), source)


IMG, AUD = 900, 901


def test_multimodal_inputs_send_the_templates_ids_and_the_decoded_parts_by_kind_in_order():
    # [1, 2, <16 image tokens>, 3, <3 audio tokens>, <16 image tokens>, 4]
    ids = [1, 2] + [IMG] * 16 + [3] + [AUD] * 3 + [IMG] * 16 + [4]
    red, clip, blue = object(), [0.0, 0.1], object()
    media = [_media("image", IMG, 2, 16, red), _media("audio", AUD, 19, 3, clip), _media("image", IMG, 22, 16, blue)]
    inputs = m.multimodal_inputs(ids, media, sample_rate=16_000)
    assert inputs["prompt_token_ids"] == [1, 2, IMG, 3, AUD, IMG, 4]
    assert inputs["multi_modal_data"] == {"image": [red, blue], "audio": [(clip, 16_000)]}


def test_multimodal_inputs_without_media_is_the_plain_prompt():
    assert m.multimodal_inputs([5, 6, 7], []) == {"prompt_token_ids": [5, 6, 7]}


def test_parts_expanded_with_other_tokens_collapse_whole():
    # Pixtral-style: rows of image tokens with break and end tokens
    brk, end = 902, 903
    ids = [1, IMG, IMG, brk, IMG, IMG, end, 2]
    assert m.template_prompt_ids(ids, [_media("image", IMG, 1, 6)]) == [1, IMG, 2]


SRC = object()


@pytest.mark.parametrize("media", [
    [_media("image", IMG, 1, 2)],  # the decoded source missing
    [_media("video", IMG, 1, 2, SRC)],  # a kind TensorRT-LLM is not given
    [_media("image", IMG, 0, 2, SRC)],  # the span does not start at its placeholder
    [_media("image", IMG, 1, 9, SRC)],  # past the prompt
    [_media("image", IMG, 1, 2, SRC), _media("image", IMG, 2, 1, SRC)],  # overlapping
])
def test_inconsistent_media_are_refused(media):
    with pytest.raises(m.UnsupportedRequest):
        m.multimodal_inputs([1, IMG, IMG, 4], media)
