"""Pure pieces of transcription: windows and VAD cuts, segment parsing and stitching,
DTW, word grouping, audio decoding errors, the shim's form validation and the SRT/VTT
and JSON bodies."""
from __future__ import annotations

import io
import itertools
import wave

import numpy as np
import pytest
from werkzeug.datastructures import MultiDict

from genapi.v1 import transcription_service_pb2 as pb
from server.engines.base import VadParams
from server.engines.torch.whisper_windows import (
    SAMPLE_RATE,
    RawSegment,
    Window,
    clamp_words,
    compression_ratio,
    dtw,
    group_words,
    parse_segments,
    plan_windows,
    silence_cuts,
    stitch,
    token_start_times,
)
from server.media.audio import AudioError, decode_audio
from shim.errors import APIError
from shim.protocol.audio import validate_audio_form
from shim.translate.audio import TranscriptAccumulator, audio_request_to_proto, srt, timestamp, usage_seconds, vtt

EOT, TB = 100, 200  # end of text, first timestamp token (<|0.00|>)


def ts(seconds: float) -> int:
    return TB + round(seconds / 0.02)


def test_fixed_windows_cover_the_audio():
    n = int(75 * SAMPLE_RATE)
    ws = plan_windows(n)
    assert [(w.start_s, w.end_s) for w in ws] == [(0, 30), (30, 60), (60, 75)]
    assert plan_windows(0) == [] and plan_windows(5) == [Window(0, 5)]


def test_vad_windows_end_at_the_last_silence_before_30_s():
    loud = np.full(SAMPLE_RATE, 8000, dtype=np.int16)
    quiet = np.zeros(SAMPLE_RATE, dtype=np.int16)
    # sound 0-12 s, silence 12-13 s, sound 13-27 s, silence 27-28 s, sound 28-70 s
    audio = np.concatenate([loud] * 12 + [quiet] + [loud] * 14 + [quiet] + [loud] * 42)
    ws = plan_windows(len(audio), audio, VadParams(0.5, 300, 200))
    assert [round(w.start_s, 2) for w in ws] == [0, 27.7, 57.7]  # 300 ms before the sound resumes
    assert all(w.end - w.start <= 30 * SAMPLE_RATE for w in ws) and ws[-1].end == len(audio)
    assert plan_windows(len(audio), audio, None)[1].start_s == 30


def test_silence_cuts_need_long_enough_runs_between_speech():
    v = np.array([1, 1, 0, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    assert silence_cuts(v, 3, 1) == [4]  # the 1-frame gap is too short; trailing silence is not a cut
    assert silence_cuts(v, 1, 0) == [5, 7]


def test_parse_segments_pairs_and_unclosed_text():
    toks = [ts(0), 1, 2, ts(1.5), ts(1.5), 3, ts(2.0), EOT]
    segs = parse_segments(toks, EOT, TB, 30.0)
    assert [(s.start, s.end, s.text_tokens) for s in segs] == [(0, 1.5, [1, 2]), (1.5, 2.0, [3])]
    assert segs[0].tokens == [ts(0), 1, 2, ts(1.5)]
    open_end = parse_segments([ts(0.5), 4, 5], EOT, TB, 7.0)
    assert [(s.start, s.end) for s in open_end] == [(0.5, 7.0)]
    assert parse_segments([ts(0), ts(1), EOT], EOT, TB, 30) == []


def test_stitch_offsets_and_clamps_past_the_end():
    raw = [RawSegment(0.0, 2.0, [], [1]), RawSegment(1.0, 29.0, [], [2]), RawSegment(29.5, 30.0, [], [3])]
    assert stitch(raw, 30.0, 60.0, 45.0) == [(30.0, 32.0), (32.0, 45.0), (45.0, 45.0)]


def _dtw_brute(cost):
    n, m = cost.shape
    best = (np.inf, None)
    # every monotone path, for tiny matrices
    for moves in itertools.product([0, 1, 2], repeat=n + m - 2):
        i = j = 0
        total, path = cost[0, 0], [(0, 0)]
        for mv in moves:
            i, j = (i + 1, j + 1) if mv == 0 else (i + 1, j) if mv == 1 else (i, j + 1)
            if i >= n or j >= m:
                break
            total += cost[i, j]
            path.append((i, j))
            if (i, j) == (n - 1, m - 1):
                best = min(best, (total, tuple(path)), key=lambda x: x[0])
                break
    return best[0]


def test_dtw_finds_the_cheapest_monotone_path():
    rng = np.random.default_rng(3)
    for shape in [(2, 3), (3, 3), (3, 4)]:
        cost = rng.random(shape)
        rows, cols = dtw(cost)
        assert rows[0] == cols[0] == 0 and rows[-1] == shape[0] - 1 and cols[-1] == shape[1] - 1
        assert np.all(np.diff(rows) >= 0) and np.all(np.diff(cols) >= 0)
        assert cost[rows, cols].sum() == pytest.approx(_dtw_brute(cost))


def test_token_start_times_follow_the_diagonal():
    frames = np.zeros((3, 150))
    frames[0, 0:50], frames[1, 50:100], frames[2, 100:150] = 1, 1, 1  # 2 tokens + EOT, 1 s each
    assert token_start_times(frames).tolist() == [0.0, 1.0, 2.0]


def test_words_group_on_spaces_and_keep_punctuation():
    words = group_words([" Hello", ",", " wor", "ld", "."], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5])
    assert words == [("Hello,", 0, 2), ("world.", 2, 5)]
    assert clamp_words([("a", -1, 3), ("b", 2, 9)], 0.5, 4) == [("a", 0.5, 3), ("b", 3, 4)]


def test_compression_ratio():
    assert compression_ratio("") == 0
    assert compression_ratio("co " * 100) > 2.4 > compression_ratio("The quick brown fox.")


def _wav(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def test_decode_resamples_and_downmixes():
    stereo = np.stack([np.full(8000, 1000), np.full(8000, 3000)], axis=1).reshape(-1)
    out = decode_audio(_wav(stereo, 8000, channels=2))
    assert out.dtype == np.int16 and abs(len(out) - 16000) <= 32
    assert abs(int(np.median(out)) - 2000) < 50  # channels averaged


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"plain text, not audio " * 50, "not a supported audio file"),
    (_wav(np.zeros(0), 16000), "zero duration"),
])
def test_decode_errors_name_the_problem(data, words):
    with pytest.raises(AudioError, match=words):
        decode_audio(data)


def test_decode_refuses_audio_over_the_limit():
    with pytest.raises(AudioError, match="longer than this model's limit of 1 seconds"):
        decode_audio(_wav(np.zeros(32000), 16000), max_seconds=1)


def test_form_validation_and_the_proto():
    form = MultiDict([("model", "w"), ("response_format", "verbose_json"), ("timestamp_granularities[]", "word"),
                      ("timestamp_granularities[]", "segment"), ("include[]", "logprobs"), ("temperature", "0.2"),
                      ("chunking_strategy[type]", "server_vad"), ("chunking_strategy[threshold]", "0.3"),
                      ("language", "en"), ("prompt", "Names: Ada.")])
    body = validate_audio_form(form, "transcribe")
    assert body["timestamp_granularities"] == ["word", "segment"] and body["logprobs"]
    assert body["vad"] == {"threshold": 0.3}
    req = audio_request_to_proto(body, b"RIFF", "a.wav", "rid")
    assert req.timestamp_granularities == [pb.TIMESTAMP_GRANULARITY_WORD] and req.include_logprobs
    assert req.HasField("vad") and req.vad.threshold == pytest.approx(0.3) and not req.vad.HasField("prefix_padding_ms")
    assert req.temperature == pytest.approx(0.2) and req.task == pb.TRANSCRIPTION_TASK_TRANSCRIBE
    auto = validate_audio_form(MultiDict([("model", "w"), ("chunking_strategy", "auto")]), "translate")
    assert auto["vad"] == {} and audio_request_to_proto(auto, b"", "", "r").HasField("vad")
    as_json = validate_audio_form(MultiDict([("model", "w"), ("chunking_strategy",
                                             '{"type": "server_vad", "silence_duration_ms": 500}')]), "transcribe")
    assert as_json["vad"] == {"silence_duration_ms": 500}
    plain = audio_request_to_proto(validate_audio_form(MultiDict([("model", "w")]), "transcribe"), b"", "", "r")
    assert not plain.HasField("vad") and not plain.HasField("temperature")


@pytest.mark.parametrize("fields, param", [
    ([], "model"),
    ([("model", "w"), ("response_format", "xml")], "response_format"),
    ([("model", "w"), ("temperature", "nan")], "temperature"),
    ([("model", "w"), ("stream", "maybe")], "stream"),
    ([("model", "w"), ("chunking_strategy", '{"type": "vad"}')], "chunking_strategy.type"),
    ([("model", "w"), ("chunking_strategy", '{"type": "server_vad", "x": 1}')], "chunking_strategy.x"),
    ([("model", "w"), ("include[]", "logprobs"), ("response_format", "srt")], "include[]"),
    ([("model", "w"), ("prompt", "x" * 5000)], "prompt"),
    ([("model", "w"), ("model", "v")], "model"),
])
def test_form_errors_name_the_field(fields, param):
    with pytest.raises(APIError) as e:
        validate_audio_form(MultiDict(fields), "transcribe")
    assert e.value.status == 400 and e.value.param == param


def _segments(*spans):
    return [pb.TranscriptSegment(id=i, start=a, end=b, text=t) for i, (a, b, t) in enumerate(spans)]


def test_srt_and_vtt_bodies():
    segs = _segments((0, 1.5, " Hello there."), (1.5, 1.5, "  "), (3661.0016, 3662.25, " a --> b\n\nc"))
    assert srt(segs) == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                         "2\n01:01:01,002 --> 01:01:02,250\na --> b\nc\n\n")
    assert vtt(segs) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
                         "01:01:01.002 --> 01:01:02.250\na -> b\nc\n\n")
    assert timestamp(59.9996, ",") == "00:01:00,000" and timestamp(-1, ".") == "00:00:00.000"


def test_usage_is_whole_seconds_rounded_up():
    assert usage_seconds(8.47) == {"type": "duration", "seconds": 9}
    assert usage_seconds(9.0) == {"type": "duration", "seconds": 9} and usage_seconds(0.01)["seconds"] == 1


def test_verbose_json_body_by_granularity():
    body = {"response_format": "verbose_json", "timestamp_granularities": ["word"], "logprobs": False}
    acc = TranscriptAccumulator(body)
    acc.add(pb.TranscribeResponse(segment=pb.TranscriptSegment(id=0, start=0, end=1, text=" Hi")))
    acc.add(pb.TranscribeResponse(word=pb.TranscriptWord(word="Hi", start=0.1, end=0.5)))
    acc.add(pb.TranscribeResponse(done=pb.TranscribeDone(text="Hi", language="english", duration_s=1.2,
                                                         task=pb.TRANSCRIPTION_TASK_TRANSLATE)))
    out, mime = acc.result()
    assert mime == "application/json" and "segments" not in out
    assert out["words"] == [{"word": "Hi", "start": pytest.approx(0.1), "end": pytest.approx(0.5)}]
    assert out["task"] == "translate" and out["usage"] == {"type": "duration", "seconds": 2}
