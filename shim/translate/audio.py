"""Pure translation for the audio endpoints: validated form (shim.protocol.audio) ->
TranscribeRequest proto, Transcribe events -> OpenAI bodies (json, text, srt, vtt,
verbose_json) and SSE events (`transcript.text.delta`, `transcript.text.done`).

Usage is reported as OpenAI does for Whisper: `{"type": "duration", "seconds": N}`,
the audio's duration rounded up to a whole second; the streamed `transcript.text.done`
event carries token usage (the spec's only shape there) with those `seconds` added.
"""
from __future__ import annotations

import math

from genapi.v1 import transcription_service_pb2 as pb

_GRANULARITY = {"segment": pb.TIMESTAMP_GRANULARITY_SEGMENT, "word": pb.TIMESTAMP_GRANULARITY_WORD}
_TASK = {"transcribe": pb.TRANSCRIPTION_TASK_TRANSCRIBE, "translate": pb.TRANSCRIPTION_TASK_TRANSLATE}


def audio_request_to_proto(body: dict, audio: bytes, filename: str, request_id: str) -> pb.TranscribeRequest:
    words = body["response_format"] == "verbose_json" and "word" in body["timestamp_granularities"]
    req = pb.TranscribeRequest(
        model=body["model"], audio=audio, filename=filename, task=_TASK[body["task"]],
        language=body["language"], prompt=body["prompt"], request_id=request_id,
        include_logprobs=body["logprobs"],
        timestamp_granularities=[_GRANULARITY["word"]] if words else [])
    if body["temperature"] is not None:
        req.temperature = body["temperature"]
    if body["vad"] is not None:
        req.vad.SetInParent()
        for k, v in body["vad"].items():
            setattr(req.vad, k, v)
    return req


def usage_seconds(duration_s: float) -> dict:
    """OpenAI's duration usage: seconds of audio rounded up (at least 1)."""
    return {"type": "duration", "seconds": max(1, math.ceil(round(duration_s, 6)))}


def usage_tokens(usage: pb.TranscriptionUsage) -> dict:
    """The streamed done event's usage: OpenAI's token usage (TranscriptTextUsageTokens:
    audio tokens are Whisper's encoder positions, text tokens the prompt's), plus the
    `seconds` of audio (rounded up, as in usage_seconds) that Whisper is billed by."""
    text, audio = usage.prompt_tokens, usage.audio_tokens
    return {"type": "tokens", "input_tokens": text + audio,
            "input_token_details": {"text_tokens": text, "audio_tokens": audio},
            "output_tokens": usage.output_tokens, "total_tokens": text + audio + usage.output_tokens,
            "seconds": usage_seconds(usage.seconds)["seconds"]}


def logprob_dicts(logprobs) -> list[dict]:
    return [{"token": lp.token, "logprob": lp.logprob, "bytes": list(lp.bytes)} for lp in logprobs]


class TranscriptAccumulator:
    """Collects a Transcribe stream; `result(fmt)` gives the response body as
    (content, mimetype): a dict for json/verbose_json, text for text/srt/vtt."""

    def __init__(self, body: dict):
        self.body = body
        self.segments: list[pb.TranscriptSegment] = []
        self.words: list[pb.TranscriptWord] = []
        self.logprobs: list = []
        self.done: pb.TranscribeDone | None = None

    def add(self, ev: pb.TranscribeResponse) -> None:
        kind = ev.WhichOneof("event")
        if kind == "text":
            self.logprobs.extend(ev.text.logprobs)
        elif kind == "segment":
            self.segments.append(ev.segment)
        elif kind == "word":
            self.words.append(ev.word)
        elif kind == "done":
            self.done = ev.done

    def result(self):
        fmt, done = self.body["response_format"], self.done
        if fmt == "text":
            return done.text + "\n", "text/plain; charset=utf-8"
        if fmt == "srt":
            return srt(self.segments), "text/plain; charset=utf-8"
        if fmt == "vtt":
            return vtt(self.segments), "text/vtt; charset=utf-8"
        out: dict = {"text": done.text}
        if fmt == "verbose_json":
            grains = self.body["timestamp_granularities"] or ["segment"]
            out = {"task": "translate" if done.task == pb.TRANSCRIPTION_TASK_TRANSLATE else "transcribe",
                   "language": done.language, "duration": round(done.duration_s, 3), "text": done.text}
            if "segment" in grains:
                out["segments"] = [segment_dict(s) for s in self.segments]
            if "word" in grains:
                out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in self.words]
        if self.body["logprobs"]:
            out["logprobs"] = logprob_dicts(self.logprobs)
        out["usage"] = usage_seconds(done.duration_s)
        return out, "application/json"


def segment_dict(s: pb.TranscriptSegment) -> dict:
    return {"id": s.id, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text, "tokens": list(s.tokens),
            "temperature": round(s.temperature, 6), "avg_logprob": s.avg_logprob,
            "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob}


def timestamp(seconds: float, sep: str) -> str:
    """HH:MM:SS{sep}mmm (SRT: ",", WebVTT: ".")."""
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(segments) -> list[tuple[float, float, str]]:
    """Segments with text (a cue's text cannot be empty: a blank line ends the cue), the
    text on one line per original line, never a blank one."""
    cues = []
    for s in segments:
        lines = [line.strip() for line in s.text.strip().splitlines() if line.strip()]
        if lines:
            cues.append((s.start, s.end, "\n".join(lines)))
    return cues


def srt(segments) -> str:
    """SubRip: numbered cues `N\\nHH:MM:SS,mmm --> HH:MM:SS,mmm\\ntext\\n\\n`."""
    return "".join(f"{i}\n{timestamp(a, ',')} --> {timestamp(b, ',')}\n{text}\n\n"
                   for i, (a, b, text) in enumerate(_cues(segments), 1))


def vtt(segments) -> str:
    """WebVTT: the `WEBVTT` header, then cues `HH:MM:SS.mmm --> HH:MM:SS.mmm\\ntext\\n\\n`
    ("-->" in a cue's text is written as "->", which WebVTT forbids there)."""
    return "WEBVTT\n\n" + "".join(f"{timestamp(a, '.')} --> {timestamp(b, '.')}\n{text.replace('-->', '->')}\n\n"
                                  for a, b, text in _cues(segments))


class TranscriptStreamBuilder:
    """Transcribe events -> SSE event dicts: one `transcript.text.delta` per text event
    (with its logprobs when asked), then `transcript.text.done` with the whole text and
    usage."""

    def __init__(self, body: dict):
        self.logprobs = body["logprobs"]
        self.all_logprobs: list[dict] = []

    def on_event(self, ev: pb.TranscribeResponse) -> list[dict]:
        kind = ev.WhichOneof("event")
        if kind == "text" and (ev.text.text or ev.text.logprobs):
            out = {"type": "transcript.text.delta", "delta": ev.text.text}
            if self.logprobs:
                out["logprobs"] = logprob_dicts(ev.text.logprobs)
                self.all_logprobs.extend(out["logprobs"])
            return [out]
        if kind == "done":
            out = {"type": "transcript.text.done", "text": ev.done.text}
            if self.logprobs:
                out["logprobs"] = self.all_logprobs
            out["usage"] = usage_tokens(ev.done.usage)
            return [out]
        return []
