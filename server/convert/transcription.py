"""Pure translation and validation: TranscribeRequest proto -> engine TranscriptionRequest,
engine events -> TranscribeResponse protos.

Checked here (INVALID_ARGUMENT naming the field): temperature in [0, 1], VAD threshold in
[0, 1], a prompt of at most MAX_PROMPT_CHARS characters, a language code of at most 32
characters. The engine checks the rest (the audio itself, the language against the
model's, translation on an English-only model).
"""
from __future__ import annotations

from genapi.v1 import transcription_service_pb2 as pb

from ..engines.base import (
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionRequest,
    TranscriptionStarted,
    VadParams,
)
from ..errors import invalid, too_long

MAX_PROMPT_CHARS = 4096
MAX_LANGUAGE_CHARS = 32
MAX_AUDIO_BYTES = 25 * 1024 * 1024  # OpenAI's limit for audio files (the REST endpoints' 413)
TASKS = {pb.TRANSCRIPTION_TASK_UNSPECIFIED: "transcribe", pb.TRANSCRIPTION_TASK_TRANSCRIBE: "transcribe",
         pb.TRANSCRIPTION_TASK_TRANSLATE: "translate"}
TASK_PROTO = {"transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE, "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}


def _vad(req: pb.TranscribeRequest) -> VadParams | None:
    if not req.HasField("vad"):
        return None
    v, d = req.vad, VadParams()
    threshold = v.threshold if v.HasField("threshold") else d.threshold
    if not 0.0 <= threshold <= 1.0:
        raise invalid(f"Invalid 'chunking_strategy.threshold': expected a number from 0 to 1, got {threshold:g}.",
                      "chunking_strategy.threshold")
    return VadParams(threshold,
                     v.prefix_padding_ms if v.HasField("prefix_padding_ms") else d.prefix_padding_ms,
                     v.silence_duration_ms if v.HasField("silence_duration_ms") else d.silence_duration_ms)


def transcription_request(req: pb.TranscribeRequest, engine_id: str) -> TranscriptionRequest:
    temperature = req.temperature if req.HasField("temperature") else 0.0
    if not 0.0 <= temperature <= 1.0:
        raise invalid(f"Invalid 'temperature': expected a number from 0 to 1, got {temperature:g}.", "temperature")
    if len(req.prompt) > MAX_PROMPT_CHARS:
        raise too_long("prompt", MAX_PROMPT_CHARS, len(req.prompt))
    if len(req.language) > MAX_LANGUAGE_CHARS:
        raise too_long("language", MAX_LANGUAGE_CHARS, len(req.language))
    if req.task not in TASKS:
        raise invalid(f"Invalid 'task': unknown value {req.task}.", "task")
    if len(req.audio) > MAX_AUDIO_BYTES:  # as the REST endpoints' 413
        raise invalid(f"The audio is larger than {MAX_AUDIO_BYTES} bytes (25 MB).", "audio", "file_too_large")
    for g in req.timestamp_granularities:
        if g not in (pb.TIMESTAMP_GRANULARITY_UNSPECIFIED, pb.TIMESTAMP_GRANULARITY_SEGMENT,
                     pb.TIMESTAMP_GRANULARITY_WORD):
            raise invalid(f"Invalid 'timestamp_granularities': unknown value {g}.", "timestamp_granularities")
    words = pb.TIMESTAMP_GRANULARITY_WORD in req.timestamp_granularities
    return TranscriptionRequest(engine_id, req.audio, TASKS[req.task], req.language or None, req.prompt,
                                temperature, words, req.include_logprobs, _vad(req))


def event_protos(ev, task: str) -> list[pb.TranscribeResponse]:
    """The TranscribeResponse messages of one engine event (a window's delta gives its
    text, then each segment followed by its words)."""
    if isinstance(ev, TranscriptionStarted):
        return [pb.TranscribeResponse(started=pb.TranscribeStarted(duration_s=ev.duration_s, windows=ev.windows))]
    if isinstance(ev, TranscriptionDelta):
        out = [pb.TranscribeResponse(text=pb.TranscriptTextDelta(
            text=ev.text, logprobs=[pb.TranscriptLogprob(token=lp.token, logprob=lp.logprob, bytes=lp.bytes)
                                    for lp in ev.logprobs]))]
        for s in ev.segments:
            out.append(pb.TranscribeResponse(segment=pb.TranscriptSegment(
                id=s.id, seek=s.seek, start=s.start, end=s.end, text=s.text, tokens=s.tokens,
                temperature=s.temperature, avg_logprob=s.avg_logprob, compression_ratio=s.compression_ratio,
                no_speech_prob=s.no_speech_prob)))
            out.extend(pb.TranscribeResponse(word=pb.TranscriptWord(word=w.word, start=w.start, end=w.end))
                       for w in s.words)
        return out
    if isinstance(ev, TranscriptionDone):
        return [pb.TranscribeResponse(done=pb.TranscribeDone(
            text=ev.text, language=ev.language, duration_s=ev.duration_s, task=TASK_PROTO[task],
            usage=pb.TranscriptionUsage(seconds=ev.duration_s, prompt_tokens=ev.prompt_tokens,
                                        output_tokens=ev.output_tokens, audio_tokens=ev.audio_tokens)))]
    raise TypeError(f"unexpected engine event {ev!r}")
