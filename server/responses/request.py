"""A response's parameters and conversation -> the GenerateRequest that runs it (the one
generation path). Pure."""
from __future__ import annotations

from genapi.v1 import generation_service_pb2 as gen_pb
from genapi.v1 import response_service_pb2 as pb


def generate_request(params: pb.ResponseParameters, messages, request_id: str) -> gen_pb.GenerateRequest:
    """`max_output_tokens` -> stopping.max_tokens, `output_logprobs`/`top_logprobs` ->
    output options, `text_format` -> response_format; the rest maps one to one."""
    req = gen_pb.GenerateRequest(request_id=request_id, model=params.model, messages=messages,
                                 tools=params.tools, reasoning_effort=params.reasoning_effort)
    if params.HasField("temperature"):
        req.sampling.temperature = params.temperature
    if params.HasField("top_p"):
        req.sampling.top_p = params.top_p
    if params.HasField("max_output_tokens"):
        req.stopping.max_tokens = params.max_output_tokens
    if params.output_logprobs:
        req.output.logprobs = True
        if params.HasField("top_logprobs"):
            req.output.top_logprobs = params.top_logprobs
    if params.HasField("tool_choice"):
        req.tool_choice.CopyFrom(params.tool_choice)
    if params.HasField("parallel_tool_calls"):
        req.parallel_tool_calls = params.parallel_tool_calls
    if params.HasField("text_format"):
        req.response_format.CopyFrom(params.text_format)
    return req
