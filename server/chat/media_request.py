"""A chat request's media parts, from the proto to the engine request: fetched and
decoded under the [media] policy (`request_media`, before the request takes an admission
place), then templated and expanded by the model's processor (`chat_prompt`, in a worker
thread, with the prompt)."""
from __future__ import annotations

import asyncio

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb

from ..convert.media import check_media, media_parts
from ..errors import invalid
from ..media.errors import MediaError
from ..media.policy import MediaPolicy
from ..media.resolve import load_audio, load_images
from .media_prompt import expand_media, max_audio_seconds, sampling_rate
from .template import render_prompt

DETAILS = {content_pb2.IMAGE_DETAIL_LOW: "low", content_pb2.IMAGE_DETAIL_HIGH: "high"}


async def request_media(request: pb.GenerateRequest, info, policy: MediaPolicy) -> list[tuple[str, object]]:
    """The request's media parts, fetched and decoded under `policy`, in request order:
    ("image", RGB PIL image, detail "low" | "high" | "auto") and ("audio", float32 mono
    samples at the processor's rate).
    INVALID_ARGUMENT, param = the part, for a media part the model does not take or a part
    that cannot be used (server/media: refused URL, failed fetch, bad data, too many
    images, over a size or duration cap)."""
    parts = media_parts(request.messages)
    if not parts:
        return []
    check_media(request.messages, parts, request.model, info.media)
    param, kind = "messages", "image"
    try:
        images = iter(await load_images([(where, part) for where, what, part in parts if what == "image"], policy))
        out = []
        for param, kind, part in parts:
            if kind == "image":
                out.append(("image", next(images), DETAILS.get(part.detail, "auto")))
            else:
                out.append(("audio", await asyncio.to_thread(
                    load_audio, part, sampling_rate(info.processor), max_audio_seconds(info.processor), policy)))
        return out
    except MediaError as e:
        raise invalid(e.message, e.param or param, "invalid_image" if kind == "image" else "invalid_audio") from None


def chat_prompt(info, messages, tools, kwargs: dict, media: list) -> tuple[list[int], list]:
    """(prompt token ids, the engine's MediaInputs): the conversation templated and
    tokenized, each media part's placeholder expanded by the model's processor."""
    ids = render_prompt(info.tokenizer, messages, tools, kwargs, info.media)
    if not media:
        return ids, []
    return expand_media(ids, media, info.processor, keep_sources=info.raw_media)
