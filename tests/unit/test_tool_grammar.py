"""The tool-call structural tag (server/chat/tool_grammar.py), compiled by xgrammar with
the embedded model's tokenizer: what each tool_choice lets the model write."""
from __future__ import annotations

import json

import pytest

from server.chat.tool_grammar import think_first, tool_structural_tag
from server.chat.tool_parsers import HermesParser
from server.convert.tools import ToolPlan
from server.engines.base import Constraint

from ..conftest import TINY_MODEL

xgr = pytest.importorskip("xgrammar")

SCHEMAS = {"get_weather": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
           "get_time": {"type": "object", "properties": {}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
OTHER = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'


@pytest.fixture(scope="module")
def compiler():
    from transformers import AutoTokenizer

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(TINY_MODEL)))


def accepts(compiler, plan: ToolPlan, text: str, thinking_end=None) -> bool:
    tag = tool_structural_tag(plan, "hermes", thinking_end)
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(xgr.Grammar.from_structural_tag(json.dumps(tag))))
    return matcher.accept_string(text)


@pytest.mark.parametrize("mode, function, parallel, text, ok", [
    ("auto", "", True, "No call needed.", True),
    ("auto", "", True, "Let me check. " + CALL, True),
    ("auto", "", True, '<tool_call>\n{"name": "get_news", ', False),  # undeclared function
    ("auto", "", True, '<tool_call>\n{"name": "get_weather", "arguments": {"town": "x"}}', False),  # schema
    ("required", "", True, "Sure. " + CALL, False),  # must start with a call
    ("required", "", True, CALL + "\n" + OTHER, True),
    ("required", "", True, CALL + " and text", False),  # calls only
    ("required", "", False, CALL + "\n" + OTHER, False),  # one call
    ("function", "get_time", False, CALL, False),  # not the named one
    ("function", "get_time", False, OTHER, True),
])
def test_what_each_tool_choice_allows(compiler, mode, function, parallel, text, ok):
    plan = ToolPlan(mode=mode, function=function, parallel=parallel, parameters=SCHEMAS)
    assert accepts(compiler, plan, text) is ok


def test_constrained_calls_begin_where_the_parser_streams():
    tag = tool_structural_tag(ToolPlan(mode="required", parameters=SCHEMAS), "hermes")
    for t in tag["format"]["tags"]:
        events = HermesParser().feed(t["begin"] + "{")
        assert [type(e).__name__ for e in events] == ["CallStart", "CallArguments"]
    assert tool_structural_tag(ToolPlan(mode="none", parameters=SCHEMAS), "hermes") is None
    assert tool_structural_tag(ToolPlan(mode="auto", parameters=SCHEMAS), None) is None


def test_a_reasoning_model_thinks_freely_before_its_forced_call(compiler):
    plan = ToolPlan(mode="required", parallel=False, parameters=SCHEMAS)
    assert accepts(compiler, plan, "Maybe <tool_call> get_time?</think>" + CALL, "</think>")
    assert not accepts(compiler, plan, "Done.</think>Sure.", "</think>")


@pytest.mark.parametrize("constraint, text, ok", [
    (Constraint("json_object"), 'Let me think.</think>{"a": true}', True),
    (Constraint("json_object"), 'Done.</think>plain text', False),  # JSON after the thinking
    (Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "boolean"}},
                                           "required": ["a"]})), 'Hmm.</think>{"a": false}', True),
    (Constraint("json_schema", json.dumps({"type": "object", "properties": {"a": {"type": "boolean"}},
                                           "required": ["a"]})), 'Hmm.</think>{"b": 1}', False),
])
def test_a_reasoning_model_thinks_before_its_response_format(compiler, constraint, text, ok):
    c = think_first(constraint, "</think>")
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(xgr.Grammar.from_structural_tag(c.spec)))
    assert c.kind == "structural_tag" and matcher.accept_string(text) is ok


def test_a_constrained_call_cut_short_is_never_content():
    cut = '<tool_call>\n{"name": "get_weather", "arg'
    free, constrained = HermesParser(), HermesParser()
    assert free.feed(cut) == [] and constrained.feed(cut) == []  # held back while undecided
    assert free.finish() == [cut]  # unconstrained: it may have been text after all
    assert constrained.finish(constrained=True) == []  # the grammar made it a call
    opener = HermesParser()
    assert opener.feed("<tool_") == [] and opener.finish(constrained=True) == []  # a cut-off opener too
