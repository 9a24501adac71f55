"""Conversations any chat template accepts: the one place where an OpenAI conversation is
adapted to what the checkpoint's template can render, before rendering.

Chat templates differ in the roles they know and the turn orders they allow, and strict
ones refuse the rest with `raise_exception(...)` (Qwen3-style templates have no
`developer` role, Gemma-style ones no `system` role, Mistral- and Llama-2-style ones
require user/assistant alternation). What a template can do is found by rendering tiny
probe conversations with it (never by model name), once per template text:

- `developer` messages become `system` ones when the template has no developer role
  (OpenAI treats developer messages as system-level instructions);
- `system` messages the template cannot place (no system role, or one only at the very
  start) are prepended to the next user message;
- with strict alternation, consecutive plain-text messages of one role are joined (and
  leading system messages are, for templates that take one only at the start).

A conversation that still cannot be rendered faithfully (instructions with no user
message after them to carry them) is refused with a 400 that says why; whatever the
template itself still refuses is reported by `template.render_prompt` with the
template's own message.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from ..errors import invalid

#: Joins the texts of merged messages.
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class TemplateTraits:
    """What a chat template renders faithfully (each found by a probe conversation)."""

    developer: bool = True  # a developer message, as its own turn
    system: bool = True  # a system message first
    system_anywhere: bool = True  # a system message after other turns
    strict_alternation: bool = False  # two user messages in a row are refused


def _renders(tokenizer, messages: list[dict]) -> bool:
    """True when the template renders `messages` with every message's text in the output."""
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception:  # noqa: BLE001 - raise_exception() and whatever else a template raises
        return False
    return isinstance(text, str) and all(m["content"] in text for m in messages)


def _probe(tokenizer) -> TemplateTraits:
    def turn(role: str, n: int) -> dict:
        return {"role": role, "content": f"genapi-probe-{role}-{n}"}

    return TemplateTraits(
        developer=_renders(tokenizer, [turn("developer", 1), turn("user", 1)]),
        system=_renders(tokenizer, [turn("system", 1), turn("user", 1)]),
        system_anywhere=_renders(tokenizer, [turn("user", 1), turn("assistant", 1), turn("system", 1),
                                             turn("user", 2)]),
        strict_alternation=not _renders(tokenizer, [turn("user", 1), turn("user", 2)]),
    )


_traits: dict[str, TemplateTraits] = {}
_lock = threading.Lock()


def template_traits(tokenizer) -> TemplateTraits:
    """The traits of the tokenizer's chat template, probed once per template text."""
    key = str(getattr(tokenizer, "chat_template", None))
    with _lock:
        if key in _traits:
            return _traits[key]
    traits = _probe(tokenizer)
    with _lock:
        return _traits.setdefault(key, traits)


def _plain(m: dict) -> bool:
    """Only a role and content (text, or parts with media): safe to merge with a neighbour."""
    return set(m) <= {"role", "content"}


def _joined(a, b):
    """Two messages' contents as one: text joined with SEPARATOR; with media, their parts
    in order with SEPARATOR between them."""
    if isinstance(a, str) and isinstance(b, str):
        return a + SEPARATOR + b
    return _parts(a) + [{"type": "text", "text": SEPARATOR}] + _parts(b)


def _parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def normalize(messages: list[dict], traits: TemplateTraits) -> list[dict]:
    """Adapts template-ready message dicts (`template.to_template_messages`) to the
    template's traits; returns new dicts, the input is not changed. Raises GenapiError
    (INVALID_ARGUMENT, param `messages[i]`) when instructions cannot be placed."""
    out: list[dict] = []
    pending: list[tuple[int, str]] = []  # (index, text) of system messages for the next user turn
    for i, m in enumerate(messages):
        m = dict(m)
        if m["role"] == "developer" and not traits.developer:
            m["role"] = "system"
        if m["role"] == "system":
            first = all(o["role"] == "system" for o in out)
            if not traits.system or not (first or traits.system_anywhere):
                pending.append((i, m["content"]))
                continue
        if m["role"] == "user" and pending:
            joined = SEPARATOR.join(text for _, text in pending)
            if isinstance(m["content"], str):
                m["content"] = joined + SEPARATOR + m["content"]
            else:  # parts (a message with images): the instructions go first
                m["content"] = [{"type": "text", "text": joined + SEPARATOR}, *m["content"]]
            pending = []
        # One turn of each role at a time where the template wants that (a template taking
        # a system message only at the start takes only one).
        merge = traits.strict_alternation or (m["role"] == "system" and not traits.system_anywhere)
        if merge and out and out[-1]["role"] == m["role"] and _plain(out[-1]) and _plain(m):
            out[-1]["content"] = _joined(out[-1]["content"], m["content"])
            continue
        out.append(m)
    if pending:
        i = pending[0][0]
        where = "has no system role" if not traits.system else "accepts a system message only at the start"
        raise invalid(f"messages[{i}]: this model's chat template {where}, so its instructions go into the next "
                      "user message, but no user message follows it", f"messages[{i}]")
    return out
