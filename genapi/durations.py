"""Go durations, the format of OpenAI's `x-ratelimit-reset-*` headers (`20ms`, `1s`,
`6.5s`, `1m0s`, `2m30s`): written by the core (server/limits.py), read back by the shim
(shim/ratelimit.py) when it answers a key whose window is spent without asking the core."""
from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def go_duration(seconds: float) -> str:
    """`seconds` as a Go duration rounded to the millisecond (Go writes zero as `0s`);
    negative values read as 0."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    rest = round(rest, 3)
    if rest >= 60:  # rounding carried a whole minute
        minutes, rest = minutes + 1, 0.0
    text = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{text}s" if minutes else f"{text}s"


def parse_go_duration(text: str) -> float | None:
    """Seconds of a Go duration made of h/m/s/ms parts (`1m30s` -> 90.0); None for
    anything else (empty, negative, other units, trailing text)."""
    text = text.strip()
    if not text or _PART.sub("", text):
        return None
    return sum(float(n) * _UNIT_S[unit] for n, unit in _PART.findall(text))
