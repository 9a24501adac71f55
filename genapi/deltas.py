"""Coalescing of Generate events that are already waiting to be sent.

When a reader falls behind its stream (the core behind the engine, the shim behind the
core, a client behind the shim), several text deltas of one choice are queued at once.
Sending them as one event (one gRPC message, one SSE chunk) costs one event's work instead
of one per token, and bounds what piles up. Both tiers use it, on protobuf events only.
"""
from __future__ import annotations

from typing import Sequence

from genapi.v1 import generation_service_pb2 as pb

#: Queued events from which a reader counts as behind and merges them. Below it every
#: token keeps its own event, so a reader that keeps up sees the same events run after run
#: (one per token, as the engine made them); a reader behind by this many merges.
BEHIND = 8

#: Event kinds whose consecutive deltas of one choice concatenate into one.
MERGEABLE = ("text", "reasoning")


def merge_deltas(events: Sequence[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    """`events` with each run of consecutive text deltas (or reasoning deltas) of the same
    choice merged into one event: texts concatenated, logprobs concatenated in order, and
    the usage of the run's last event (usage is a running total, so it stays exact). Other
    events (started, tool calls, finished) pass unchanged and end a run; their order is
    kept. Mutates the first event of each run (callers pass events they own)."""
    out: list[pb.GenerateResponse] = []
    head, head_kind = None, None
    for ev in events:
        kind = ev.WhichOneof("event")
        if kind in MERGEABLE and head is not None and kind == head_kind and ev.choice_index == head.choice_index:
            if kind == "text":
                head.text.text += ev.text.text
                if ev.text.logprobs:
                    head.text.logprobs.extend(ev.text.logprobs)
            else:
                head.reasoning.text += ev.reasoning.text
            if ev.HasField("usage"):
                head.usage.CopyFrom(ev.usage)
            continue
        out.append(ev)
        head, head_kind = (ev, kind) if kind in MERGEABLE else (None, None)
    return out


def coalesce(events: Sequence[pb.GenerateResponse], queued: int | None = None) -> Sequence[pb.GenerateResponse]:
    """`merge_deltas(events)` when the reader is behind (`queued`, default len(events),
    is at least BEHIND), else `events` as they are."""
    return merge_deltas(events) if (len(events) if queued is None else queued) >= BEHIND else events
