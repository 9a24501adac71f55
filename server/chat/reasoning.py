"""Separating a reasoning model's thinking from its answer, incrementally.

Checkpoints such as Qwen3 and the DeepSeek-R1 distills think between a pair of markers
(`<think>` ... `</think>`) before answering. Their chat templates either open the
thinking block in the generation prompt (the model's output then starts inside it) or
leave the model to open it as its first output. `ReasoningParser` takes the output text
in pieces of any size and returns (reasoning, content) pieces; a marker split across
tokens is held back until it is complete, so no part of it reaches either side.
"""
from __future__ import annotations

from .markers import held_suffix, split_at_marker

DEFAULT_MARKERS = ("<think>", "</think>")


def prompt_opens_thinking(prompt_tail: str, markers: tuple[str, str]) -> bool:
    """Whether the rendered prompt ends inside a thinking block (its last start marker
    comes after its last end marker), so the output begins as reasoning."""
    start, end = markers
    return prompt_tail.rfind(start) > prompt_tail.rfind(end)


class ReasoningParser:
    """One choice's output -> (reasoning, content) pieces.

    `thinking`: the prompt already opened the block (see `prompt_opens_thinking`);
    otherwise a start marker is recognised only as the first non-blank output. Blank
    text right after the end marker (templates put "\\n\\n" there) is not content."""

    def __init__(self, markers: tuple[str, str] = DEFAULT_MARKERS, *, thinking: bool = False):
        self.start, self.end = markers
        self._state = "thinking" if thinking else "opening"
        self._buf = ""
        self._strip = False  # drop blanks at the start of the content

    @property
    def thinking(self) -> bool:
        """True while the text being fed is (or may still be) reasoning."""
        return self._state == "thinking"

    def feed(self, text: str) -> tuple[str, str]:
        self._buf += text
        reasoning = content = ""
        if self._state == "opening":
            head = self._buf.lstrip()
            if head.startswith(self.start):
                self._buf = head[len(self.start):]
                self._state = "thinking"
            elif not head or self.start.startswith(head):
                return "", ""
            else:
                self._state = "content"
        if self._state == "thinking":
            split = split_at_marker(self._buf, (self.end,))
            if split is None:
                keep = held_suffix(self._buf, (self.end,))
                reasoning, self._buf = self._buf[:len(self._buf) - keep], self._buf[len(self._buf) - keep:]
                return reasoning, ""
            reasoning, _, self._buf = split
            self._state, self._strip = "content", True
        content, self._buf = self._buf, ""
        if self._strip:
            content = content.lstrip()
            self._strip = not content
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """What is still held at the end of the output (an unfinished marker is text)."""
        rest, self._buf = self._buf, ""
        if self._state == "thinking":
            return rest, ""
        return "", rest.lstrip() if self._strip else rest
