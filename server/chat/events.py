"""Engine events -> GenerateResponse events, through each choice's output parsers.

`ChatEvents` keeps the request's running `Usage` (reasoning tokens included) and one
`ChoiceOutput` per choice. Text becomes `text`, `reasoning` and `tool_call` events; a
choice that made tool calls and stopped finishes with FINISH_REASON_TOOL_CALLS. Without
parallel tool calls a choice is over once its first call is complete: what the engine
generates for it afterwards is counted but not sent, and `done` tells the caller when
every choice is over, so it can end the engine request early.
"""
from __future__ import annotations

import secrets
import string

from genapi.v1 import common_pb2, content_pb2
from genapi.v1 import generation_service_pb2 as pb

from ..engines.base import FinishEvent, TextEvent
from .output import ChoiceOutput, OutputConventions, OutputPiece, Reasoning
from .tool_parsers import CallArguments, CallStart

FINISH = {"stop": content_pb2.FINISH_REASON_STOP, "length": content_pb2.FINISH_REASON_LENGTH}
_ID_CHARS = string.ascii_letters + string.digits


def new_call_id() -> str:
    """`call_` and 24 random letters and digits (OpenAI's shape)."""
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def text_delta(ev: TextEvent, text: str) -> pb.TextDelta:
    return pb.TextDelta(
        text=text,
        logprobs=[
            pb.TokenLogprob(
                token=lp.token, logprob=lp.logprob, bytes=lp.bytes,
                top_logprobs=[pb.TopLogprob(token=t.token, logprob=t.logprob, bytes=t.bytes) for t in lp.top],
            )
            for lp in ev.logprobs
        ],
    )


class ChatEvents:
    """One request's event mapping (see module doc). `tools`: parse tool calls;
    `parallel`: several calls per choice allowed; `thinking`: the prompt opened a
    thinking block; `constrained`: the calls follow the tool-call grammar."""

    def __init__(self, conventions: OutputConventions, usage: common_pb2.Usage, n: int, *, tools: bool,
                 parallel: bool = True, thinking: bool = False, constrained: bool = False):
        self.usage = usage
        self.parallel = parallel
        self.outputs = [ChoiceOutput(conventions, tools=tools, thinking=thinking, constrained=constrained)
                        for _ in range(n)]
        self.call_ids: list[dict[int, str]] = [{} for _ in range(n)]
        self.closed: set[int] = set()  # choices over after their one call
        self.finished: list[str] = []

    @property
    def done(self) -> bool:
        """Every choice is over (the engine request may end now)."""
        return len(self.closed) + len(self.finished) >= len(self.outputs) and bool(self.closed)

    def _response(self, choice: int, **event) -> pb.GenerateResponse:
        return pb.GenerateResponse(choice_index=choice, usage=self.usage, **event)

    def on_event(self, ev: TextEvent | FinishEvent) -> list[pb.GenerateResponse]:
        self.usage.completion_tokens += ev.num_tokens
        self.usage.total_tokens = self.usage.prompt_tokens + self.usage.completion_tokens
        out = self.outputs[ev.choice]
        if isinstance(ev, FinishEvent):
            if ev.choice in self.closed:
                return []  # its finish was sent when its call completed
            events = self._pieces(ev.choice, out.finish())
            self.finished.append(ev.reason)
            reason = FINISH[ev.reason]
            if out.calls and ev.reason == "stop":
                reason = content_pb2.FINISH_REASON_TOOL_CALLS
            return events + [self._response(ev.choice, finished=pb.Finished(
                reason=reason, stop_sequence=ev.stop_sequence))]
        if ev.choice in self.closed:
            return []
        was_thinking = out.thinking
        pieces = out.feed(ev.text)
        if was_thinking or out.thinking:
            self.usage.reasoning_tokens += ev.num_tokens
        closing = not self.parallel and out.calls > 0 and not out.tools.in_call
        if not self.parallel:  # one call at most: nothing after the first call is sent
            pieces = _first_call_only(pieces)
        events = self._pieces(ev.choice, pieces, ev)
        if closing:
            self.closed.add(ev.choice)
            events.append(self._response(ev.choice, finished=pb.Finished(
                reason=content_pb2.FINISH_REASON_TOOL_CALLS)))
        return events

    def _pieces(self, choice: int, pieces: list[OutputPiece], ev: TextEvent | None = None) -> list[pb.GenerateResponse]:
        events = []
        logprobs_sent = ev is None or not ev.logprobs
        for piece in pieces:
            if isinstance(piece, str):
                events.append(self._response(choice, text=text_delta(ev, piece) if not logprobs_sent
                                             else pb.TextDelta(text=piece)))
                logprobs_sent = True
            elif isinstance(piece, Reasoning):
                events.append(self._response(choice, reasoning=pb.ReasoningDelta(text=piece.text)))
            elif isinstance(piece, CallStart):
                call_id = self.call_ids[choice].setdefault(piece.index, new_call_id())
                events.append(self._response(choice, tool_call=pb.ToolCallDelta(
                    index=piece.index, id=call_id, name=piece.name)))
            elif isinstance(piece, CallArguments):
                events.append(self._response(choice, tool_call=pb.ToolCallDelta(
                    index=piece.index, arguments=piece.text)))
        if not logprobs_sent:  # the tokens' text was held back or went elsewhere
            events.append(self._response(choice, text=text_delta(ev, "")))
        return events


def _first_call_only(pieces: list[OutputPiece]) -> list[OutputPiece]:
    """The pieces up to the end of call 0 (content after it and further calls dropped)."""
    out = []
    for piece in pieces:
        if isinstance(piece, (CallStart, CallArguments)) and piece.index > 0:
            break
        if isinstance(piece, str) and any(isinstance(p, (CallStart, CallArguments)) for p in out):
            break
        out.append(piece)
    return out
