"""Shared by the TensorRT-LLM tests (mapping and adapter): engine requests and stand-ins
for the parts of TensorRT-LLM's LLM API (PyTorch backend) the adapter drives.

The stand-ins follow the real API's rules for every behaviour the adapter relies on;
each rule names the file it comes from, as a path in NVIDIA/TensorRT-LLM at the version
the mapping follows (1.2.0rc2, commit b35ac1b6). What a rule does not cover is scripted
per test (the text and tokens a request produces).
"""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from server.engines.base import FinishEvent, GenerationRequest, SamplingParams

# SamplingParams fields of TensorRT-LLM 1.2.0rc2 (tensorrt_llm/sampling_params.py) that
# the mapping may use; a typo in a key would make SamplingParams(**kwargs) fail.
TRTLLM_SAMPLING_FIELDS = {
    "end_id", "pad_id", "max_tokens", "bad", "bad_token_ids", "stop", "stop_token_ids",
    "include_stop_str_in_output", "embedding_bias", "logits_processor", "n", "best_of",
    "use_beam_search", "top_k", "top_p", "seed", "temperature", "min_tokens",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "logprobs",
    "prompt_logprobs", "guided_decoding", "ignore_eos", "detokenize", "skip_special_tokens",
}


def req(**kw) -> GenerationRequest:
    sampling = kw.pop("sampling", None) or SamplingParams()
    base = dict(request_id="r1", prompt_ids=[1, 2, 3], max_tokens=16)
    base.update(kw)
    return GenerationRequest(sampling=sampling, **base)


def sp(**kw) -> SamplingParams:
    return SamplingParams(**kw)


class LP:  # stands in for tensorrt_llm.executor.result.Logprob (logprob, rank)
    def __init__(self, logprob, rank=None):
        self.logprob, self.rank = logprob, rank


def finishes(events, choice=None):
    return [e for e in events if isinstance(e, FinishEvent) and (choice is None or e.choice == choice)]


class RequestError(RuntimeError):
    """tensorrt_llm/executor/utils.py RequestError: what the worker raises when it cannot
    enqueue a request (BaseWorker._enqueue_request wraps every exception in it)."""


class TrtSamplingParams:
    """tensorrt_llm.SamplingParams (tensorrt_llm/sampling_params.py)."""

    def __init__(self, **kwargs):
        unknown = set(kwargs) - TRTLLM_SAMPLING_FIELDS
        assert not unknown, unknown  # a dataclass(kw_only=True): unknown keys are a TypeError
        self.kwargs = dict(kwargs)
        self.end_id = kwargs.get("end_id")
        self.stop = kwargs.get("stop")
        self.stop_token_ids = kwargs.get("stop_token_ids")
        self.n = kwargs.get("n", 1)
        # __post_init__: best_of defaults to n.
        self.best_of = kwargs.get("best_of") or self.n
        self.temperature = kwargs.get("temperature")
        self.top_p = kwargs.get("top_p")
        self.top_k = kwargs.get("top_k")
        self.max_tokens = kwargs.get("max_tokens", 32)
        self.ignore_eos = kwargs.get("ignore_eos", False)
        self.include_stop_str_in_output = kwargs.get("include_stop_str_in_output", False)
        self._stop_word_ids = None
        self._validate()
        # _validate: logprobs=True means top-1; 0/None means none.
        self.logprobs = kwargs.get("logprobs") and int(kwargs["logprobs"])

    def _validate(self):
        # SamplingParams._validate: ranges, and no best_of > 1 with greedy decoding.
        if self.top_p is not None and not 0 <= self.top_p <= 1:
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if self.best_of > 1 and self._greedy and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING"):
            raise ValueError("Greedy decoding in the LLM API does not allow multiple returns.")

    @property
    def _greedy(self) -> bool:
        # SamplingParams.params_imply_greedy_decoding.
        t, p, k = self.temperature, self.top_p, self.top_k
        return (t is None and p is None and k is None) or k == 1 or p == 0.0 or t == 0

    def _setup(self, tokenizer):
        # SamplingParams._setup: end_id (and pad_id) from the tokenizer when unset, and the
        # only place `stop` strings are tokenized into _stop_word_ids.
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
        if self.stop is not None:
            strs = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [tokenizer.encode(s) for s in strs]
        return self

    def _get_stop_words(self):
        # SamplingParams._get_stop_words: stop strings not processed by _setup -> raise.
        words = [[i] for i in self.stop_token_ids or []]
        if self.stop is None:
            return words
        if self._stop_word_ids is None:
            raise RuntimeError(f"SamplingParams.stop ({self.stop}) is not processed by "
                               "tokenizer, please call the setup method.")
        return words + self._stop_word_ids


def topk_logprobs(distribution: dict[int, float], k: int) -> dict[int, LP]:
    """One position of CompletionOutput.logprobs on the PyTorch backend
    (tensorrt_llm/_torch/pyexecutor/sampler.py, TorchSampler.handle_logprobs): exactly the
    top-k of the distribution, ranks 1..k; the sampled token is not added when it is
    outside them (only the TensorRT-engine path's executor/result.py compute_logprobs
    adds it)."""
    best = sorted(distribution.items(), key=lambda kv: -kv[1])[:k]
    return {tok: LP(value, rank) for rank, (tok, value) in enumerate(best, start=1)}


class TrtResult:
    """The RequestOutput that LLM.generate_async returns (tensorrt_llm/llmapi/llm.py,
    tensorrt_llm/executor/result.py): async-iterated, one cumulative snapshot of every
    choice per step, `.abort()`, `.finished`.

    `steps`: per step, per choice, (text, n_tokens, finish_reason, stop_reason).
    `distributions` (optional): per generated position, (sampled token id, the full
    distribution token id -> logprob); with logprobs asked for, each position reports
    `topk_logprobs(distribution, params.logprobs)`."""

    def __init__(self, steps, distributions=None, error: Exception | None = None):
        self.steps = steps
        self.distributions = distributions
        self.error = error  # raised on iteration, as the proxy delivers worker errors
        self.params: TrtSamplingParams | None = None
        self.aborted = False
        self.finished = False

    def abort(self):
        self.aborted = True

    def _outputs(self, step):
        outs = []
        for i, (text, n, finish, stop_reason) in enumerate(step):
            ids, lps = list(range(n)), []
            if self.distributions is not None:
                ids = [tok for tok, _ in self.distributions[:n]]
                if self.params is not None and self.params.logprobs:
                    lps = [topk_logprobs(dist, self.params.logprobs)
                           for _, dist in self.distributions[:n]]
            outs.append(SimpleNamespace(index=i, text=text, token_ids=ids, finish_reason=finish,
                                        stop_reason=stop_reason, logprobs=lps))
        return outs

    async def _gen(self):
        if self.error is not None:
            await asyncio.sleep(0)
            raise self.error
        last = None
        for step in self.steps:
            await asyncio.sleep(0)
            if self.aborted:
                break
            last = step
            yield SimpleNamespace(outputs=self._outputs(step))
        if self.aborted and last is not None:
            yield SimpleNamespace(outputs=self._outputs(
                [(t, n, "cancelled", None) for t, n, _, _ in last]))
        self.finished = True

    def __aiter__(self):
        return self._gen()


class TrtLLM:
    """tensorrt_llm.LLM, the PyTorch-backend class (tensorrt_llm/llmapi/llm.py:
    `class LLM(_TorchLLM)`). Results are scripted: tests append TrtResult objects to
    `script`, one per generate_async call, in order."""

    #: The tokenizer LLM loads from the model directory (BaseLLM._try_load_tokenizer).
    tokenizer = SimpleNamespace(eos_token_id=2, encode=lambda s: [ord(c) % 10 for c in s])

    def __init__(self, **kwargs):
        # BaseLLM.__init__ takes any backend other than "pytorch"/"_autodeploy" as the
        # TensorRT backend (TrtLlmArgs, which builds an engine); _TorchLLM._build_model
        # then asserts there is no engine directory.
        if kwargs.get("backend", "pytorch") not in ("pytorch", "_autodeploy"):
            raise AssertionError("assert self._engine_dir is None")
        self.kwargs = kwargs
        self.max_seq_len = kwargs.get("max_seq_len", 128)
        self.submitted = []  # (inputs, params)
        self.script = []
        self.shut = False

    def generate_async(self, inputs, sampling_params=None, streaming=False):
        assert streaming is True
        params = sampling_params
        # BaseLLM._prepare_sampling_params: _setup runs only when end_id is None.
        if params.end_id is None:
            params._setup(self.tokenizer)
        prompt_len = len(inputs["prompt_token_ids"])
        # BaseLLM._check_arguments, PyTorch backend: only prompt length vs max_num_tokens
        # without chunked prefill (no max_seq_len check, no n vs max_batch_size check).
        max_num_tokens = self.kwargs.get("max_num_tokens")
        if (not self.kwargs.get("enable_chunked_prefill") and max_num_tokens
                and prompt_len > max_num_tokens):
            raise ValueError(f"The sum of prompt length ({prompt_len}), query length (0) "
                             f"should not exceed max_num_tokens ({max_num_tokens})")
        self.submitted.append((inputs, params))
        result = self.script.pop(0)
        result.params = params
        # BaseWorker._enqueue_request (tensorrt_llm/executor/base_worker.py): the stop
        # words are built from the params (raising when `stop` was not tokenized), and
        # _deduce_max_tokens leaves max_seq_len - prompt_len, <= 0 for a prompt at or past
        # max_seq_len, which tllm.Request refuses. Either way the worker raises
        # RequestError, which the proxy delivers through the result.
        try:
            params._get_stop_words()
            if self.max_seq_len - prompt_len <= 0:
                raise ValueError(f"max_tokens must be positive, got {self.max_seq_len - prompt_len}")
        except Exception as e:
            result.error = RequestError(str(e))
        return result

    def shutdown(self):
        self.shut = True
