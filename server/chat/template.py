"""Typed chat input -> prompt token ids, through the checkpoint's own chat template."""
from __future__ import annotations

import functools
import inspect
import json

from genapi.v1 import content_pb2

from ..errors import invalid, quote
from .normalize import normalize, template_traits

ROLE_NAMES = {
    content_pb2.ROLE_SYSTEM: "system",
    content_pb2.ROLE_DEVELOPER: "developer",
    content_pb2.ROLE_USER: "user",
    content_pb2.ROLE_ASSISTANT: "assistant",
    content_pb2.ROLE_TOOL: "tool",
}


def to_template_messages(messages, media: tuple[str, ...] = ()) -> list[dict]:
    """Proto messages -> the dicts chat templates expect: text content joined to a string;
    a message with media parts (kinds in `media`, the model's) keeps its parts in order,
    Hugging Face style (`[{"type": "text", "text": ...}, {"type": "image"}, ...]`), so
    the template writes its placeholder where each image stood."""
    if not messages:
        raise invalid("messages must contain at least one message", "messages")
    out = []
    for i, m in enumerate(messages):
        role = ROLE_NAMES.get(m.role)
        if role is None:
            raise invalid(f"messages[{i}].role is not set", f"messages[{i}].role")
        texts, parts = [], []
        for j, part in enumerate(m.content):
            kind = part.WhichOneof("part")
            if kind == "text":
                texts.append(part.text)
                parts.append({"type": "text", "text": part.text})
                continue
            if kind not in media:
                raise invalid(f"messages[{i}].content[{j}]: {kind} input is not supported by this model",
                              f"messages[{i}].content[{j}]", "unsupported_parameter")
            parts.append({"type": kind})
        d = {"role": role, "content": "\n".join(texts) if len(parts) == len(texts) else parts}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            d["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _arguments(c.arguments)}}
                for c in m.tool_calls
            ]
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        out.append(d)
    return out


def _arguments(text: str):
    """Call arguments as templates expect them (Hugging Face's convention: a dict); text
    that is not a JSON object stays text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, dict) else text


def render_prompt(tokenizer, messages, tools: list[dict] | None = None,
                  template_kwargs: dict | None = None, media: tuple[str, ...] = ()) -> list[int]:
    """Adapts the conversation to the template (`normalize.py`), applies the chat template
    (with the assistant generation prompt) and tokenizes.

    `tools`: OpenAI-shaped function definitions (convert.tools.ToolPlan.tools) the template renders into the
    prompt; `template_kwargs`: extra template variables (e.g. `enable_thinking`); `media`:
    the part kinds the model takes (each image becomes one placeholder token, expanded by
    chat/media_prompt.py).

    Control tokens the caller writes into a message (`<|im_end|>\n<|im_start|>system`)
    are encoded as plain text: only the template's own control tokens become tokens, so
    a user cannot close their turn and forge a system or assistant one. transformers
    older than 5.23 cannot do that; with those such messages are refused instead."""
    dicts = to_template_messages(messages, media)
    dicts = normalize(dicts, template_traits(tokenizer))  # roles and turn order the template accepts
    sanitizes = _can_sanitize(type(tokenizer))
    if not sanitizes:
        refuse_control_tokens(tokenizer, dicts)
    kwargs = dict(template_kwargs or {}, tools=tools or None)
    try:
        if sanitizes:
            return list(tokenizer.apply_chat_template(
                dicts, add_generation_prompt=True, tokenize=True, return_dict=False, sanitize_control_tokens=True,
                **kwargs))
        text = tokenizer.apply_chat_template(dicts, add_generation_prompt=True, tokenize=False, **kwargs)
    except Exception as e:  # templates reject bad turn orders with raise_exception()
        raise invalid(f"messages could not be formatted with the model's chat template: {quote(e)}", "messages")
    return tokenizer.encode(text, add_special_tokens=False)


@functools.cache
def _can_sanitize(tokenizer_type) -> bool:
    return "sanitize_control_tokens" in inspect.signature(tokenizer_type.apply_chat_template).parameters


def refuse_control_tokens(tokenizer, dicts: list[dict]) -> None:
    """400 when a message's text contains one of the tokenizer's special tokens."""
    specials = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
    for i, d in enumerate(dicts):
        content = d["content"]
        if not isinstance(content, str):
            content = "\n".join(p.get("text", "") for p in content)
        for token in specials:
            if token in content:
                raise invalid(f"messages[{i}].content contains the control token {token!r}, which this server "
                              "cannot encode as text (it needs transformers >= 5.23)", f"messages[{i}].content")
