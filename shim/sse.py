"""Server-sent-events framing for OpenAI-style streams.

Every payload is one `data:` line: JSON never contains raw CR/LF (they are escaped), so
a frame cannot be split or spoofed by text such as "\\n\\ndata: [DONE]".
"""
from __future__ import annotations

from typing import Any

from shim.jsonutil import dumps

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
CONTENT_TYPE = "text/event-stream; charset=utf-8"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def frame(obj: Any) -> bytes:
    """One `data: {json}\\n\\n` frame, UTF-8."""
    return b"data: " + dumps(obj).encode("utf-8") + b"\n\n"


def frames(objs) -> bytes:
    return b"".join(frame(o) for o in objs)
