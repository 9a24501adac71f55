"""Shared by the TensorRT-LLM tests (mapping and adapter): engine requests, the
SamplingParams fields the mapping may use, a Logprob stand-in."""
from __future__ import annotations

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


class LP:  # stands in for tensorrt_llm.executor.result.Logprob
    def __init__(self, logprob, rank=None):
        self.logprob, self.rank = logprob, rank


def finishes(events, choice=None):
    return [e for e in events if isinstance(e, FinishEvent) and (choice is None or e.choice == choice)]
