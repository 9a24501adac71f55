"""Coalescing of Generate events that are already waiting to be sent.

When a reader falls behind its stream (the core behind the engine, the shim behind the
core, a client behind the shim), several text deltas of one choice are queued at once.
Sending them as one event (one gRPC message, one SSE chunk) costs one event's work instead
of one per token, and bounds what piles up. Both tiers use it, on protobuf events only.

A caller that reads the whole answer before it replies (the shim's non-streamed chat
completions) says so with the call metadata WHOLE; the core then merges the deltas of up
to WHOLE_EVENTS events into one message however fast it reads: two or three messages per
request instead of one per token, each of which costs both tiers ~0.1 ms of CPU
(bench/frontend.py --nonstream). The merged answer is the same text, logprobs and usage.
"""
from __future__ import annotations

from typing import Sequence

from genapi.v1 import generation_service_pb2 as pb

#: Queued events from which a reader counts as behind and merges them. Below it every
#: token keeps its own event, so a reader that keeps up sees the same events run after run
#: (one per token, as the engine made them); a reader behind by this many merges.
BEHIND = 8

#: gRPC metadata of a Generate call whose caller needs no event before the end.
WHOLE = ("genapi-deltas", "whole")

#: The most events merged into one message for a WHOLE caller (bounds the message size).
WHOLE_EVENTS = 256

#: Event kinds whose consecutive deltas of one choice concatenate into one.
MERGEABLE = ("text", "reasoning")


def merge_deltas(events: Sequence[pb.GenerateResponse], interleaved: bool = False) -> list[pb.GenerateResponse]:
    """`events` with each run of consecutive text deltas (or reasoning deltas) of the same
    choice merged into one event: texts concatenated, logprobs concatenated in order, and
    the usage of the run's last event (usage is a running total, so it stays exact). Other
    events (started, tool calls, finished) pass unchanged and end a run; their order is
    kept. `interleaved`: only an event of the same choice ends its run (the n choices'
    deltas alternate; for a WHOLE caller, which orders only within a choice), and the last
    event carries the last usage. Mutates the first event of each run (callers pass events
    they own)."""
    out: list[pb.GenerateResponse] = []
    heads: dict[int, pb.GenerateResponse] = {}  # choice -> the first event of its open run
    usage = None
    for ev in events:
        kind = ev.WhichOneof("event")
        head = heads.get(ev.choice_index)
        if ev.HasField("usage"):
            usage = ev.usage
        if kind in MERGEABLE and head is not None and head.WhichOneof("event") == kind:
            if kind == "text":
                head.text.text += ev.text.text
                if ev.text.logprobs:
                    head.text.logprobs.extend(ev.text.logprobs)
            else:
                head.reasoning.text += ev.reasoning.text
            if ev.HasField("usage"):
                head.usage.CopyFrom(ev.usage)
            continue
        if not interleaved:
            heads.clear()
        if kind in MERGEABLE:
            heads[ev.choice_index] = ev
        else:
            heads.pop(ev.choice_index, None)
        out.append(ev)
    if interleaved and usage is not None and out and out[-1].usage != usage:
        out[-1].usage.CopyFrom(usage)
    return out


def coalesce(events: Sequence[pb.GenerateResponse], queued: int | None = None) -> Sequence[pb.GenerateResponse]:
    """`merge_deltas(events)` when the reader is behind (`queued`, default len(events),
    is at least BEHIND), else `events` as they are."""
    return merge_deltas(events) if (len(events) if queued is None else queued) >= BEHIND else events
