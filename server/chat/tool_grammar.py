"""The decoding constraint that makes a model's tool calls well-formed (pure).

`tool_structural_tag(plan, tool_parser)` returns an xgrammar structural tag (a JSON
document) built of one tag per declared function whose begin text is the call format's
opening up to the arguments (`<tool_call>\\n{"name": "get_weather", "arguments": ` for
Hermes), whose content is the function's parameters schema, and whose end closes the call:

  auto      "triggered_tags" on the format's opener: text is free until the model writes
            it; from there the call must name a declared function and its arguments must
            match its schema
  required  "tags_with_separator", at_least_one: the output is one or more calls and
            nothing else (separated by a newline)
  function  the same, with the one named function as the only tag
  parallel  false: stop_after_first, the output ends after the first call

`thinking_end`: the output starts inside a thinking block that this marker closes
(reasoning models): the thinking is free text and the rules above apply after it.

None when tools are not in use. The tag begins with exactly the text the parsers stream
from (tool_parsers._STREAMABLE_HEAD), so constrained calls stream their arguments.
"""
from __future__ import annotations

import json

from ..convert.tools import ToolPlan
from ..engines.base import Constraint

# tool_parser -> (trigger, begin before the name, between name and arguments, end)
CALL_FORMATS = {
    "hermes": ("<tool_call>", '<tool_call>\n{"name": ', ', "arguments": ', "}\n</tool_call>"),
    "mistral": ("[TOOL_CALLS]", '[TOOL_CALLS][{"name": ', ', "arguments": ', "}]"),
    "llama3_json": ('{"name": ', '{"name": ', ', "parameters": ', "}"),
}

CALL_SEPARATOR = "\n"
# Blanks allowed in a row inside the arguments: enough for `", "` and `": "`, too few for
# a weak model to fill its budget with whitespace (which xgrammar's JSON otherwise permits).
MAX_WHITESPACE = 1


def tool_structural_tag(plan: ToolPlan, tool_parser: str | None, thinking_end: str | None = None) -> dict | None:
    """See the module doc; `tool_parser` names the model's call format."""
    if plan.mode == "none" or tool_parser not in CALL_FORMATS:
        return None
    trigger, head, middle, end = CALL_FORMATS[tool_parser]
    names = [plan.function] if plan.mode == "function" else list(plan.parameters)
    tags = [{
        "type": "tag",
        "begin": head + json.dumps(name) + middle,
        "content": {"type": "json_schema", "json_schema": plan.parameters[name],
                    "max_whitespace_cnt": MAX_WHITESPACE},
        "end": end,
    } for name in names]
    if plan.mode == "auto":
        fmt = {"type": "triggered_tags", "triggers": [trigger], "tags": tags, "at_least_one": False}
    else:
        fmt = {"type": "tags_with_separator", "tags": tags, "separator": CALL_SEPARATOR, "at_least_one": True}
    fmt["stop_after_first"] = not plan.parallel
    if thinking_end:
        thinking = {"type": "tag", "begin": "", "content": {"type": "any_text"}, "end": thinking_end}
        fmt = {"type": "sequence", "elements": [thinking, fmt]}
    return {"type": "structural_tag", "format": fmt}


def think_first(constraint: Constraint, thinking_end: str) -> Constraint:
    """A response_format constraint for an output that starts inside a thinking block:
    free text up to `thinking_end`, then the JSON (object or schema) the constraint asks."""
    schema = json.loads(constraint.spec) if constraint.kind == "json_schema" else {"type": "object"}
    thinking = {"type": "tag", "begin": "", "content": {"type": "any_text"}, "end": thinking_end}
    answer = {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": MAX_WHITESPACE}
    return Constraint("structural_tag", json.dumps(
        {"type": "structural_tag", "format": {"type": "sequence", "elements": [thinking, answer]}}))
