"""A chat model's output conventions, and the per-choice pipeline applying them.

`OutputConventions.resolve(options, chat_template)` reads the model options

  tool_parser        "auto" (default: detected from the chat template), "none", or one of
                     tool_parsers.PARSERS ("hermes", "llama3_json", "mistral")
  reasoning_parser   "auto" (default: "think" when the template writes the markers),
                     "none", or "think"
  reasoning_markers  [start, end] of the thinking block (default ["<think>", "</think>"])

`ChoiceOutput` runs one choice's output text through the reasoning parser, then the
tool-call parser, and returns typed pieces: `Reasoning`, `str` (content), `CallStart`,
`CallArguments`.
"""
from __future__ import annotations

from dataclasses import dataclass

from .reasoning import DEFAULT_MARKERS, ReasoningParser
from .tool_parsers import PARSERS, CallArguments, CallStart, ToolCallParser, detect_tool_parser

AUTO, NONE = "auto", "none"
REASONING_PARSERS = ("think",)
#: The template kwarg Qwen3-style templates read to turn thinking on or off.
THINKING_SWITCH = "enable_thinking"


@dataclass(frozen=True)
class Reasoning:
    """Thinking text of a reasoning model."""

    text: str


OutputPiece = Reasoning | str | CallStart | CallArguments


def _choice(options: dict, key: str, allowed: tuple[str, ...]) -> str:
    value = options.get(key, AUTO)
    if value not in (AUTO, NONE) + allowed:
        raise ValueError(f"option {key} must be one of {', '.join((AUTO, NONE) + allowed)}, got {value!r}")
    return value


def _markers(options: dict) -> tuple[str, str]:
    markers = options.get("reasoning_markers", list(DEFAULT_MARKERS))
    if (not isinstance(markers, (list, tuple)) or len(markers) != 2
            or not all(isinstance(m, str) and m for m in markers) or markers[0] == markers[1]):
        raise ValueError(f"option reasoning_markers must be two different non-empty strings, got {markers!r}")
    return markers[0], markers[1]


def check_options(options: dict) -> None:
    """ValueError naming the first bad output option (checked at start-up)."""
    _choice(options, "tool_parser", tuple(PARSERS))
    _choice(options, "reasoning_parser", REASONING_PARSERS)
    _markers(options)


@dataclass(frozen=True)
class OutputConventions:
    """How one model writes tool calls and thinking (None: it does not)."""

    tool_parser: str | None
    reasoning_markers: tuple[str, str] | None
    #: The template has a thinking switch (`enable_thinking`).
    thinking_switch: bool

    @classmethod
    def resolve(cls, options: dict, chat_template: str | None) -> "OutputConventions":
        template = chat_template or ""
        tool = _choice(options, "tool_parser", tuple(PARSERS))
        if tool == AUTO:
            tool = detect_tool_parser(template)
        reasoning = _choice(options, "reasoning_parser", REASONING_PARSERS)
        markers = _markers(options)
        if reasoning == AUTO:
            reasoning = "think" if markers[0] in template and markers[1] in template else NONE
        return cls(tool_parser=None if tool in (None, NONE) else tool,
                   reasoning_markers=None if reasoning == NONE else markers,
                   thinking_switch=THINKING_SWITCH in template)


class ChoiceOutput:
    """One choice's output text -> pieces (see module doc).

    `tools`: parse tool calls (tools were given and tool_choice is not none);
    `thinking`: the prompt opened a thinking block (reasoning.prompt_opens_thinking);
    `constrained`: the calls follow the tool-call grammar (chat.tool_grammar)."""

    def __init__(self, conventions: OutputConventions, *, tools: bool, thinking: bool, constrained: bool = False):
        markers = conventions.reasoning_markers
        self.constrained = constrained
        self.reasoning = ReasoningParser(markers, thinking=thinking) if markers else None
        self.tools: ToolCallParser | None = None
        if tools and conventions.tool_parser:
            self.tools = PARSERS[conventions.tool_parser]()

    @property
    def thinking(self) -> bool:
        """Whether text fed now counts as reasoning (for reasoning_tokens)."""
        return self.reasoning is not None and self.reasoning.thinking

    @property
    def calls(self) -> int:
        return self.tools.calls if self.tools else 0

    def feed(self, text: str) -> list[OutputPiece]:
        if self.reasoning is None:
            return self._content(text)
        reasoning, content = self.reasoning.feed(text)
        return ([Reasoning(reasoning)] if reasoning else []) + self._content(content)

    def finish(self) -> list[OutputPiece]:
        out: list[OutputPiece] = []
        if self.reasoning is not None:
            reasoning, content = self.reasoning.finish()
            out += ([Reasoning(reasoning)] if reasoning else []) + self._content(content)
        if self.tools is not None:
            out += self.tools.finish(self.constrained)
        return [p for p in out if p != ""]

    def _content(self, text: str) -> list[OutputPiece]:
        if self.tools is None:
            return [text] if text else []
        return [p for p in self.tools.feed(text) if p != ""] if text else []
