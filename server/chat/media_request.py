"""A chat request's media parts, from the proto to the engine request, in three steps
that the generation service orders around the admission place:
`check_request_media` (pure and cheap: kinds, roles, counts; before the place is taken),
`load_media` (fetched and decoded under the [media] policy; after the place is taken, so
a full engine refuses a request without fetching anything), then `chat_prompt`
(templated, checked against the context, expanded by the model's processor; in a worker
thread, with the prompt)."""
from __future__ import annotations

import asyncio
from typing import Callable

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb

from ..convert.media import MediaPart, check_media, media_parts
from ..errors import GenapiError, invalid
from ..media.errors import MediaError
from ..media.policy import MediaPolicy
from ..media.resolve import check_media_count, load_audio, load_images
from .media_prompt import expand_media, max_audio_seconds, sampling_rate
from .template import render_prompt

DETAILS = {content_pb2.IMAGE_DETAIL_LOW: "low", content_pb2.IMAGE_DETAIL_HIGH: "high"}


def _refused(e: MediaError, param: str, kind: str) -> GenapiError:
    return invalid(e.message, e.param or param, e.code or ("invalid_image" if kind == "image" else "invalid_audio"))


def check_request_media(request: pb.GenerateRequest, info, policy: MediaPolicy) -> list[MediaPart]:
    """The request's media parts (convert.media.media_parts), once the cheap checks pass:
    INVALID_ARGUMENT, param = the part, for a kind the model does not take, a part outside
    a user message, or more than `policy.max_images` images / `max_audio_parts` audio
    parts. Nothing is fetched or decoded."""
    parts = media_parts(request.messages)
    if parts:
        check_media(request.messages, parts, request.model, info.media)
        try:
            check_media_count([(p.param, p.kind) for p in parts], policy)
        except MediaError as e:
            raise _refused(e, "messages", next(p.kind for p in parts if p.param == e.param)) from None
    return parts


async def load_media(parts: list[MediaPart], info, policy: MediaPolicy) -> list[tuple]:
    """`parts` (from check_request_media) fetched and decoded under `policy`, in request
    order: ("image", RGB PIL image, detail "low" | "high" | "auto") and ("audio", float32
    mono samples at the processor's rate). INVALID_ARGUMENT, param = the part, for a part
    that cannot be used (server/media: refused URL, failed fetch, bad data, over a size or
    duration cap, audio under 0.1 s: code audio_too_short; all the audio parts together
    over `policy.max_audio_total_seconds`)."""
    if not parts:
        return []
    param, kind = "messages", "image"
    try:
        images = iter(await load_images([(p.param, p.part) for p in parts if p.kind == "image"], policy))
        out, audio_s = [], 0.0
        for param, kind, part in ((p.param, p.kind, p.part) for p in parts):
            if kind == "image":
                out.append(("image", next(images), DETAILS.get(part.detail, "auto")))
                continue
            rate = sampling_rate(info.processor)  # an audio model's (a vision processor has no feature extractor)
            samples = await asyncio.to_thread(load_audio, part, rate, max_audio_seconds(info.processor), policy)
            audio_s += len(samples) / rate
            if audio_s > policy.max_audio_total_seconds:
                raise MediaError(f"The request's audio parts are longer than {policy.max_audio_total_seconds:g} "
                                 "seconds in total.")
            out.append(("audio", samples))
        return out
    except MediaError as e:
        raise _refused(e, param, kind) from None


def chat_prompt(info, messages, tools, kwargs: dict, media: list,
                fits: Callable[[int], object] | None = None) -> tuple[list[int], list]:
    """(prompt token ids, the engine's MediaInputs): the conversation templated and
    tokenized, each media part's placeholder expanded by the model's processor.
    `fits(n)` raises when a prompt of n tokens cannot run (the context check); it is
    called on the templated prompt before the processor runs, each placeholder counted as
    one token (a lower bound of what the part expands to), so a prompt whose text alone
    is over the context is refused without computing any media's features."""
    ids = render_prompt(info.tokenizer, messages, tools, kwargs, info.media)
    if not media:
        return ids, []
    if fits is not None:
        fits(len(ids))
    return expand_media(ids, media, info.processor, keep_sources=info.raw_media)
