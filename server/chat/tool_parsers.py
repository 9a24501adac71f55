"""Tool calls in a model's output text, parsed incrementally, one parser per format.

Formats (the `tool_parser` model option; `detect_tool_parser` picks one from the chat
template when it is unset):

  hermes       `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per
               call, text allowed around them (Hermes/NousResearch, Qwen2.5, Qwen3)
  llama3_json  the whole output is `{"name": ..., "parameters": {...}}` (optionally after
               `<|python_tag|>`), several separated by `;` (Llama 3.1+ JSON tool calling)
  mistral      `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral v0.3 format)

`feed(text)` takes output in pieces of any size and returns events: `str` (content),
`CallStart(index, name)`, `CallArguments(index, text)`. Arguments are streamed as the
model writes them when the call object starts with its name (the usual order, and the
one constrained decoding produces); otherwise the call is emitted whole once its object
closes. The argument fragments of a call concatenate to its complete arguments JSON.
Text that only looks like the start of a marker is held back until it is decided, so a
marker split across tokens never reaches the content; an object that turns out not to be
a call is returned as content, unchanged.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .markers import held_suffix, split_at_marker


@dataclass(frozen=True)
class CallStart:
    """A tool call began: its position in the choice's calls and the function name."""

    index: int
    name: str


@dataclass(frozen=True)
class CallArguments:
    """The next fragment of call `index`'s arguments (JSON text)."""

    index: int
    text: str


ParserEvent = str | CallStart | CallArguments

# `{"name": "<name>", "arguments": {` (or "parameters"): the call can stream from here.
_STREAMABLE_HEAD = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*\{')


class _CallObject:
    """Scans one call object character by character (JSON strings and nesting tracked)."""

    def __init__(self, index: int):
        self.index = index
        self.raw = ""
        self.depth = 0
        self.in_string = self.escaped = False
        self.streaming = False  # name emitted, arguments being streamed
        self.args_done = False
        self.done = False

    def feed(self, text: str) -> tuple[int, list[ParserEvent]] | None:
        """Consumes text up to the end of the object: (characters used, events); None
        when the text cannot be a JSON object."""
        events: list[ParserEvent] = []
        args = []
        before = self.raw  # what earlier pieces added: restored when this is not a call
        for i, c in enumerate(text):
            if not self.raw and c != "{":
                return None
            self.raw += c
            was_depth = self.depth
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
            if self.streaming and not self.args_done:
                args.append(c)
                if self.depth == 1 and was_depth == 2:
                    self.args_done = True
            elif not self.streaming and c == "{" and self.depth == 2:
                m = _STREAMABLE_HEAD.fullmatch(self.raw)
                if m:
                    self.streaming = True
                    events.append(CallStart(self.index, json.loads(f'"{m.group(1)}"')))
                    args.append(c)
            if self.depth == 0:
                self.done = True
                if args:
                    events.append(CallArguments(self.index, "".join(args)))
                if not self.streaming:
                    whole = self._whole_call()
                    if whole is None:
                        self.raw = before
                        return None
                    events += whole
                return i + 1, events
        if args:
            events.append(CallArguments(self.index, "".join(args)))
        return len(text), events

    def _whole_call(self) -> list[ParserEvent] | None:
        try:
            obj = json.loads(self.raw)
        except ValueError:
            return None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        return [CallStart(self.index, obj["name"]), CallArguments(self.index, text)]


class ToolCallParser:
    """Base of the formats: content outside calls, call objects inside (see module doc).

    Subclasses set `openers` and `name`, and say what follows an opener and an object."""

    name = ""
    openers: tuple[str, ...] = ()

    def __init__(self):
        self._buf = ""
        self._state = "content"
        self._opener = ""
        self._call: _CallObject | None = None
        self._lead = ""  # blanks between an opener and its object
        self._blank = ""  # blanks after a call, content only if more text follows
        self.calls = 0  # calls started

    @property
    def in_call(self) -> bool:
        """A call object (or a list of them) is open: a later call may still follow."""
        return self._state in ("object", "array")

    # -- hooks --------------------------------------------------------------------------
    def _after_opener(self) -> None:
        self._state = "object"

    def _after_object(self) -> bool:
        """Consumes what may follow a call object from the buffer; False to wait for more."""
        self._state = "content"
        return True

    # -- driver -------------------------------------------------------------------------
    def feed(self, text: str) -> list[ParserEvent]:
        self._buf += text
        out: list[ParserEvent] = []
        while self._step(out):
            pass
        return out

    def finish(self, constrained: bool = False) -> list[ParserEvent]:
        """What is held at the end: an unfinished marker or a call that never became one is
        content; a call cut short (max_tokens) keeps the arguments it streamed. With
        `constrained` calls (the tool-call grammar: whatever follows an opener is a call) a
        call cut short before its arguments is dropped, never content."""
        out: list[ParserEvent] = []
        call = self._call
        if self._state == "object" and (call is None or not call.streaming):
            if not constrained:
                self._content(out, self._opener + self._lead + (call.raw if call else "") + self._buf)
        elif self._state in ("content", "start"):
            if not (constrained and held_suffix(self._buf, self.openers) == len(self._buf)):
                self._content(out, self._buf)  # (constrained: a cut-off opener is no content)
        elif self._state == "array":
            self._content(out, self._opener + self._buf)
        self._buf = ""
        return out

    def _content(self, out: list[ParserEvent], text: str) -> None:
        if not text:
            return
        if self.calls and not (self._blank + text).strip():
            self._blank += text  # only blanks between or after calls so far
            return
        out.append(self._blank + text)
        self._blank = ""

    def _step(self, out: list[ParserEvent]) -> bool:
        if not self._buf:
            return False
        if self._state == "content":
            split = split_at_marker(self._buf, self.openers) if self.openers else None
            if split is None:
                keep = held_suffix(self._buf, self.openers) if self.openers else 0
                self._content(out, self._buf[:len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return False
            before, self._opener, self._buf = split
            self._content(out, before)
            self._after_opener()
            return True
        if self._state == "object":
            if self._call is None:
                head = self._buf.lstrip()
                self._lead += self._buf[:len(self._buf) - len(head)]
                self._buf = head
                if not head:
                    return False
                self._call = _CallObject(self.calls)
            fed = self._call.feed(self._buf)
            if fed is None:  # not a call: the opener and the text are content
                self._content(out, self._opener + self._lead + self._call.raw + self._buf)
                self._buf, self._call, self._lead, self._state = "", None, "", "content"
                return False
            used, events = fed
            self._buf = self._buf[used:]
            if any(isinstance(e, CallStart) for e in events):
                self.calls += 1
                self._blank = ""
            out += events
            if not self._call.done:
                return False
            self._call, self._lead = None, ""
            self._state = "after_object"
            return True
        if self._state == "after_object":
            return self._after_object()
        return self._other_state(out)

    def _other_state(self, out: list[ParserEvent]) -> bool:
        raise AssertionError(self._state)

    def _expect(self, token: str) -> bool | None:
        """After optional blanks, does the buffer start with `token`? True (consumed),
        None (cannot tell yet), False (it does not)."""
        head = self._buf.lstrip()
        if head.startswith(token):
            self._buf = head[len(token):]
            return True
        if token.startswith(head):
            return None
        return False


class HermesParser(ToolCallParser):
    name = "hermes"
    openers = ("<tool_call>",)
    close = "</tool_call>"

    def _after_object(self) -> bool:
        found = self._expect(self.close)
        if found is None:
            return False
        self._state = "content"  # a missing close marker: the text after the call is content
        return True


class MistralParser(ToolCallParser):
    name = "mistral"
    openers = ("[TOOL_CALLS]",)

    def _after_opener(self) -> None:
        self._state = "array"

    def _other_state(self, out: list[ParserEvent]) -> bool:  # "array": `[` after the opener
        found = self._expect("[")
        if found is None:
            return False
        if found:
            self._state = "object"
        else:
            self._content(out, self._opener)
            self._state = "content"
        return True

    def _after_object(self) -> bool:
        for token, state in ((",", "object"), ("]", "content")):
            found = self._expect(token)
            if found is None:
                return False
            if found:
                self._state = state
                return True
        self._state = "content"
        return True


class Llama3JsonParser(ToolCallParser):
    name = "llama3_json"
    python_tag = "<|python_tag|>"

    def __init__(self):
        super().__init__()
        self._state = "start"

    def _other_state(self, out: list[ParserEvent]) -> bool:  # "start": is the output a call?
        head = self._buf.lstrip()
        if not head:
            return False
        if head.startswith(self.python_tag):
            self._buf, self._opener, self._state = head[len(self.python_tag):], self.python_tag, "object"
        elif head.startswith("{"):
            self._state = "object"
        elif self.python_tag.startswith(head):
            return False
        else:
            self._state = "content"  # no opener later in the text: it is all content
        return True

    def _after_object(self) -> bool:
        found = self._expect(";")
        if found is None:
            return False
        self._opener = ""
        self._state = "object" if found else "content"
        return True


PARSERS: dict[str, type[ToolCallParser]] = {p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser)}


def detect_tool_parser(chat_template: str | None) -> str | None:
    """The format a chat template teaches its model, from the markers it writes; None
    when it shows none (then the model's option `tool_parser` must name one)."""
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<|python_tag|>" in template or '"parameters"' in template:
        return "llama3_json"
    return None
