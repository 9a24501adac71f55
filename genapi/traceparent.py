"""The W3C Trace Context `traceparent` header, parsed the same way by both tiers.

`parse_traceparent(value)` -> (trace_id, parent_id, flags), lowercase hex strings of 32, 16
and 2 characters, or None when the value is not a valid traceparent. Rules from W3C Trace
Context Level 1, section 3.2 ("Versioning of traceparent"): version 00 is exactly
`00-<trace-id>-<parent-id>-<flags>`; version ff is invalid; all-zero ids are invalid; a
higher version may append fields after a `-`, and its first four fields are read as
version 00's so that a newer client's trace is continued, not dropped.
"""
from __future__ import annotations

import re

_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
V00_LENGTH = 55


def parse_traceparent(value: str | None) -> tuple[str, str, str] | None:
    """(trace_id, parent_id, flags) of a valid traceparent, else None."""
    if not value:
        return None
    value = value.strip()
    m = _FIELDS.match(value)
    if m is None:
        return None
    version, trace_id, parent_id, flags = m.groups()
    if version == "ff" or trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    if len(value) != V00_LENGTH and (version == "00" or value[V00_LENGTH] != "-"):
        return None  # version 00 has nothing after its flags; a later one only `-`-separated fields
    return trace_id, parent_id, flags
