"""Pure checks of a GenerateRequest's media parts, before anything is fetched.

`media_parts(messages)` -> [MediaPart(message, param, kind, part)] in request order,
`param` the part's request path ("messages[0].content[1]");
`check_media(messages, parts, model, accepts)` refuses what the model cannot take
(INVALID_ARGUMENT naming the model and the part).
"""
from __future__ import annotations

from typing import Any, NamedTuple

from genapi.v1 import content_pb2

from ..engines.base import MEDIA_KINDS
from ..errors import invalid, quote


class MediaPart(NamedTuple):
    """One image or audio part of a request."""

    message: int  # index of its message in `messages`
    param: str  # "messages[i].content[j]"
    kind: str  # "image" | "audio" (the ContentPart field)
    part: Any  # the ImagePart / AudioPart


def media_parts(messages) -> list[MediaPart]:
    """Every image and audio part, in request order."""
    out = []
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content):
            kind = part.WhichOneof("part")
            if kind in MEDIA_KINDS:
                out.append(MediaPart(i, f"messages[{i}].content[{j}]", kind, getattr(part, kind)))
    return out


def check_media(messages, parts: list[MediaPart], model: str, accepts: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT (param = the part) for the first media part the model cannot take
    (`accepts`: its ChatModelInfo.media) or that is not in a user message (chat templates
    render media in user turns only)."""
    for p in parts:
        if p.kind not in accepts:
            raise invalid(f"The model `{quote(model)}` does not accept {p.kind} input ({p.param}); "
                          f"send text only, or use a model that takes {p.kind} input.",
                          p.param, "unsupported_parameter")
        if messages[p.message].role != content_pb2.ROLE_USER:
            raise invalid(f"{p.param}: {p.kind} parts are accepted in user messages only.", p.param)
