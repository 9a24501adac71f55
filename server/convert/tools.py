"""Pure validation of a GenerateRequest's tools and tool choice -> `ToolPlan`.

Rules (OpenAI's): function names are 1-64 of a-z, A-Z, 0-9, `_`, `-` and unique;
`parameters`, when given, is a JSON Schema (checked with jsonschema's metaschema) of
type object; a named tool_choice must name a declared function; `required` and a named
function need tools; tool messages carry the id of the call they answer. Every refusal
is INVALID_ARGUMENT naming the field (`tools[i].function.parameters` is
`invalid_function_parameters`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import jsonschema
from google.protobuf import json_format

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb

from ..errors import invalid, quote
from .generation import integral_numbers

NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EMPTY_PARAMETERS = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolPlan:
    """What the request asks of tools.

    mode: "none" (tools not rendered, output not parsed), "auto", "required", or
    "function" (the call must be to `function`); `parallel`: more than one call allowed;
    `tools`: OpenAI-shaped definitions for the chat template; `parameters`: each
    function's argument schema, by name."""

    mode: str = "none"
    function: str = ""
    parallel: bool = True
    tools: list[dict] = field(default_factory=list)
    parameters: dict[str, dict] = field(default_factory=dict)


_MODES = {
    content_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: "auto",
    content_pb2.TOOL_CHOICE_MODE_NONE: "none",
    content_pb2.TOOL_CHOICE_MODE_AUTO: "auto",
    content_pb2.TOOL_CHOICE_MODE_REQUIRED: "required",
}


def _parameters(tool: content_pb2.Tool, param: str) -> dict:
    if not tool.HasField("parameters"):
        return dict(EMPTY_PARAMETERS)
    schema = integral_numbers(json_format.MessageToDict(tool.parameters))
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as e:
        raise invalid(f"Invalid schema for function '{tool.name}': {quote(e.message)}", param,
                      "invalid_function_parameters") from None
    if schema.get("type", "object") != "object":
        raise invalid(f"Invalid schema for function '{tool.name}': the parameters must be a JSON Schema of type "
                      f"'object', got type {quote(schema.get('type'))}", param, "invalid_function_parameters")
    return schema


def tool_plan(req: pb.GenerateRequest) -> ToolPlan:
    """Validates tools, tool_choice and tool messages (see module doc) -> ToolPlan."""
    for i, m in enumerate(req.messages):
        if m.role == content_pb2.ROLE_TOOL and not m.tool_call_id:
            raise invalid(f"messages[{i}]: a tool message needs the tool_call_id of the call it answers",
                          f"messages[{i}].tool_call_id")
    parameters: dict[str, dict] = {}
    tools = []
    for i, tool in enumerate(req.tools):
        param = f"tools[{i}].function"
        if not NAME.fullmatch(tool.name):
            raise invalid(f"Invalid '{param}.name': {quote(tool.name)}. Function names are 1 to 64 characters "
                          "of a-z, A-Z, 0-9, underscores and dashes.", f"{param}.name")
        if tool.name in parameters:
            raise invalid(f"Invalid 'tools': the function name '{tool.name}' is declared twice.", f"{param}.name")
        parameters[tool.name] = _parameters(tool, f"{param}.parameters")
        fn = {"name": tool.name, "parameters": parameters[tool.name]}
        if tool.description:
            fn["description"] = tool.description
        tools.append({"type": "function", "function": fn})

    choice = req.tool_choice.WhichOneof("choice") if req.HasField("tool_choice") else None
    function = req.tool_choice.function_name if choice == "function_name" else ""
    mode = "function" if choice == "function_name" else _MODES.get(req.tool_choice.mode)
    if mode is None:
        raise invalid(f"tool_choice mode {req.tool_choice.mode} is not a known mode", "tool_choice")
    if mode in ("required", "function") and not tools:
        raise invalid("tool_choice 'required' or a named function is only allowed when tools are specified",
                      "tool_choice")
    if mode == "function" and function not in parameters:
        raise invalid(f"Invalid 'tool_choice': the function {quote(function)} is not one of the tools.",
                      "tool_choice")
    if not tools:
        mode = "none"
    parallel = req.parallel_tool_calls if req.HasField("parallel_tool_calls") else True
    return ToolPlan(mode=mode, function=function, parallel=parallel and mode != "function",
                    tools=tools if mode != "none" else [], parameters=parameters)
