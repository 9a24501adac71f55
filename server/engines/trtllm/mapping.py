"""Pure mapping between our neutral engine types and TensorRT-LLM's LLM API.

No `tensorrt_llm` import here, so all of it is unit-tested on machines without a GPU.
`adapter.py` beside it feeds these functions real TensorRT-LLM objects.

API followed: TensorRT-LLM 1.2 (`tensorrt_llm/version.py` 1.2.0rc2, commit b35ac1b6),
cross-checked against 1.0.0rc4 (commit 000a01de). The rules this module relies on, with
the file each comes from (paths in that tree; `tests/unit/trtllm_support.py` holds
stand-ins that follow the same rules):

* `tensorrt_llm.LLM` is the PyTorch-backend class (`llmapi/llm.py`: `class LLM(_TorchLLM)`,
  whose `_build_model` asserts there is no engine directory). The TensorRT-engine class,
  `_TrtLLM`, is exported only from the private `tensorrt_llm._tensorrt_engine` and has
  other request rules (prompt + max_tokens <= max_seq_len, logprobs only with
  gather_generation_logits), so `llm_args.backend` other than "pytorch" is refused.
* `SamplingParams` keyword fields used (`sampling_params.py`): max_tokens, temperature,
  top_p, top_k, presence_penalty and frequency_penalty (0 only, see below), seed (greedy
  only, see below), stop, stop_token_ids, n, logprobs (int: top-k per position),
  ignore_eos, include_stop_str_in_output, detokenize, embedding_bias (float32 tensor
  [vocab_size], added to the logits).
* `end_id` is never sent: `BaseLLM._prepare_sampling_params` (`llmapi/llm.py`) runs
  `SamplingParams._setup` only when end_id is None, `_setup` is the one place that
  tokenizes `stop` strings, and `BaseWorker._enqueue_request` (`executor/base_worker.py`)
  calls `_get_stop_words()`, which raises when `stop` was not tokenized. `_setup` takes
  end_id from the tokenizer; every EOS id of the model also goes into stop_token_ids.
* Greedy: 1.2 documents `temperature=0` and `top_k=1` as greedy; 1.0's PyTorch sampler
  ignores temperature and only looks at top_p/top_k. `top_k=1` with temperature and
  top_p unset is greedy in both, so that is what we send.
* `SamplingParams._validate` refuses best_of > 1 with greedy decoding (unless the env var
  TLLM_ALLOW_N_GREEDY_DECODING is set). Greedy choices are identical anyway, so for
  greedy n > 1 we run one sequence and copy its events to every choice (`replicate`).
* Seed: the PyTorch backend's default sampler (`TorchSampler`,
  `_torch/pyexecutor/sampler.py`; `sampler_type="auto"` picks it unless beam search is
  asked for) draws from one generator seeded 42 for all requests and never reads
  `SamplingParams.seed`, so a seed does not reproduce sampled output: `validate` refuses
  seed with temperature > 0.
* Penalties: `TorchSampler` samples with temperature, top_p and top_k only
  (`_request_get_sampling_params` in the same file); presence_penalty and
  frequency_penalty are accepted by SamplingParams and not applied, so `validate` refuses
  non-zero values.
* Request checks of the PyTorch path (`BaseLLM._check_arguments`): only prompt length >
  max_num_tokens without chunked prefill; no max_seq_len check (a prompt at or past it
  fails later in the worker, `_deduce_max_tokens`) and no n <= max_batch_size check
  (that one is on the TensorRT-engine path only). `validate` makes all three checks.
* Logprobs (`TorchSampler.handle_logprobs`): per position a dict token_id ->
  Logprob(logprob, rank) of exactly the top-k of log_softmax(logits) (after
  embedding_bias, before temperature/top_p), ranks 1..k; the sampled token is not added
  when it is outside them (the TensorRT-engine path's `executor/result.py`
  `compute_logprobs` does add it). We ask for one more than the client's top_logprobs;
  see `token_logprob` for the rest.
* Multimodal inputs (`llmapi/llm.py` `generate_async`, checked at commit 092f84d4 of the
  1.x line; `inputs/data.py` `TokensPrompt`): a dict with `prompt_token_ids` and
  `multi_modal_data` ({"image": [PIL images], "audio": [...]}) is, for a model with its
  own input processor, decoded back to text (`tokenizer.decode(prompt_token_ids)`) and
  processed by that processor with add_special_tokens off, which expands each
  placeholder itself. So the ids sent are the chat template's (one placeholder per part),
  not our processor-expanded ones (`multimodal_inputs`). Audio items are (samples, rate)
  tuples, as TensorRT-LLM's own loader (`inputs/utils.py` load_audio) gives them.
* Streaming outputs (`RequestOutput.outputs[i]`, a `CompletionOutput`,
  `executor/result.py`): cumulative `.text`, `.token_ids`, `.finish_reason` in {None,
  'stop', 'length', 'timeout', 'cancelled'}, `.stop_reason` (the stop string, or the stop
  token id, which is then cut from token_ids), `.logprobs` (per position a dict as
  above, or a float).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..base import (
    MEDIA_KINDS,
    EngineInvalidRequest,
    EngineEvent,
    FinishEvent,
    GenerationRequest,
    TextEvent,
    TokenLogprob,
    TopLogprob,
)
# Outputs -> events live in outputs.py (with engine_choices, which both sides use);
# re-exported here for the adapter and the tests.
from .outputs import (  # noqa: F401
    MIN_LOGPROB,
    ChoiceSnapshot,
    ChoiceState,
    StreamState,
    choice_snapshot,
    close_stream,
    engine_choices,
    events_from_output,
    is_greedy,
    replicate,
    token_logprob,
)

#: OpenAI's limit for top_logprobs (the proto documents 0..20).
MAX_TOP_LOGPROBS = 20
#: OpenAI's range for logit_bias values.
LOGIT_BIAS_LIMIT = 100.0

_U64 = (1 << 64) - 1


class UnsupportedRequest(EngineInvalidRequest, ValueError):
    """The request is malformed or asks for something TensorRT-LLM cannot do.

    Bad input, so the service should answer INVALID_ARGUMENT (it is also a ValueError
    for services that only know the base types)."""


# ---------------------------------------------------------------------------- options

#: [models.options] keys the trtllm backend reads, plus the ones other layers read
#: (max_output_tokens: the generation service; fault: the model registry). Anything
#: else is reported and ignored.
OPTION_KEYS = frozenset({
    "max_batch", "max_queue", "max_budget_tokens", "max_context", "max_num_tokens",
    "tensor_parallel_size", "dtype", "free_gpu_memory_fraction", "trust_remote_code",
    "device", "llm_args", "max_output_tokens", "fault",
})
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_QUEUE = 256


def llm_kwargs(path: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keyword arguments for `tensorrt_llm.LLM`, keyword arguments for
    `tensorrt_llm.llmapi.KvCacheConfig`, empty when the defaults apply).

    `llm_args` (a table) is passed to LLM verbatim and wins over the derived keys, for
    anything not mapped here (e.g. enable_chunked_prefill, sampler_type). Raises
    ValueError when it is not a table or names a backend other than "pytorch" (see the
    module docstring: `tensorrt_llm.LLM` cannot load TensorRT engines)."""
    kw: dict[str, Any] = {
        "model": path,
        "max_batch_size": int(options.get("max_batch", DEFAULT_MAX_BATCH)),
    }
    if options.get("dtype") not in (None, "auto"):
        kw["dtype"] = str(options["dtype"])
    if options.get("max_context"):
        kw["max_seq_len"] = int(options["max_context"])
    if options.get("max_num_tokens"):
        kw["max_num_tokens"] = int(options["max_num_tokens"])
    if options.get("tensor_parallel_size"):
        kw["tensor_parallel_size"] = int(options["tensor_parallel_size"])
    if options.get("trust_remote_code"):
        kw["trust_remote_code"] = True
    kv: dict[str, Any] = {}
    if options.get("free_gpu_memory_fraction") is not None:
        kv["free_gpu_memory_fraction"] = float(options["free_gpu_memory_fraction"])
    extra = options.get("llm_args") or {}
    if not isinstance(extra, Mapping):
        raise ValueError("options.llm_args must be a table of tensorrt_llm.LLM arguments")
    if extra.get("backend", "pytorch") != "pytorch":
        raise ValueError(
            f"options.llm_args.backend = {extra['backend']!r} is not supported: the trtllm "
            "backend drives tensorrt_llm.LLM, TensorRT-LLM's PyTorch backend, which does not "
            "load TensorRT engines; leave llm_args.backend unset")
    kw.update(extra)
    return kw, kv


# ---------------------------------------------------------------------- multimodal

def template_prompt_ids(prompt_ids: Sequence[int], media: Sequence[Any]) -> list[int]:
    """The prompt as the chat template wrote it: each media part's tokens (MediaInput.span
    in `prompt_ids`) collapsed back to its one placeholder (MediaInput.placeholder).
    UnsupportedRequest when the spans are not in order, overlap, leave the prompt or do
    not start at their placeholder."""
    out: list[int] = []
    at = 0
    for item in media:
        start, length = item.span
        if start < at or length < 1 or start + length > len(prompt_ids) or prompt_ids[start] != item.placeholder:
            raise UnsupportedRequest(f"media part span {item.span} does not fit the prompt")
        out.extend(prompt_ids[at:start])
        out.append(item.placeholder)
        at = start + length
    out.extend(prompt_ids[at:])
    return out


def multimodal_inputs(prompt_ids: Sequence[int], media: Sequence[Any], sample_rate: int = 16_000) -> dict[str, Any]:
    """The `generate_async` inputs of a prompt with media (see the module docstring):
    {"prompt_token_ids": the template's ids, "multi_modal_data": {"image": [PIL images],
    "audio": [(float32 samples, sample_rate)]}}, each kind's items in prompt order.
    `media`: the request's MediaInputs (kind, placeholder, span, and `source`: the decoded
    part, an RGB PIL image or mono float32 samples at `sample_rate` Hz; our kinds are
    TensorRT-LLM's multi_modal_data keys). Without media: just {"prompt_token_ids": ...}.
    UnsupportedRequest for a kind TensorRT-LLM does not take or a part without its source."""
    data: dict[str, list] = {}
    for item in media:
        if item.kind not in MEDIA_KINDS:
            raise UnsupportedRequest(f"TensorRT-LLM takes no {item.kind} input")
        if item.source is None:
            raise UnsupportedRequest(f"a {item.kind} part came without its decoded source")
        data.setdefault(item.kind, []).append((item.source, sample_rate) if item.kind == "audio" else item.source)
    inputs: dict[str, Any] = {"prompt_token_ids": template_prompt_ids(prompt_ids, media)}
    if data:
        inputs["multi_modal_data"] = data
    return inputs


# --------------------------------------------------------------------------- requests


def _llm_args(options: Mapping[str, Any]) -> Mapping[str, Any]:
    extra = options.get("llm_args") or {}
    return extra if isinstance(extra, Mapping) else {}


def batch_limit(options: Mapping[str, Any]) -> int:
    """The LLM's max_batch_size: `llm_args.max_batch_size` wins over max_batch, as in
    `llm_kwargs`, so that `validate` checks n against what the engine was built with."""
    return int(_llm_args(options).get("max_batch_size")
               or options.get("max_batch", DEFAULT_MAX_BATCH))


def context_limit(options: Mapping[str, Any], max_position_embeddings: int | None) -> int:
    """The LLM's max_seq_len (prompt + completion tokens): `llm_args.max_seq_len` wins
    over max_context, as in `llm_kwargs`; without either, the checkpoint's
    max_position_embeddings (2048 when the config has none)."""
    return int(_llm_args(options).get("max_seq_len") or options.get("max_context")
               or max_position_embeddings or 2048)


def prompt_token_limit(options: Mapping[str, Any]) -> int | None:
    """The longest prompt TensorRT-LLM's PyTorch backend admits, when the options fix it:
    `BaseLLM._check_arguments` refuses prompts longer than max_num_tokens unless chunked
    prefill is on (None: no such limit known here)."""
    extra = _llm_args(options)
    if extra.get("enable_chunked_prefill"):
        return None
    limit = extra.get("max_num_tokens", options.get("max_num_tokens"))
    return int(limit) if limit else None


def validate(req: GenerationRequest, vocab_size: int | None = None,
             max_batch: int | None = None, context_length: int | None = None,
             max_prompt_tokens: int | None = None) -> None:
    """Raise UnsupportedRequest for requests TensorRT-LLM cannot (or must not) run.

    `context_length`: the model's max_seq_len (prompt + completion tokens); prompts at or
    past it, or prompt + max_tokens past it, are refused as context_length_exceeded
    (TensorRT-LLM's PyTorch path would fail them in the worker, mid-stream).
    `max_prompt_tokens`: see `prompt_token_limit`."""
    s = req.sampling
    if not req.prompt_ids:
        raise UnsupportedRequest("the prompt is empty", "messages")
    if req.max_tokens < 1:
        raise UnsupportedRequest(f"max_tokens must be at least 1, got {req.max_tokens}", "max_tokens")
    prompt_len = len(req.prompt_ids)
    if context_length:
        if prompt_len >= context_length:
            raise UnsupportedRequest(
                f"This model's maximum context length is {context_length} tokens, but the "
                f"messages are {prompt_len} tokens, leaving no room for a completion.",
                "messages", "context_length_exceeded")
        if prompt_len + req.max_tokens > context_length:
            raise UnsupportedRequest(
                f"This model's maximum context length is {context_length} tokens. However, "
                f"you requested {prompt_len + req.max_tokens} tokens ({prompt_len} in the "
                f"messages, {req.max_tokens} in the completion).",
                "max_tokens", "context_length_exceeded")
    if max_prompt_tokens and prompt_len > max_prompt_tokens:
        raise UnsupportedRequest(
            f"The messages are {prompt_len} tokens; this model takes prompts of at most "
            f"{max_prompt_tokens} tokens (max_num_tokens, without chunked prefill).",
            "messages", "context_length_exceeded")
    if req.n < 1:
        raise UnsupportedRequest(f"n must be at least 1, got {req.n}", "n")
    if math.isnan(s.temperature) or s.temperature < 0:
        raise UnsupportedRequest(f"temperature must be >= 0, got {s.temperature}", "temperature")
    # TensorRT-LLM documents top_p == 0 as "currently disallowed in the backend".
    if math.isnan(s.top_p) or not 0.0 < s.top_p <= 1.0:
        raise UnsupportedRequest(f"top_p must be in (0, 1], got {s.top_p}", "top_p")
    for name in ("presence_penalty", "frequency_penalty"):
        if not math.isfinite(getattr(s, name)):
            raise UnsupportedRequest(f"{name} must be a finite number", name)
        if getattr(s, name) != 0.0:
            raise UnsupportedRequest(
                f"{name} is not supported on the TensorRT-LLM backend: its PyTorch sampler "
                "does not apply it", name, "unsupported_parameter")
    if not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise UnsupportedRequest(
            f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}", "top_logprobs")
    for token_id, bias in s.logit_bias.items():
        if not isinstance(token_id, int) or token_id < 0 or (
                vocab_size is not None and token_id >= vocab_size):
            raise UnsupportedRequest(
                f"logit_bias token id {token_id} is outside the vocabulary"
                + (f" [0, {vocab_size})" if vocab_size is not None else ""), "logit_bias")
        if not (math.isfinite(bias) and -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT):
            raise UnsupportedRequest(
                f"logit_bias for token {token_id} must be in [-100, 100], got {bias}", "logit_bias")
    if s.seed is not None and not is_greedy(req):
        raise UnsupportedRequest(
            "seed is not supported with temperature > 0 on the TensorRT-LLM backend: its "
            "PyTorch sampler draws from one generator shared by all requests, so a seed "
            "would not reproduce the output", "seed", "unsupported_parameter")
    seqs, _ = engine_choices(req)
    if max_batch is not None and seqs > max_batch:
        # The LLM API checks n against max_batch_size only on the TensorRT-engine path
        # (BaseLLM._check_arguments returns early for the PyTorch backend), so we do.
        raise UnsupportedRequest(f"n={req.n} exceeds this model's max_batch ({max_batch})", "n")


def sampling_kwargs(req: GenerationRequest,
                    eos_token_ids: int | Sequence[int] | None) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.SamplingParams(**kwargs)`.

    `eos_token_ids`: the model's end-of-sequence id, or a list of them (generation_config
    often has several, e.g. <|im_end|> and <|endoftext|>); they become `stop_token_ids`
    (unless ignore_eos). `end_id` stays unset so that TensorRT-LLM runs
    `SamplingParams._setup`, which sets it from the tokenizer and tokenizes `stop` (see
    the module docstring). Logit bias is not in here: see `logit_bias_spec`."""
    s = req.sampling
    seqs, _ = engine_choices(req)
    kw: dict[str, Any] = {
        "max_tokens": req.max_tokens,
        "n": seqs,
        "presence_penalty": float(s.presence_penalty),
        "frequency_penalty": float(s.frequency_penalty),
        "ignore_eos": bool(req.ignore_eos),
        "include_stop_str_in_output": False,
        "detokenize": True,
    }
    if is_greedy(req):
        # top_k=1 (temperature/top_p unset) is greedy in every LLM API version; see the
        # module docstring.
        kw["top_k"] = 1
    else:
        # Always send temperature and top_p: when all three knobs are unset,
        # TensorRT-LLM 1.2 decodes greedily.
        kw["temperature"] = float(s.temperature)
        kw["top_p"] = float(s.top_p)
    if s.seed is not None:
        # Greedy only (validate refuses seeded sampling), where it changes nothing.
        # The C++ runtime's seed is uint64; fold negative int64 seeds onto it.
        kw["seed"] = int(s.seed) & _U64
    stops = [x for x in dict.fromkeys(req.stop) if x]  # dedupe; "" would match anywhere
    if stops:
        kw["stop"] = stops
    if req.logprobs:
        # logprobs=k returns the top-k of each position (at least 1, or TensorRT-LLM
        # returns nothing); one more than the client shows, so that the sampled token
        # is more often among them (the PyTorch sampler does not add it).
        kw["logprobs"] = max(1, int(req.top_logprobs)) + 1
    eos_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids or [])
    if eos_ids and not req.ignore_eos:
        kw["stop_token_ids"] = [int(i) for i in dict.fromkeys(eos_ids)]
    # Structured outputs would map here: response_format -> `guided_decoding=
    # GuidedDecodingParams(json=schema | json_object=True | regex=... | grammar=...)`
    # (sampling_params.py; one guide per request), enforced only when the LLM was built
    # with guided_decoding_backend="xgrammar" (or "llguidance", PyTorch backend only).
    return kw


@dataclass(frozen=True)
class LogitBias:
    """Additive logit bias, applied by the adapter as SamplingParams.embedding_bias.

    TensorRT-LLM has no `logit_bias` field; its own OpenAI server turns logit_bias into
    `embedding_bias`, a float32 [vocab_size] tensor both backends add to the logits
    (and which, unlike a Python logits processor, crosses the process boundary to the
    executor workers)."""

    token_ids: tuple[int, ...]
    values: tuple[float, ...]

    def dense(self, vocab_size: int) -> list[float]:
        """The bias as a dense row of length vocab_size (zeros elsewhere)."""
        row = [0.0] * vocab_size
        for token_id, value in zip(self.token_ids, self.values):
            if not 0 <= token_id < vocab_size:
                raise UnsupportedRequest(
                    f"logit_bias token id {token_id} is outside the vocabulary [0, {vocab_size})")
            row[token_id] += value
        return row


def logit_bias_spec(req: GenerationRequest) -> LogitBias | None:
    """The request's logit bias (zero entries dropped), or None when there is none."""
    items = sorted((int(t), float(v)) for t, v in req.sampling.logit_bias.items() if v != 0.0)
    if not items:
        return None
    return LogitBias(tuple(t for t, _ in items), tuple(v for _, v in items))
