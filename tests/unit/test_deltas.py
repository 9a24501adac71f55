"""genapi.deltas.merge_deltas: queued text deltas of one choice become one event."""
from genapi.deltas import BEHIND, coalesce, merge_deltas
from genapi.v1 import common_pb2
from genapi.v1 import generation_service_pb2 as pb


def text(choice, t, done, logprobs=()):
    return pb.GenerateResponse(choice_index=choice, usage=common_pb2.Usage(completion_tokens=done),
                               text=pb.TextDelta(text=t, logprobs=[pb.TokenLogprob(token=x) for x in logprobs]))


def test_a_run_of_one_choice_becomes_one_event_with_the_last_usage():
    out = merge_deltas([text(0, "Hel", 1, ["Hel"]), text(0, "lo", 2, ["lo"]), text(0, " you", 3, [" you"])])
    assert len(out) == 1
    assert out[0].text.text == "Hello you"
    assert [lp.token for lp in out[0].text.logprobs] == ["Hel", "lo", " you"]
    assert out[0].usage.completion_tokens == 3


def test_choices_kinds_and_finishes_end_a_run_and_keep_their_order():
    finished = pb.GenerateResponse(choice_index=0, usage=common_pb2.Usage(completion_tokens=4),
                                   finished=pb.Finished(reason=2))
    reasoning = pb.GenerateResponse(choice_index=0, reasoning=pb.ReasoningDelta(text="hm"))
    events = [reasoning, pb.GenerateResponse(choice_index=0, reasoning=pb.ReasoningDelta(text="m")),
              text(0, "a", 1), text(1, "b", 2), text(1, "c", 3), text(0, "d", 4), finished, text(0, "e", 5)]
    out = merge_deltas(events)
    assert [(e.choice_index, e.WhichOneof("event")) for e in out] == [
        (0, "reasoning"), (0, "text"), (1, "text"), (0, "text"), (0, "finished"), (0, "text")]
    assert out[0].reasoning.text == "hmm"
    assert [e.text.text for e in out if e.WhichOneof("event") == "text"] == ["a", "bc", "d", "e"]
    assert out[2].usage.completion_tokens == 3


def test_interleaved_choices_merge_per_choice_until_an_event_of_that_choice():
    """A WHOLE caller's events: choices alternate; a run ends only at an event of its own
    choice, and the last event carries the last usage."""
    finished = [pb.GenerateResponse(choice_index=c, finished=pb.Finished(reason=2)) for c in (0, 1)]
    tool = pb.GenerateResponse(choice_index=1, tool_call=pb.ToolCallDelta(index=0, name="f"))
    events = [text(0, "a", 1, ["a"]), text(1, "b", 2), text(0, "c", 3, ["c"]), text(1, "d", 4), tool,
              text(0, "e", 5, ["e"]), text(1, "f", 6), finished[0], text(1, "g", 7), finished[1]]
    out = merge_deltas(events, interleaved=True)
    assert [(e.choice_index, e.WhichOneof("event")) for e in out] == [
        (0, "text"), (1, "text"), (1, "tool_call"), (1, "text"), (0, "finished"), (1, "finished")]
    assert [e.text.text for e in out if e.HasField("text")] == ["ace", "bd", "fg"]
    assert [lp.token for lp in out[0].text.logprobs] == ["a", "c", "e"]
    assert out[-1].usage.completion_tokens == 7
    alternating = [text(0, "a", 1), text(1, "b", 2), text(0, "c", 3)]  # (the first call mutated events)
    assert len(merge_deltas(alternating)) == 3  # not interleaved: each change of choice ends a run


def test_nothing_to_merge_is_returned_as_is():
    events = [text(0, "a", 1), text(1, "b", 2)]
    assert merge_deltas(events) == events
    assert merge_deltas([]) == []


def test_coalesce_merges_only_a_backlog_of_at_least_BEHIND_events():
    few = [text(0, str(i), i + 1) for i in range(BEHIND - 1)]
    assert coalesce(few) == few
    assert len(coalesce(few, queued=BEHIND)) == 1
    many = [text(0, str(i), i + 1) for i in range(BEHIND)]
    (merged,) = coalesce(many)
    assert merged.text.text == "".join(str(i) for i in range(BEHIND)) and merged.usage.completion_tokens == BEHIND


# The shim's pre-built text chunks (ChatChunkBuilder(prebuilt=True)) against the dict path.
import pytest  # noqa: E402

from shim import sse  # noqa: E402
from shim.translate.chat import ChatChunkBuilder  # noqa: E402

TEXTS = [" river", "é中文🙂", 'quote " and \\ back', "line\nbreak\ttab\x00\x1f\x7f", "\u2028\u2029",
"</script>", "x" * 3000]


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("model", ["rate", "mödel \"q\"", "bad \udc00 model"])
def test_prebuilt_text_chunks_are_byte_for_byte_the_dict_encoding(include_usage, model):
    def frames(prebuilt):
        b = ChatChunkBuilder(model=model, n=2, include_usage=include_usage, completion_id="chatcmpl-1", created=7,
                             prebuilt=prebuilt)
        out = sse.frames(b.on_event(pb.GenerateResponse(started=pb.Started())))
        for i, t in enumerate(TEXTS):
            usage = common_pb2.Usage(prompt_tokens=5, completion_tokens=i + 1, total_tokens=i + 6,
                                     reasoning_tokens=i % 2)
            out += sse.frames(b.on_event(pb.GenerateResponse(choice_index=i % 2, usage=usage, text=pb.TextDelta(text=t))))
        out += sse.frames(b.on_event(pb.GenerateResponse(choice_index=0, finished=pb.Finished(reason=2))))
        return out + sse.frames(b.finish())

    assert frames(True) == frames(False)
