"""Pure translation and validation: GenerateRequest proto -> engine GenerationRequest.

`check_identifiers` runs first, before the model is looked up: every identifier a
caller sends (request id, model, message and tool names, call ids) is bounded
(genapi.untrusted), so none reaches an error message, the trailers or a log unbounded.
"""
from __future__ import annotations

import json

import grpc
from google.protobuf import json_format

from genapi.untrusted import MAX_ID_CHARS, MAX_REQUEST_ID_CHARS, MAX_STOP_CHARS, clip
from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb

from ..engines.base import GREEDY_BELOW_TEMPERATURE, Constraint, GenerationRequest, SamplingParams
from ..errors import GenapiError, invalid, quote, too_long

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_N = 128


def _range(value, lo, hi, param, lo_open=False):
    if value != value or value < lo or value > hi or (lo_open and value == lo):
        bound = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise invalid(f"{param} must be in {bound}, got {value:g}", param)


def _bound(value: str, param: str, limit: int = MAX_ID_CHARS) -> None:
    if len(value) > limit:
        raise too_long(param, limit, len(value))


def check_request_id(request_id: str, param: str = "request_id") -> None:
    """At most MAX_REQUEST_ID_CHARS printable characters (it is logged and echoed)."""
    _bound(request_id, param, MAX_REQUEST_ID_CHARS)
    if not request_id.isprintable():
        raise invalid(f"Invalid '{param}': it may only contain printable characters", param)


def check_identifiers(req: pb.GenerateRequest, request_id: str = "") -> None:
    """INVALID_ARGUMENT string_above_max_length for any identifier over its bound,
    including those of tools and tool_choice (checked further in convert.tools)."""
    check_request_id(req.request_id)
    if request_id and request_id != req.request_id:  # from x-request-id metadata
        check_request_id(request_id, "x-request-id")
    _bound(req.model, "model")
    for i, m in enumerate(req.messages):
        _bound(m.name, f"messages[{i}].name")
        _bound(m.tool_call_id, f"messages[{i}].tool_call_id")
        for k, call in enumerate(m.tool_calls):
            _bound(call.id, f"messages[{i}].tool_calls[{k}].id")
            _bound(call.name, f"messages[{i}].tool_calls[{k}].function.name")
    for i, tool in enumerate(req.tools):
        _bound(tool.name, f"tools[{i}].function.name")
    _bound(req.tool_choice.function_name, "tool_choice.function.name")
    _bound(req.response_format.name, "response_format.json_schema.name")


def constraint_of(fmt: content_pb2.ResponseFormat) -> Constraint | None:
    """ResponseFormat -> the grammar constraint the engine enforces: none for text (or
    unset), any JSON object for json_object, the schema for json_schema (required; enforced
    whether `strict` is set or not). The schema itself is checked
    against its JSON Schema metaschema (`jsonschema`, the draft its `$schema` names, else
    2020-12): INVALID_ARGUMENT param response_format naming the first problem. Whether the
    engine can compile it is known only there (also INVALID_ARGUMENT, same param)."""
    if fmt.type == content_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT:
        return Constraint("json_object")
    if fmt.type != content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA:
        return None
    if not fmt.HasField("schema"):
        raise invalid("response_format json_schema needs a schema (response_format.json_schema.schema)",
                      "response_format")
    schema = integral_numbers(json_format.MessageToDict(fmt.schema))
    import jsonschema

    what = f"Invalid schema for response_format {quote(fmt.name)!r}"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise invalid(f"{what}: {clip(e.message, 300)} (at {clip(where, 200)})", "response_format") from None
    except RecursionError:  # a Struct that deep does not parse; kept as a guard
        raise invalid(f"{what}: nested too deeply", "response_format") from None
    return Constraint("json_schema", json.dumps(schema))


def integral_numbers(value):
    """google.protobuf.Struct holds every number as a double: whole numbers back to ints,
    so keywords like maxLength or minItems get the integers their metaschema wants."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: integral_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_numbers(v) for v in value]
    return value


def sampling_params(req: pb.GenerateRequest, vocab: int) -> SamplingParams:
    s = req.sampling
    p = SamplingParams()
    if s.HasField("temperature"):
        _range(s.temperature, 0.0, 2.0, "temperature")
        p.temperature = s.temperature if s.temperature >= GREEDY_BELOW_TEMPERATURE else 0.0
    if s.HasField("top_p"):
        _range(s.top_p, 0.0, 1.0, "top_p", lo_open=True)
        p.top_p = s.top_p
    if s.HasField("seed"):
        p.seed = s.seed
    if s.HasField("presence_penalty"):
        _range(s.presence_penalty, -2.0, 2.0, "presence_penalty")
        p.presence_penalty = s.presence_penalty
    if s.HasField("frequency_penalty"):
        _range(s.frequency_penalty, -2.0, 2.0, "frequency_penalty")
        p.frequency_penalty = s.frequency_penalty
    for tok, bias in s.logit_bias.items():
        if not 0 <= tok < vocab:
            raise invalid(f"logit_bias: token id {tok} is outside the vocabulary [0, {vocab})", "logit_bias")
        _range(bias, -100.0, 100.0, "logit_bias")
        p.logit_bias[tok] = bias
    return p


def check_max_tokens(req: pb.GenerateRequest, max_output: int) -> None:
    """max_tokens, when set, against what needs no prompt: at least 1, at most the output cap."""
    if not req.stopping.HasField("max_tokens"):
        return
    mt = req.stopping.max_tokens
    if mt < 1:
        raise invalid(f"max_tokens must be at least 1, got {mt}", "max_tokens")
    if max_output and mt > max_output:
        raise invalid(f"max_tokens is {mt}, above this model's output limit of {max_output}", "max_tokens")


def resolve_max_tokens(req: pb.GenerateRequest, prompt_len: int, context: int, max_output: int) -> int:
    """The completion budget per choice: the request's, checked against the context and the
    output cap, or else what fits."""
    room = context - prompt_len
    if room <= 0:
        raise GenapiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"This model's maximum context length is {context} tokens, but the messages are "
            f"{prompt_len} tokens, leaving no room for a completion.",
            "context_length_exceeded", "messages")
    if not req.stopping.HasField("max_tokens"):
        return min(room, max_output) if max_output else room
    check_max_tokens(req, max_output)
    mt = req.stopping.max_tokens
    if mt > room:
        raise GenapiError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{prompt_len + mt} tokens ({prompt_len} in the messages, {mt} in the completion). "
            "Please reduce the length of the messages or max_tokens.",
            "context_length_exceeded", "max_tokens")
    return mt


def least_budget_tokens(req: pb.GenerateRequest, n: int) -> int:
    """A lower bound of what the request will charge to the engine's token budget, known
    before its prompt is tokenized: n × max_tokens when the caller set max_tokens."""
    return n * req.stopping.max_tokens if req.stopping.HasField("max_tokens") else 0


def check_request(req: pb.GenerateRequest, request_id: str, *, vocab: int, max_output: int = 0,
                  max_n: int = MAX_N) -> GenerationRequest:
    """Every check that needs no prompt (identifiers, unsupported features, stop, n,
    logprobs, sampling ranges, max_tokens against the output cap): INVALID_ARGUMENT
    before anything costly, so bad input is a 400 however loaded the engine is. Returns
    the engine request without its prompt (`prompt_ids` empty, `max_tokens` 0):
    `with_prompt` completes it."""
    check_identifiers(req)
    stop = list(req.stopping.stop)
    if len(stop) > MAX_STOP:
        raise invalid(f"stop accepts at most {MAX_STOP} sequences, got {len(stop)}", "stop")
    for i, s in enumerate(stop):
        if not s:
            raise invalid("stop sequences must be non-empty strings", "stop")
        _bound(s, f"stop[{i}]", MAX_STOP_CHARS)
    out = req.output
    n = out.n if out.HasField("n") else 1
    if not 1 <= n <= max_n:
        raise invalid(f"n must be between 1 and {max_n}, got {n}", "n")
    logprobs = out.logprobs if out.HasField("logprobs") else False
    top = out.top_logprobs if out.HasField("top_logprobs") else 0
    if top > MAX_TOP_LOGPROBS:
        raise invalid(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}", "top_logprobs")
    if top and not logprobs:
        raise invalid("top_logprobs requires logprobs to be true", "top_logprobs")
    check_max_tokens(req, max_output)
    return GenerationRequest(
        request_id=request_id,
        prompt_ids=[],
        max_tokens=0,
        charge_by_use=not req.stopping.HasField("max_tokens") and not max_output,
        n=n,
        stop=stop,
        ignore_eos=req.stopping.ignore_eos,
        logprobs=logprobs,
        top_logprobs=top,
        sampling=sampling_params(req, vocab),
        constraint=constraint_of(req.response_format),
    )


def with_prompt(gen: GenerationRequest, req: pb.GenerateRequest, prompt_ids: list[int], *, context: int,
                max_output: int = 0) -> GenerationRequest:
    """`gen` (from check_request) with its prompt and its max_tokens resolved against the
    context (INVALID_ARGUMENT context_length_exceeded)."""
    gen.max_tokens = resolve_max_tokens(req, len(prompt_ids), context, max_output)
    gen.prompt_ids = prompt_ids
    return gen


def build_request(req: pb.GenerateRequest, request_id: str, prompt_ids: list[int], *, context: int,
                  vocab: int, max_output: int = 0, max_n: int = MAX_N) -> GenerationRequest:
    """check_request then with_prompt, for a prompt already tokenized."""
    gen = check_request(req, request_id, vocab=vocab, max_output=max_output, max_n=max_n)
    return with_prompt(gen, req, prompt_ids, context=context, max_output=max_output)
