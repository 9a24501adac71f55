"""Server-sent-events framing for OpenAI-style streams.

Every payload is one `data:` line: JSON never contains raw CR/LF (they are escaped), so
a frame cannot be split or spoofed by text such as "\\n\\ndata: [DONE]".
"""
from __future__ import annotations

import base64
import os
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


# Stream obfuscation (OpenAI's `stream_options.include_obfuscation`, on by default): each
# chunk carries an `obfuscation` string of random characters that brings its JSON to a
# multiple of OBFUSCATION_BLOCK bytes, so a frame's size no longer tells the length of its
# text (the token-length side channel of Weiss et al., 2024, "What Was Your Prompt? A
# Remote Keylogging Attack on AI Assistants").
OBFUSCATION_BLOCK = 64
OBFUSCATION_MIN = 16  # characters of padding at least, so equal-size texts still differ


def obfuscated_frame(obj: dict) -> bytes:
    """One frame of `obj` (a non-empty JSON object) with an `obfuscation` field added
    last: random URL-safe characters (one byte each), at least OBFUSCATION_MIN, such that
    the frame's JSON is a multiple of OBFUSCATION_BLOCK bytes long."""
    head = dumps(obj).encode("utf-8")[:-1] + b',"obfuscation":"'
    pad = OBFUSCATION_MIN + (-(len(head) + OBFUSCATION_MIN + 2)) % OBFUSCATION_BLOCK
    noise = base64.urlsafe_b64encode(os.urandom(pad))[:pad]
    return b"data: " + head + noise + b'"}\n\n'


def obfuscated_frames(objs) -> bytes:
    return b"".join(obfuscated_frame(o) for o in objs)


def event_frame(obj: dict) -> bytes:
    """One named-event frame, `event: <obj["type"]>` then `data: {json}` (the Responses
    API's framing)."""
    return b"event: " + str(obj["type"]).encode("ascii", "replace") + b"\n" + frame(obj)


def event_frames(objs) -> bytes:
    return b"".join(event_frame(o) for o in objs)
