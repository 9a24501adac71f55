"""Content parts -> decoded media: what the core calls for each ImagePart and AudioPart.

`load_image(part, policy)` (async: it may fetch) -> RGB PIL image;
`load_images([(param, part), ...], policy)` -> the images of a request, fetched at once;
`load_audio(part, rate, max_seconds, policy)` -> float32 mono samples;
`check_media_count([(param, kind), ...], policy)`, before anything is fetched. All raise
MediaError (the caller sets `.param`, e.g. "messages[0].content[1]", where it is not set,
and answers INVALID_ARGUMENT).
"""
from __future__ import annotations

import asyncio
import weakref
from collections import Counter

import numpy as np

from server.media.audio import MIN_AUDIO_S, SAMPLE_RATE, decode_audio
from server.media.data_url import parse_data_url
from server.media.errors import MediaError, detached
from server.media.fetch import fetch_url
from server.media.image import check_mime_type, decode_image
from server.media.policy import MediaPolicy


#: What a client calls several parts of each kind, in errors.
PLURALS = {"image": "images", "audio": "audio parts"}


def check_media_count(parts, policy: MediaPolicy) -> None:
    """[(param, "image" | "audio"), ...] in request order: MediaError, param = the first
    part over its kind's limit, when a request carries more than `policy.max_images`
    images or `policy.max_audio_parts` audio parts."""
    limits = {"image": policy.max_images, "audio": policy.max_audio_parts}
    totals = Counter(kind for _, kind in parts)
    seen: Counter = Counter()
    for param, kind in parts:
        seen[kind] += 1
        if seen[kind] > limits[kind]:
            raise MediaError(f"Too many {PLURALS[kind]}: {totals[kind]} (at most {limits[kind]} per request).", param)


async def image_bytes(part, policy: MediaPolicy) -> tuple[bytes, str]:
    """An ImagePart's bytes and the MIME type to hold them to: its `data` with its
    `mime_type`, its data: URL with the URL's type, or its http(s) URL fetched under
    `policy` with the server's Content-Type when that is an image/* type ("" otherwise:
    servers often send octet-stream or text/plain for images, so the bytes decide)."""
    source = part.WhichOneof("source")
    if source == "data":
        if not part.data:
            raise MediaError("The image is empty.")
        if len(part.data) > policy.max_bytes:
            raise MediaError(f"The image is larger than {policy.max_mb:g} MB.")
        return part.data, part.mime_type
    if source != "url" or not part.url.strip():
        raise MediaError("The image has neither a URL nor data.")
    url = part.url.strip()
    if url[:5].lower() == "data:":
        return parse_data_url(url, policy)
    body, content_type = await fetch_url(url, policy)
    return body, content_type if content_type.startswith("image/") else ""


async def load_image(part, policy: MediaPolicy):
    """A `genapi.v1.content_pb2.ImagePart` -> a fully loaded RGB `PIL.Image.Image`
    (decoded in a worker thread, so the event loop keeps serving). MediaError for a
    refused URL, a failed fetch, bad base64, an unsupported type or a bad image."""
    data = None
    try:
        data, mime = await image_bytes(part, policy)
        check_mime_type(mime)
        async with _decode_slots():  # decoded pixels are the big allocation: a few at a time, core-wide
            return await asyncio.to_thread(decode_image, data, policy, mime)
    except MediaError as e:
        error = e
    data = None  # this frame stays in the error's history: without the bytes
    raise detached(error)


# Images decoded at once in one core (its event loop), whatever the requests: a full-size
# decode of a 40-megapixel image is ~160 MB before it is scaled down.
MAX_CONCURRENT_DECODES = 2
_DECODE_SLOTS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = weakref.WeakKeyDictionary()


def _decode_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if (slots := _DECODE_SLOTS.get(loop)) is None:
        slots = _DECODE_SLOTS[loop] = asyncio.Semaphore(MAX_CONCURRENT_DECODES)
    return slots


async def load_images(parts, policy: MediaPolicy) -> list:
    """[(param, ImagePart), ...] (counted by the caller: check_media_count) -> their RGB
    images in order. The parts are fetched and decoded concurrently; on the first failure
    the others are cancelled and the MediaError of the earliest failed part (in request
    order) is raised with its param."""
    parts = list(parts)
    tasks = [asyncio.ensure_future(load_image(part, policy)) for _, part in parts]
    if not tasks:
        return []
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    error = next((t.exception() for t in tasks if not t.cancelled() and t.exception() is not None), None)
    if error is None:
        return [t.result() for t in tasks]
    if isinstance(error, MediaError):
        error.param = error.param or next(p for (p, _), t in zip(parts, tasks) if t.done() and not t.cancelled()
                                          and t.exception() is error)
    tasks = parts = None
    raise detached(error)


def load_audio(part, rate: int = SAMPLE_RATE, max_seconds: float | None = None,
               policy: MediaPolicy | None = None) -> np.ndarray:
    """A `genapi.v1.content_pb2.AudioPart` (`data` in any container PyAV reads; `format`
    is a hint only) -> float32 mono samples in [-1, 1) at `rate` Hz, shape [n].
    `max_seconds`: the model's limit (the policy's max_audio_seconds applies too, and its
    max_bytes). MediaError (an AudioError) for unusable audio; code "audio_too_short"
    under MIN_AUDIO_S (a processor makes no audio token of a few samples)."""
    limits = [s for s in (max_seconds, policy.max_audio_seconds if policy else None) if s]
    if policy is not None and len(part.data) > policy.max_bytes:
        raise MediaError(f"The audio is larger than {policy.max_mb:g} MB.")
    samples = decode_audio(bytes(part.data), rate=rate, max_seconds=min(limits) if limits else None)
    if len(samples) < MIN_AUDIO_S * rate:
        raise MediaError(f"The audio is too short. Minimum audio length is {MIN_AUDIO_S:g} seconds.",
                         code="audio_too_short")
    return samples.astype(np.float32) / 32768.0
