"""POST /v1/audio/transcriptions and /v1/audio/translations, and TranscriptionService over
gRPC, on the embedded tiny Whisper (random weights: the text is meaningless, the shapes,
times and errors are real), through the official openai SDK and the generated stubs.

Speech comes from espeak-ng (or a tone where it is missing), in wav, mp3, flac and ogg."""
from __future__ import annotations

import concurrent.futures
import math
import re

import grpc
import httpx
import numpy as np
import openai
import pytest

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc
from genapi.v1 import transcription_service_pb2 as pb
from genapi.v1 import transcription_service_pb2_grpc as pb_grpc

from ..conftest import ROOT, Service, wait_until
from .audio_support import RATE, encode, silence, speech

WHISPER = "genapi-tiny-whisper"
BATCHING = "genapi-tiny-whisper-batching"
TINY_WHISPER = ROOT / "models" / "tiny-whisper"
MODELS = f"""
    [[models]]
    name = "{WHISPER}"
    task = "transcription"
    path = "{TINY_WHISPER}"
    [models.options]
    threads = 1
    [[models]]
    name = "{BATCHING}"
    task = "transcription"
    path = "{TINY_WHISPER}"
    [models.options]
    threads = 1
    max_batch = 4
    max_wait_ms = 3000
    """
RPM = 10_000  # high enough never to refuse; its headers show the requests counted
SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    s = Service(tmp_path_factory.mktemp("audio"), "audio", model_options=MODELS,
                extra_toml=f"[limits]\nrpm = {RPM}\n").start(timeout_s=600)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def sdk(svc):
    return svc.sdk()


@pytest.fixture(scope="module")
def stub(svc):
    channel = grpc.insecure_channel(svc.grpc_target)
    yield pb_grpc.TranscriptionServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def clip():
    """About 3 s of speech."""
    return speech("The quick brown fox jumps over the lazy dog near the river bank.")


@pytest.fixture(scope="module")
def files(clip):
    return {c: encode(clip, c) for c in ("wav", "mp3", "flac", "ogg")}


@pytest.fixture(scope="module")
def long_audio(clip):
    """75 s: the clip and a second of silence, repeated."""
    unit = np.concatenate([clip, silence(1.0)])
    reps = math.ceil(75 * RATE / len(unit))
    return np.tile(unit, reps)[:75 * RATE]


def seconds(match) -> float:
    h, m, s, ms = (int(g) for g in match)
    return h * 3600 + m * 60 + s + ms / 1000


def parse_srt(text: str) -> list[tuple[int, float, float, str]]:
    cues = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        m = re.fullmatch(SRT_TIME + " --> " + SRT_TIME, lines[1])
        assert m, block
        assert len(lines) >= 3 and all(line.strip() for line in lines[2:]), block
        cues.append((int(lines[0]), seconds(m.groups()[:4]), seconds(m.groups()[4:]), "\n".join(lines[2:])))
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, str]]:
    assert text.startswith("WEBVTT\n\n")
    cues = []
    for block in text[len("WEBVTT\n\n"):].strip().split("\n\n"):
        lines = block.split("\n")
        m = re.fullmatch(VTT_TIME + " --> " + VTT_TIME, lines[0])
        assert m, block
        assert len(lines) >= 2 and "-->" not in "".join(lines[1:]), block
        cues.append((seconds(m.groups()[:4]), seconds(m.groups()[4:]), "\n".join(lines[1:])))
    return cues


def assert_timeline(segments, duration: float) -> None:
    """Ordered, non-overlapping, within [0, duration]."""
    prev_end = 0.0
    for i, s in enumerate(segments):
        assert s.id == i
        assert prev_end - 1e-6 <= s.start <= s.end <= duration + 1e-6, (i, s.start, s.end, prev_end, duration)
        prev_end = s.end


@pytest.mark.parametrize("container", ["wav", "mp3", "flac", "ogg"])
def test_json_from_each_container(sdk, files, clip, container):
    r = sdk.audio.transcriptions.create(file=(f"speech.{container}", files[container]), model=WHISPER)
    assert isinstance(r.text, str) and r.text and r.text == r.text.lstrip()
    assert r.usage.type == "duration" and r.usage.seconds == math.ceil(len(clip) / RATE)


def test_text_format_is_the_json_text(sdk, files):
    json_text = sdk.audio.transcriptions.create(file=("a.mp3", files["mp3"]), model=WHISPER).text
    text = sdk.audio.transcriptions.create(file=("a.mp3", files["mp3"]), model=WHISPER, response_format="text")
    assert text == json_text + "\n"


def test_srt_and_vtt_parse_and_match_the_segments(sdk, files, clip):
    duration = len(clip) / RATE
    verbose = sdk.audio.transcriptions.create(file=("a.flac", files["flac"]), model=WHISPER,
                                              response_format="verbose_json")
    srt = parse_srt(sdk.audio.transcriptions.create(file=("a.flac", files["flac"]), model=WHISPER,
                                                    response_format="srt"))
    vtt = parse_vtt(sdk.audio.transcriptions.create(file=("a.flac", files["flac"]), model=WHISPER,
                                                    response_format="vtt"))
    with_text = [s for s in verbose.segments if s.text.strip()]
    assert srt and [c[0] for c in srt] == list(range(1, len(srt) + 1))
    assert len(srt) == len(vtt) == len(with_text)
    for (_, a, b, text), (va, vb, vtext), seg in zip(srt, vtt, with_text):
        assert 0 <= a <= b <= duration + 0.001
        assert (a, b) == (va, vb) and abs(a - seg.start) < 0.0011 and abs(b - seg.end) < 0.0011
        assert text == vtext.replace("->", "-->") or text == vtext
        assert text.split() == seg.text.split()


def test_verbose_json_segments_and_words(sdk, files, clip):
    duration = len(clip) / RATE
    r = sdk.audio.transcriptions.create(file=("a.ogg", files["ogg"]), model=WHISPER, response_format="verbose_json",
                                        timestamp_granularities=["word", "segment"])
    assert r.language and abs(r.duration - duration) < 0.05
    assert r.segments and r.words
    assert_timeline(r.segments, r.duration)
    assert "".join(s.text for s in r.segments).strip() == r.text
    for s in r.segments:
        assert s.tokens and s.seek == 0 and s.temperature == 0
        assert 0 <= s.no_speech_prob <= 1 and s.avg_logprob <= 0 and s.compression_ratio > 0
    # every word lies inside a segment, in order
    prev = 0.0
    for w in r.words:
        assert w.word and w.word == w.word.strip()
        assert prev - 1e-6 <= w.start <= w.end <= r.duration + 1e-6
        assert any(s.start - 1e-6 <= w.start and w.end <= s.end + 1e-6 for s in r.segments), w
        prev = w.start
    assert [w.word for w in r.words] == " ".join(s.text for s in r.segments).split() or \
        "".join(w.word for w in r.words) == "".join(r.text.split())
    words_only = sdk.audio.transcriptions.create(file=("a.ogg", files["ogg"]), model=WHISPER,
                                                 response_format="verbose_json", timestamp_granularities=["word"])
    assert words_only.words and words_only.segments is None


def test_75_seconds_are_split_into_windows_whose_times_cover_it_in_order(sdk, long_audio):
    r = sdk.audio.transcriptions.create(file=("long.mp3", encode(long_audio, "mp3")), model=WHISPER,
                                        response_format="verbose_json")
    assert abs(r.duration - 75) < 0.1
    assert_timeline(r.segments, r.duration)
    seeks = sorted({s.seek for s in r.segments})
    assert seeks == [0, 3000, 6000]  # three 30 s windows, Whisper's seek in 10 ms frames
    for s in r.segments:
        assert s.seek / 100 <= s.start <= min(s.seek / 100 + 30, r.duration)
    assert max(s.end for s in r.segments) > 60


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_server_vad_cuts_windows_at_silences(stub):
    # sound, a 2 s silence from 20 s to 22 s, sound: the first window ends 300 ms (the
    # prefix padding) before the sound resumes, not at 30 s
    audio = np.concatenate([tone(20), silence(2.0), tone(25, 330)])
    req = pb.TranscribeRequest(model=WHISPER, audio=encode(audio, "flac"), vad=pb.ServerVad(threshold=0.5))
    events = list(stub.Transcribe(req))
    seeks = sorted({e.segment.seek for e in events if e.WhichOneof("event") == "segment"})
    assert events[0].started.windows == 2
    assert seeks == [0, 2170], seeks
    fixed = list(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=encode(audio, "flac"))))
    assert sorted({e.segment.seek for e in fixed if e.WhichOneof("event") == "segment"}) == [0, 3000]


def test_streamed_deltas_concatenate_to_the_non_streamed_text(sdk, long_audio):
    data = encode(long_audio[:40 * RATE], "wav")
    whole = sdk.audio.transcriptions.create(file=("a.wav", data), model=WHISPER, temperature=0)
    events = list(sdk.audio.transcriptions.create(file=("a.wav", data), model=WHISPER, temperature=0, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert len(deltas) == 2  # one per window
    assert [e.type for e in events][-1] == "transcript.text.done" and len(events) == len(deltas) + 1
    assert "".join(d.delta for d in deltas) == events[-1].text == whole.text
    usage = events[-1].usage  # token usage (the spec's shape for this event) plus the seconds
    assert usage.type == "tokens" and usage.model_extra["seconds"] == whole.usage.seconds == 40
    assert usage.input_token_details.audio_tokens == 40 * 50 and usage.input_token_details.text_tokens == 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens and usage.output_tokens > 0


def test_logprobs_in_json_and_stream(sdk, files):
    r = sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER, include=["logprobs"])
    assert r.logprobs and "".join(lp.token for lp in r.logprobs).strip() == r.text
    assert all(lp.logprob <= 0 and bytes(int(b) for b in lp.bytes).decode() == lp.token for lp in r.logprobs)
    events = list(sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER,
                                                  include=["logprobs"], stream=True))
    assert [lp.token for lp in events[-1].logprobs] == [lp.token for lp in r.logprobs]
    assert [lp.token for e in events[:-1] for lp in e.logprobs] == [lp.token for lp in r.logprobs]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations so
def test_translations_have_the_same_shapes(sdk, files, clip):
    r = sdk.audio.translations.create(file=("a.mp3", files["mp3"]), model=WHISPER)
    assert r.text
    verbose = sdk.audio.translations.create(file=("a.mp3", files["mp3"]), model=WHISPER,
                                            response_format="verbose_json")
    assert verbose.language == "english" and verbose.text == r.text
    assert verbose.model_extra.get("task") == "translate"
    assert_timeline(verbose.segments, len(clip) / RATE)
    srt = parse_srt(sdk.audio.translations.create(file=("a.mp3", files["mp3"]), model=WHISPER, response_format="srt"))
    assert srt
    transcribed = sdk.audio.transcriptions.create(file=("a.mp3", files["mp3"]), model=WHISPER, language="en")
    assert transcribed.text != r.text  # the <|translate|> task token changes the decoding


def test_language_and_prompt_condition_the_decoding(sdk, files):
    base = sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER, language="en").text
    assert sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER, language="en").text == base
    others = {sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER, language=lang).text
              for lang in ("fr", "de", "ja")}
    prompted = sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER, language="en",
                                               prompt="Fox, dog, river.").text
    assert others | {prompted} != {base}


BAD_FILES = {
    "empty": (b"", "empty"),
    "text": (b"This is a text file, not audio at all.\n" * 20, "not a supported audio file"),
    "random bytes": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
                     "not a supported audio file"),
    "zero duration": (encode(np.zeros(0, dtype=np.int16), "wav"), "zero duration"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_are_400_naming_the_problem(sdk, name):
    data, words = BAD_FILES[name]
    for kwargs in ({}, {"stream": True}):
        with pytest.raises(openai.BadRequestError) as e:
            r = sdk.audio.transcriptions.create(file=("x.mp3", data), model=WHISPER, **kwargs)
            list(r) if kwargs else None
        err = e.value.body
        assert e.value.status_code == 400 and err["param"] == "file" and words in err["message"], err


def test_corrupt_header_is_400_and_a_wrong_extension_does_not_matter(sdk, files):
    """Reliability plan row B12: the container is found from the bytes, not the name."""
    broken = b"\xff" * 12 + files["wav"][12:]
    with pytest.raises(openai.BadRequestError) as e:
        sdk.audio.transcriptions.create(file=("x.wav", broken), model=WHISPER)
    assert e.value.body["param"] == "file" and "not a supported audio file" in e.value.body["message"]
    named_wrong = sdk.audio.transcriptions.create(file=("speech.wav", files["mp3"]), model=WHISPER)
    assert named_wrong.text == sdk.audio.transcriptions.create(file=("speech.mp3", files["mp3"]), model=WHISPER).text


def video_only() -> bytes:
    """An mp4 with one video stream and no audio."""
    import io

    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    stream = out.add_stream("mpeg4", rate=5)
    stream.width = stream.height = 32
    stream.pix_fmt = "yuv420p"
    for _ in range(3):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return buf.getvalue()


def test_truncated_files_and_a_video_without_audio(sdk, files):
    with pytest.raises(openai.BadRequestError) as e:
        sdk.audio.transcriptions.create(file=("x.mp3", files["mp3"][:100]), model=WHISPER)
    assert e.value.body["param"] == "file"
    # a truncated flac still transcribes what decodes
    r = sdk.audio.transcriptions.create(file=("x.flac", files["flac"][:len(files["flac"]) // 2]), model=WHISPER)
    assert r.usage.seconds >= 1
    with pytest.raises(openai.BadRequestError) as e:
        sdk.audio.transcriptions.create(file=("clip.mp4", video_only()), model=WHISPER)
    assert e.value.body["message"] == "The file has no audio stream."


def test_audio_shorter_than_a_tenth_of_a_second_is_400_too_short(sdk):
    for seconds in (0.0005, 0.09):  # a few samples; just under OpenAI's 0.1 s floor
        with pytest.raises(openai.BadRequestError) as e:
            sdk.audio.transcriptions.create(file=("short.wav", encode(silence(seconds), "wav")), model=WHISPER)
        assert e.value.body["param"] == "file" and e.value.body["code"] == "audio_too_short"
        assert e.value.body["message"] == "Audio file is too short. Minimum audio length is 0.1 seconds."
    assert sdk.audio.transcriptions.create(file=("ok.wav", encode(silence(0.2), "wav")), model=WHISPER).text is not None


def test_oversized_file_is_413_and_the_server_keeps_serving(sdk, svc, files):
    big = b"\0" * (25 * 1024 * 1024 + 1)
    with pytest.raises(openai.APIStatusError) as e:
        sdk.audio.transcriptions.create(file=("big.wav", big), model=WHISPER)
    assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
    assert "26214400" in e.value.body["message"]
    assert sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER).text


@pytest.mark.parametrize("fields, param", [
    ({"response_format": "xml"}, "response_format"),
    ({"temperature": "1.5"}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"timestamp_granularities[]": "char"}, "timestamp_granularities[]"),
    ({"include[]": "tokens"}, "include[]"),
    ({"language": "xx"}, "language"),
    ({"chunking_strategy": "manual"}, "chunking_strategy"),
    ({"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "2"}, "chunking_strategy.threshold"),
    ({"stream": "true", "response_format": "srt"}, "response_format"),
    ({"colour": "blue"}, "colour"),
    ({"model": ""}, "model"),
    ({"temperature[]": "0.5"}, "temperature[]"),  # a one-value field sent as a list
    ({"prompt[]": "a"}, "prompt[]"),
])
def test_bad_fields_are_400_naming_them(svc, files, fields, param):
    data = {"model": WHISPER, **fields}
    r = httpx.post(f"{svc.base_url}/v1/audio/transcriptions", data=data, files={"file": ("a.wav", files["wav"])},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_a_missing_file_and_wrong_models(svc, sdk, files):
    r = httpx.post(f"{svc.base_url}/v1/audio/transcriptions", data={"model": WHISPER}, files={"x": ("a", b"1")},
                   timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    with pytest.raises(openai.NotFoundError):
        sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model="whisper-nope")
    with pytest.raises(openai.BadRequestError) as e:
        sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model="genapi-tiny-chat")
    assert e.value.body["code"] == "model_task_mismatch"
    with pytest.raises(openai.BadRequestError) as e:
        sdk.chat.completions.create(model=WHISPER, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["code"] == "model_task_mismatch"
    assert {m.id: m.model_extra.get("task") for m in sdk.models.list()}[WHISPER] == "transcription"


def test_grpc_event_order_words_and_errors(stub, files, clip):
    events = list(stub.Transcribe(pb.TranscribeRequest(
        model=WHISPER, audio=files["wav"], timestamp_granularities=[pb.TIMESTAMP_GRANULARITY_WORD],
        include_logprobs=True, temperature=0)))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[1] == "text" and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"segment", "word"}
    segment = None
    for e in events[2:-1]:
        if e.HasField("segment"):
            segment = e.segment
        else:  # each word follows its segment and lies within it
            assert segment is not None and segment.start <= e.word.start <= e.word.end <= segment.end
    done = events[-1].done
    assert done.text == events[1].text.text and done.task == pb.TRANSCRIPTION_TASK_TRANSCRIBE
    assert abs(done.usage.seconds - len(clip) / RATE) < 0.05 and done.usage.output_tokens > 0
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=b"\x00\x01garbage")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for bad in (dict(temperature=3), dict(timestamp_granularities=[99]),
                dict(audio=b"\0" * (25 * 1024 * 1024 + 1))):  # over 25 MB, as REST's 413
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Transcribe(pb.TranscribeRequest(**{"model": WHISPER, "audio": files["wav"], **bad})))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_concurrent_requests_share_batches(svc, stub, files):
    admin = admin_service_pb2_grpc.AdminServiceStub(grpc.insecure_channel(svc.grpc_target))

    def passes():
        stats = admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=BATCHING))
        return stats.engines[0].forward_passes

    before = passes()
    req = pb.TranscribeRequest(model=BATCHING, audio=files["wav"], language="en")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        texts = list(pool.map(lambda _: [e for e in stub.Transcribe(req)][-1].done.text, range(4)))
    assert len(set(texts)) == 1  # the same audio gives the same text in any row of a batch
    assert passes() - before == 1  # four one-window requests, one batch (max_batch 4)


def test_a_caller_that_leaves_aborts_its_windows_and_the_engine_keeps_serving(svc, stub, long_audio, files):
    admin = admin_service_pb2_grpc.AdminServiceStub(grpc.insecure_channel(svc.grpc_target))

    def stats():
        return admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=WHISPER)).engines[0]

    before = stats().requests_aborted
    call = stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=encode(long_audio, "wav")))
    assert next(call).HasField("started")  # decoded and admitted
    call.cancel()
    assert wait_until(lambda: stats().requests_aborted == before + 1 and stats().queued_requests == 0, 30)
    events = list(stub.Transcribe(pb.TranscribeRequest(model=WHISPER, audio=files["wav"])))
    assert events[-1].HasField("done")


def test_a_transcription_counts_against_the_requests_per_minute(sdk, files):
    def remaining() -> int:
        raw = sdk.audio.transcriptions.with_raw_response.create(file=("a.wav", files["wav"]), model=WHISPER)
        assert raw.headers["x-ratelimit-limit-requests"] == str(RPM)
        return int(raw.headers["x-ratelimit-remaining-requests"])
    first = remaining()
    assert first < RPM and remaining() == first - 1  # this module's requests run one at a time


def test_the_access_log_names_the_transcription_model(svc, sdk, files):
    sdk.audio.transcriptions.create(file=("a.wav", files["wav"]), model=WHISPER,
                                    extra_headers={"x-request-id": "named-model-transcription"})
    def access_line() -> str | None:
        return next((ln for ln in svc.log().splitlines()
                     if "genapi.access" in ln and "request_id=named-model-transcription" in ln), None)
    assert wait_until(lambda: access_line() is not None, timeout_s=10)
    line = access_line()
    assert "path=/v1/audio/transcriptions status=200" in line and f"model={WHISPER} " in line, line
