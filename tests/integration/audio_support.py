"""Audio for the transcription tests: speech from espeak-ng (Debian's package, installed
by build.sh) or, where it is absent, a generated tone with pauses; written in several
containers with PyAV."""
from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

RATE = 16_000


def speech(text: str) -> np.ndarray:
    """int16 mono samples at 16 kHz: `text` spoken by espeak-ng, else a 440/660 Hz tone
    of about the same length with short pauses (one syllable every 0.25 s)."""
    if shutil.which("espeak-ng"):
        wav = subprocess.run(["espeak-ng", "--stdout", "-s", "160", text], check=True,
                             capture_output=True).stdout
        from server.media.audio import decode_audio

        return decode_audio(wav)
    n = max(1, len(text.split())) * RATE // 3
    t = np.arange(n) / RATE
    tone = 0.3 * np.sin(2 * np.pi * np.where((t * 4).astype(int) % 2, 440, 660) * t)
    tone[(t % 1.0) > 0.85] = 0  # pauses
    return (tone * 32767).astype(np.int16)


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


# container -> (PyAV format, codec, sample rate)
CONTAINERS = {"mp3": ("mp3", "libmp3lame", 22050), "flac": ("flac", "flac", 16000),
              "ogg": ("ogg", "libopus", 48000), "m4a": ("ipod", "aac", 22050), "webm": ("webm", "libopus", 48000)}


def encode(samples: np.ndarray, container: str) -> bytes:
    """The samples in `container` ("wav" or a key of CONTAINERS)."""
    if container == "wav":
        return wav_bytes(samples)
    import av

    fmt, codec, rate = CONTAINERS[container]
    src = av.open(io.BytesIO(wav_bytes(samples)))
    out_buf = io.BytesIO()
    out = av.open(out_buf, "w", format=fmt)
    stream = out.add_stream(codec, rate=rate)
    for frame in src.decode(audio=0):
        frame.pts = None
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    src.close()
    return out_buf.getvalue()


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)
