"""Generation events -> a response's output items and its item/delta events. Pure.

`OutputBuilder(response)` folds GenerateResponse events (one choice) into
`response.output` and returns, per event, the CreateResponseResponse events to send:

- reasoning text opens a `reasoning` item (OutputItemAdded), then ReasoningTextDelta;
- output text opens a `message` item with one output_text part, then OutputTextDelta
  (with logprobs when requested);
- a tool-call delta with a new index opens a `function_call` item (call_id = the call's
  id), then FunctionCallArgumentsDelta;
- opening an item closes the one before it (OutputItemDone with the complete item);
- `finished` closes the last item and sets the status: COMPLETED, or INCOMPLETE with
  incomplete_reason "max_output_tokens" when the budget ran out.
Usage follows the events' running totals.
"""
from __future__ import annotations

from genapi.v1 import content_pb2
from genapi.v1 import response_service_pb2 as pb

from .items import new_item_id

Event = pb.CreateResponseResponse


class OutputBuilder:
    def __init__(self, response: pb.Response):
        self.response = response
        self._open: pb.Item | None = None  # the item being generated (a reference into response.output)
        self._call_index: int | None = None  # tool-call index of the open function_call
        self.finished = False

    @property
    def _index(self) -> int:
        return len(self.response.output) - 1

    def _close(self, status=pb.ITEM_STATUS_COMPLETED) -> list[Event]:
        if self._open is None:
            return []
        self._open.status = status
        item, self._open, self._call_index = self._open, None, None
        done = pb.Item()
        done.CopyFrom(item)
        return [Event(output_item_done=pb.OutputItemDone(output_index=self._index, item=done))]

    def _start(self, item: pb.Item) -> list[Event]:
        out = self._close()
        item.status = pb.ITEM_STATUS_IN_PROGRESS
        self.response.output.append(item)
        self._open = self.response.output[-1]
        added = pb.Item()
        added.CopyFrom(item)
        return out + [Event(output_item_added=pb.OutputItemAdded(output_index=self._index, item=added))]

    def _usage(self, usage) -> None:
        u = self.response.usage
        u.input_tokens, u.output_tokens = usage.prompt_tokens, usage.completion_tokens
        u.reasoning_tokens, u.total_tokens = usage.reasoning_tokens, usage.total_tokens

    def on_event(self, ev) -> list[Event]:
        """The events that one GenerateResponse of choice 0 makes."""
        if ev.HasField("usage"):
            self._usage(ev.usage)
        kind = ev.WhichOneof("event")
        out: list[Event] = []
        if kind == "reasoning" and ev.reasoning.text:
            if self._open is None or self._open.WhichOneof("item") != "reasoning":
                out += self._start(pb.Item(id=new_item_id("reasoning"), reasoning=pb.ReasoningItem()))
            self._open.reasoning.text += ev.reasoning.text
            out.append(Event(reasoning_text_delta=pb.ReasoningTextDelta(output_index=self._index,
                                                                        delta=ev.reasoning.text)))
        elif kind == "text" and (ev.text.text or ev.text.logprobs):
            if self._open is None or self._open.WhichOneof("item") != "message":
                out += self._start(pb.Item(id=new_item_id("message"), message=pb.MessageItem(
                    role=content_pb2.ROLE_ASSISTANT, content=[pb.ItemPart(type=pb.ITEM_PART_TYPE_OUTPUT_TEXT)])))
            part = self._open.message.content[0]
            part.text += ev.text.text
            part.logprobs.extend(ev.text.logprobs)
            out.append(Event(output_text_delta=pb.OutputTextDelta(
                output_index=self._index, content_index=0, delta=ev.text.text, logprobs=ev.text.logprobs)))
        elif kind == "tool_call":
            tc = ev.tool_call
            if self._open is None or self._call_index != tc.index:
                call_id = tc.id or "call_" + new_item_id("function_call")[3:27]
                out += self._start(pb.Item(id=new_item_id("function_call"), function_call=pb.FunctionCallItem(
                    call_id=call_id, name=tc.name)))
                self._call_index = tc.index
            if tc.arguments:
                self._open.function_call.arguments += tc.arguments
                out.append(Event(function_call_arguments_delta=pb.FunctionCallArgumentsDelta(
                    output_index=self._index, delta=tc.arguments)))
        elif kind == "finished":
            out += self.finish(ev.finished.reason)
        return out

    def finish(self, reason) -> list[Event]:
        """Closes the open item and sets the final status (once)."""
        if self.finished:
            return []
        self.finished = True
        if reason == content_pb2.FINISH_REASON_LENGTH:
            out = self._close(pb.ITEM_STATUS_INCOMPLETE)
            self.response.status = pb.RESPONSE_STATUS_INCOMPLETE
            self.response.incomplete_reason = "max_output_tokens"
        else:
            out = self._close()
            self.response.status = pb.RESPONSE_STATUS_COMPLETED
        return out

    def abandon(self) -> None:
        """Marks the open item incomplete (the response failed or was cancelled)."""
        if self._open is not None:
            self._open.status = pb.ITEM_STATUS_INCOMPLETE
            self._open = None
