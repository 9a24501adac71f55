"""Pure checks of a GenerateRequest's media parts, before anything is fetched.

`media_parts(messages)` -> [(param, kind, part)] in request order, `param` the part's
request path ("messages[0].content[1]"); `check_media(parts, model, accepts)` refuses
what the model cannot take (INVALID_ARGUMENT naming the model and the part).
"""
from __future__ import annotations

from genapi.v1 import content_pb2

from ..errors import invalid, quote

#: Proto part field -> what a client calls it in errors.
KIND_NAMES = {"image": "image", "audio": "audio"}


def media_parts(messages) -> list[tuple[str, str, object]]:
    """Every image and audio part: (param, "image" | "audio", the ImagePart / AudioPart)."""
    out = []
    for i, m in enumerate(messages):
        for j, part in enumerate(m.content):
            kind = part.WhichOneof("part")
            if kind in KIND_NAMES:
                out.append((f"messages[{i}].content[{j}]", kind, getattr(part, kind)))
    return out


def check_media(messages, parts: list[tuple[str, str, object]], model: str, accepts: tuple[str, ...]) -> None:
    """INVALID_ARGUMENT (param = the part) for the first media part the model cannot take
    (`accepts`: its ChatModelInfo.media) or that is not in a user message (chat templates
    render media in user turns only)."""
    for param, kind, _ in parts:
        if kind not in accepts:
            raise invalid(f"The model `{quote(model)}` does not accept {KIND_NAMES[kind]} input ({param}); "
                          f"send text only, or use a model that takes {KIND_NAMES[kind]} input.",
                          param, "unsupported_parameter")
        i = int(param[len("messages["):param.index("]")])
        if messages[i].role != content_pb2.ROLE_USER:
            raise invalid(f"{param}: {KIND_NAMES[kind]} parts are accepted in user messages only.", param)
