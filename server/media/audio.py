"""Audio decoding with PyAV (FFmpeg): any common container or codec (wav, mp3, flac,
ogg/vorbis/opus, m4a/aac, webm, ...) to mono 16-bit PCM at one sample rate.

`decode_audio(data, rate, max_seconds)` -> numpy int16 [n] of mono samples at `rate` Hz
(channels averaged by FFmpeg's resampler). Raises AudioError, whose message names the
problem for the client: an empty file, bytes FFmpeg cannot read as a container, a
container without an audio stream, a stream that does not decode, audio of zero
duration, audio longer than `max_seconds`.
"""
from __future__ import annotations

import io

import numpy as np

from server.media.errors import MediaError

SAMPLE_RATE = 16_000
# OpenAI's floor, with its words: shorter audio is a 400 `audio_too_short` (transcription
# and chat audio parts alike).
MIN_AUDIO_S = 0.1


class AudioError(MediaError):
    """The bytes are not usable audio; the message says why (safe to show the client)."""


def _ffmpeg_reason(e: Exception) -> str:
    text = getattr(e, "strerror", None) or str(e)
    return text.split(":")[-1].strip() or type(e).__name__


def decode_audio(data: bytes, rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Mono int16 samples at `rate` Hz; AudioError when the bytes are not usable audio."""
    import av

    if not data:
        raise AudioError("The audio file is empty.")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise AudioError(f"The file is not a supported audio file: it could not be read as a media container "
                         f"({_ffmpeg_reason(e)}).") from None
    with container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise AudioError("The file has no audio stream.")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        limit = None if max_seconds is None else int(max_seconds * rate)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    total += chunk.size
                if limit is not None and total > limit:
                    raise AudioError(f"The audio is longer than this model's limit of {max_seconds:g} seconds.")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
                total += chunks[-1].size
        except AudioError:
            raise
        except (av.FFmpegError, ValueError, OSError) as e:
            if total == 0:
                raise AudioError(f"The audio stream could not be decoded ({_ffmpeg_reason(e)}).") from None
            # A damaged tail (a truncated upload): keep what decoded, as ffmpeg does.
    if total == 0:
        raise AudioError("The audio has zero duration.")
    if limit is not None and total > limit:
        raise AudioError(f"The audio is longer than this model's limit of {max_seconds:g} seconds.")
    return np.concatenate(chunks).astype(np.int16, copy=False)
