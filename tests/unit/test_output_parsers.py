"""Tool-call and reasoning parsers (server/chat/): every way of splitting the text into
pieces gives the same result, and no part of a marker ever reaches the content."""
from __future__ import annotations

import json

import pytest

from server.chat.output import ChoiceOutput, OutputConventions, Reasoning, check_options
from server.chat.reasoning import ReasoningParser, prompt_opens_thinking
from server.chat.tool_parsers import (
    PARSERS,
    CallArguments,
    CallStart,
    HermesParser,
    Llama3JsonParser,
    MistralParser,
    detect_tool_parser,
)


def pieces_of(text: str, cuts: tuple[int, ...]) -> list[str]:
    bounds = (0, *cuts, len(text))
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def splits(text: str):
    """Every split into two pieces, and every split into single characters."""
    yield [text]
    for i in range(1, len(text)):
        yield pieces_of(text, (i,))
    yield list(text)


def parse(cls, pieces: list[str]):
    parser, events = cls(), []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls: dict[int, list] = {}
    for e in events:
        if isinstance(e, CallStart):
            assert e.index not in calls  # one start per call
            calls[e.index] = [e.name, ""]
        elif isinstance(e, CallArguments):
            calls[e.index][1] += e.text
    return content, [tuple(calls[i]) for i in sorted(calls)], events


HERMES = ('I will check. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", '
          '"days": [1, {"unit": "}<tool_call>"}]}}\n</tool_call>\n<tool_call>\n{"arguments": {"q": "x\\"y"}, '
          '"name": "search"}\n</tool_call>')
CASES = [
    (HermesParser, HERMES, "I will check. ",
     [("get_weather", '{"city": "Paris", "days": [1, {"unit": "}<tool_call>"}]}'), ("search", '{"q": "x\\"y"}')]),
    (HermesParser, "no <tool_ call and <tool_call> not json </tool_call> end",
     "no <tool_ call and <tool_call> not json </tool_call> end", []),
    (HermesParser, 'plain {"name": "f", "arguments": {}} text', 'plain {"name": "f", "arguments": {}} text', []),
    (MistralParser, '[TOOL_CALLS] [{"name": "a", "arguments": {"q": 1}}, {"name": "b", "arguments": {}}]', "",
     [("a", '{"q": 1}'), ("b", "{}")]),
    (MistralParser, "say [TOOL_CALLS] nothing", "say [TOOL_CALLS] nothing", []),
    (Llama3JsonParser, ' {"name": "a", "parameters": {"q": 1}}; {"name": "b", "parameters": {}}', "",
     [("a", '{"q": 1}'), ("b", "{}")]),
    (Llama3JsonParser, '<|python_tag|>{"name": "a", "parameters": {"q": [1, 2]}}', "", [("a", '{"q": [1, 2]}')]),
    (Llama3JsonParser, 'The answer is {"name": "a"}', 'The answer is {"name": "a"}', []),
    (Llama3JsonParser, '{"answer": 42} ok', '{"answer": 42} ok', []),
]


@pytest.mark.parametrize("cls, text, content, calls", CASES, ids=[f"{c.name}-{i}" for i, (c, *_) in enumerate(CASES)])
def test_every_split_point_gives_the_same_calls_and_content(cls, text, content, calls):
    for pieces in splits(text):
        got_content, got_calls, events = parse(cls, pieces)
        assert (got_content, got_calls) == (content, calls), pieces
        for _, arguments in got_calls:
            json.loads(arguments)  # the fragments make whole JSON
        if calls:  # no piece of an opener leaks into the content
            assert not any(isinstance(e, str) and ("<tool" in e or "[TOOL" in e) for e in events)


def test_arguments_stream_before_the_call_closes():
    parser = HermesParser()
    events = parser.feed('<tool_call>\n{"name": "f", "arguments": {"city": "Par')
    assert events == [CallStart(0, "f"), CallArguments(0, '{"city": "Par')]
    assert parser.in_call
    assert parser.feed('is"}}\n</tool_call>') == [CallArguments(0, 'is"}')]
    assert not parser.in_call and parser.calls == 1


def test_a_call_cut_short_keeps_what_it_streamed_and_a_half_marker_is_content():
    parser = HermesParser()
    events = parser.feed('<tool_call>{"name": "f", "arguments": {"a": ') + parser.finish()
    assert events == [CallStart(0, "f"), CallArguments(0, '{"a": ')]
    parser = HermesParser()
    assert parser.feed("hello <tool_") == ["hello "]
    assert parser.finish() == ["<tool_"]


@pytest.mark.parametrize("template, expected", [
    ("... <tool_call> ...", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3_json"),
    ("{{ messages }}", None), (None, None),
])
def test_parser_detected_from_the_template(template, expected):
    assert detect_tool_parser(template) == expected
    assert expected is None or expected in PARSERS


THINK = "Let me think: 2 < 3 and </thin is not the end.</think>\n\nThe answer."


def reason(pieces, thinking=True, markers=("<think>", "</think>")):
    parser, reasoning, content = ReasoningParser(markers, thinking=thinking), "", ""
    for piece in pieces:
        r, c = parser.feed(piece)
        reasoning, content = reasoning + r, content + c
    r, c = parser.finish()
    return reasoning + r, content + c


@pytest.mark.parametrize("text, thinking, expected", [
    (THINK, True, ("Let me think: 2 < 3 and </thin is not the end.", "The answer.")),
    ("\n<think>deep</think>done", False, ("deep", "done")),
    ("no thinking here", False, ("", "no thinking here")),
    ("<thin", False, ("", "<thin")),
    ("still thinking when cut", True, ("still thinking when cut", "")),
])
def test_reasoning_split_at_every_point_never_leaks_a_marker(text, thinking, expected):
    for pieces in splits(text):
        reasoning, content = reason(pieces, thinking)
        assert (reasoning, content) == expected, pieces


def test_configured_marker_pair():
    assert reason(["[[plan]] a b [[/plan]] c"], thinking=False, markers=("[[plan]]", "[[/plan]]")) == (" a b ", "c")


def test_prompt_decides_whether_output_starts_thinking():
    markers = ("<think>", "</think>")
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n", markers)
    assert not prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n\n", markers)
    assert not prompt_opens_thinking("<|im_start|>assistant\n", markers)


def test_choice_output_runs_reasoning_then_tools():
    conv = OutputConventions.resolve({}, "<think></think> <tool_call>")
    assert (conv.tool_parser, conv.reasoning_markers) == ("hermes", ("<think>", "</think>"))
    out = ChoiceOutput(conv, tools=True, thinking=True)
    text = 'hmm <tool_call> maybe</think>ok <tool_call>{"name": "f", "arguments": {}}</tool_call>'
    pieces = [p for ch in text for p in out.feed(ch)] + out.finish()
    assert "".join(p.text for p in pieces if isinstance(p, Reasoning)) == "hmm <tool_call> maybe"
    assert "".join(p for p in pieces if isinstance(p, str)) == "ok "
    assert [p for p in pieces if isinstance(p, CallStart)] == [CallStart(0, "f")]
    assert out.calls == 1


@pytest.mark.parametrize("options, match", [
    ({"tool_parser": "xml"}, "tool_parser"), ({"reasoning_parser": "r1"}, "reasoning_parser"),
    ({"reasoning_markers": ["<t>"]}, "reasoning_markers"), ({"reasoning_markers": ["a", "a"]}, "reasoning_markers"),
])
def test_bad_output_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        check_options(options)


def test_options_override_detection():
    conv = OutputConventions.resolve({"tool_parser": "mistral", "reasoning_parser": "none"}, "<tool_call><think>")
    assert (conv.tool_parser, conv.reasoning_markers, conv.thinking_switch) == ("mistral", None, False)
    assert OutputConventions.resolve({"tool_parser": "none"}, "<tool_call>").tool_parser is None
    assert OutputConventions.resolve({}, "{% if enable_thinking %}").thinking_switch
