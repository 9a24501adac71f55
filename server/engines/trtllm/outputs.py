"""TensorRT-LLM outputs -> engine events: per-choice snapshots of the cumulative
`CompletionOutput`s, the text delta and logprobs since the last one, stop strings
held back and cut, finish reasons, and the close of a stream (split from mapping.py,
whose docstring describes the LLM API these follow)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from ..base import EngineEvent, FinishEvent, GenerationRequest, TextEvent, TokenLogprob, TopLogprob

#: What OpenAI reports for a log probability of -inf.
MIN_LOGPROB = -9999.0


def is_greedy(req: GenerationRequest) -> bool:
    return req.sampling.temperature <= 0.0


def engine_choices(req: GenerationRequest) -> tuple[int, int]:
    """(sequences TensorRT-LLM generates, copies of each sequence's events).

    Greedy n > 1 -> (1, n): one sequence, its events replicated to every choice."""
    if req.n > 1 and is_greedy(req):
        return 1, req.n
    return req.n, 1

@dataclass
class ChoiceSnapshot:
    """One choice of a streaming RequestOutput, as plain data (all fields cumulative)."""

    index: int
    text: str = ""
    #: Generated tokens so far.
    num_tokens: int = 0
    #: None while running, else 'stop' | 'length' | 'timeout' | 'cancelled'.
    finish_reason: str | None = None
    #: The stop string (str) or stop token id (int) that ended the choice.
    stop_reason: int | str | None = None
    #: One entry per generated token (only when logprobs were requested).
    logprobs: Sequence[TokenLogprob] = ()


def choice_snapshot(output: Any, logprobs: Sequence[TokenLogprob] = ()) -> ChoiceSnapshot:
    """Reads a TensorRT-LLM CompletionOutput (duck-typed) into a ChoiceSnapshot."""
    return ChoiceSnapshot(
        index=int(output.index),
        text=output.text or "",
        num_tokens=len(output.token_ids or ()),
        finish_reason=output.finish_reason,
        stop_reason=output.stop_reason,
        logprobs=logprobs,
    )


def _logprob_value(x: Any) -> float:
    v = float(getattr(x, "logprob", x))
    return v if v > MIN_LOGPROB else MIN_LOGPROB  # also maps -inf and nan


def token_logprob(token_id: int, entry: Any, top_n: int,
                  token_text: Callable[[int], tuple[str, bytes]]) -> TokenLogprob:
    """Converts one position of CompletionOutput.logprobs.

    `entry` is a float (sampled token only) or a mapping token_id -> Logprob/float of the
    top-k alternatives (k = top_n + 1, see `sampling_kwargs`); the `top_n` best are
    reported. TensorRT-LLM's PyTorch sampler leaves the sampled token out of the mapping
    when it ranks below k (possible only with temperature > 0): its log probability is
    then not known, and the lowest one listed, an upper bound of it, is reported.
    `token_text(id)` returns the token's (text, UTF-8 bytes)."""
    text, raw = token_text(token_id)
    if not isinstance(entry, Mapping):
        return TokenLogprob(token=text, logprob=_logprob_value(entry), bytes=raw)
    ranked = sorted(entry.items(), key=lambda kv: (
        getattr(kv[1], "rank", None) or math.inf, -_logprob_value(kv[1])))
    chosen = entry.get(token_id)
    if chosen is not None:
        value = _logprob_value(chosen)
    else:
        value = min((_logprob_value(lp) for lp in entry.values()), default=MIN_LOGPROB)
    top = []
    for tid, lp in ranked[:top_n]:
        t, b = token_text(int(tid))
        top.append(TopLogprob(token=t, logprob=_logprob_value(lp), bytes=b))
    return TokenLogprob(token=text, logprob=value, bytes=raw, top=top)


@dataclass(frozen=True)
class ChoiceState:
    sent_chars: int = 0  # characters of the cumulative text already emitted
    sent_tokens: int = 0
    sent_logprobs: int = 0
    finished: bool = False  # a FinishEvent went out
    cancelled: bool = False  # TensorRT-LLM reported 'cancelled' (no FinishEvent)
    seen_text: str = ""  # the latest cumulative text (for close_stream)
    seen_tokens: int = 0


@dataclass(frozen=True)
class StreamState:
    """What has been emitted so far, per engine-side choice."""

    num_choices: int
    stop: tuple[str, ...] = ()
    choices: tuple[ChoiceState, ...] = ()

    @classmethod
    def for_request(cls, req: GenerationRequest) -> "StreamState":
        seqs, _ = engine_choices(req)
        stops = tuple(x for x in dict.fromkeys(req.stop) if x)
        return cls(num_choices=seqs, stop=stops, choices=(ChoiceState(),) * seqs)

    @property
    def done(self) -> bool:
        """Every choice ended (finished or cancelled)."""
        return all(c.finished or c.cancelled for c in self.choices)

    @property
    def any_finished(self) -> bool:
        return any(c.finished for c in self.choices)


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, str]:
    """(position, stop string) of the earliest complete stop string, or (-1, "")."""
    best, which = -1, ""
    for s in stops:
        i = text.find(s)
        if i != -1 and (best == -1 or i < best):
            best, which = i, s
    return best, which


def _visible(text: str, stops: Sequence[str]) -> str:
    """The part of a running choice's text that is safe to emit: cut at a complete stop
    string, hold back a tail that could still grow into one, and hold back trailing
    U+FFFD (a token that ends inside a multi-byte UTF-8 character)."""
    pos, _ = _first_stop(text, stops)
    if pos != -1:
        return text[:pos]
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    text = text[:len(text) - hold]
    return text.rstrip("\ufffd")


def _map_finish(snap: ChoiceSnapshot, stops: Sequence[str]) -> tuple[str, str, str]:
    """(text to emit up to, reason, stop_sequence) for a finished snapshot."""
    text = snap.text
    if isinstance(snap.stop_reason, str) and snap.stop_reason:
        return text, "stop", snap.stop_reason
    pos, which = _first_stop(text, stops)
    if pos != -1:  # stop string in the text that TensorRT-LLM did not cut
        return text[:pos], "stop", which
    if snap.finish_reason == "stop":
        return text, "stop", ""
    # 'length', and 'timeout' (the request ran out of its time budget, not finished).
    return text, "length", ""


def events_from_output(prev_state: StreamState, output: Sequence[ChoiceSnapshot]
                       ) -> tuple[list[EngineEvent], StreamState]:
    """Converts one streaming snapshot (all choices, cumulative) into new events.

    Text deltas are what the cumulative text adds to what was already sent; tokens and
    logprobs whose text is held back ride on the next event of that choice. A choice
    gets exactly one FinishEvent; snapshots after it are ignored. 'cancelled' choices
    (aborted) end without a FinishEvent."""
    choices = list(prev_state.choices)
    events: list[EngineEvent] = []
    for snap in sorted(output, key=lambda s: s.index):
        i = snap.index
        if not 0 <= i < len(choices):
            continue
        st = choices[i]
        if st.finished or st.cancelled:
            continue
        st = replace(st, seen_text=snap.text, seen_tokens=max(st.seen_tokens, snap.num_tokens))
        if snap.finish_reason == "cancelled":
            choices[i] = replace(st, cancelled=True)
            continue
        finished = snap.finish_reason is not None
        if finished:
            visible, reason, stop_sequence = _map_finish(snap, prev_state.stop)
        else:
            visible = _visible(snap.text, prev_state.stop)
        delta = visible[st.sent_chars:] if len(visible) > st.sent_chars else ""
        new_tokens = max(0, snap.num_tokens - st.sent_tokens)
        new_logprobs = list(snap.logprobs[st.sent_logprobs:])
        if delta:
            events.append(TextEvent(choice=i, text=delta, num_tokens=new_tokens,
                                    logprobs=new_logprobs))
            st = replace(st, sent_chars=st.sent_chars + len(delta),
                         sent_tokens=st.sent_tokens + new_tokens,
                         sent_logprobs=st.sent_logprobs + len(new_logprobs))
            new_tokens = 0
        if finished:
            events.append(FinishEvent(choice=i, reason=reason, num_tokens=new_tokens,
                                      stop_sequence=stop_sequence))
            st = replace(st, sent_tokens=st.sent_tokens + new_tokens, finished=True)
        choices[i] = st
    return events, replace(prev_state, choices=tuple(choices))


def close_stream(state: StreamState) -> tuple[list[EngineEvent], StreamState]:
    """Ends choices that never finished when the stream stopped early (TensorRT-LLM
    aborts the whole request when one choice's text hits a stop string, leaving its
    siblings unfinished, or cancels choices itself). Held-back text is flushed (cut at
    a complete stop string) and the choice ends with reason "length": it was cut short.
    Call it only when the request was not aborted by us."""
    events: list[EngineEvent] = []
    choices = list(state.choices)
    for i, st in enumerate(choices):
        if st.finished:
            continue
        pos, _ = _first_stop(st.seen_text, state.stop)
        text = st.seen_text if pos == -1 else st.seen_text[:pos]
        delta = text[st.sent_chars:] if len(text) > st.sent_chars else ""
        pending = max(0, st.seen_tokens - st.sent_tokens)
        if delta:
            events.append(TextEvent(choice=i, text=delta, num_tokens=pending))
            pending = 0
        events.append(FinishEvent(choice=i, reason="length", num_tokens=pending))
        choices[i] = replace(st, sent_chars=st.sent_chars + len(delta),
                             sent_tokens=max(st.sent_tokens, st.seen_tokens),
                             finished=True, cancelled=False)
    return events, replace(state, choices=tuple(choices))


def replicate(events: Sequence[EngineEvent], copies: int) -> list[EngineEvent]:
    """Copies single-sequence events (choice 0) to choices 0..copies-1 (greedy n > 1)."""
    if copies <= 1:
        return list(events)
    out: list[EngineEvent] = []
    for ev in events:
        for c in range(copies):
            out.append(replace(ev, choice=c, **(
                {"logprobs": list(ev.logprobs)} if isinstance(ev, TextEvent) else {})))
    return out
