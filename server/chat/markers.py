"""Finding marker strings in text that arrives in pieces (pure functions).

A marker such as `<tool_call>` or `</think>` may be split across tokens, so a streaming
parser may only release text up to the point where a marker could still begin: the
longest suffix of what it holds that is a prefix of a marker is kept back.
"""
from __future__ import annotations


def held_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest proper suffix of `text` that is a prefix of one of
    `markers` (0 when none): those characters must wait for more text."""
    longest = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-n:]):
                longest = n
                break
    return longest


def split_at_marker(text: str, markers: tuple[str, ...]) -> tuple[str, str, str] | None:
    """(before, marker, after) for the earliest complete marker in `text`, else None."""
    best = None
    for marker in markers:
        i = text.find(marker)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, marker)
    if best is None:
        return None
    i, marker = best
    return text[:i], marker, text[i + len(marker):]
