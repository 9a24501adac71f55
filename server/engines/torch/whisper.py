"""Transcription on the torch backend: the Transcriber capability of a Whisper-architecture
checkpoint.

This side, in the core's event loop: decodes the audio with PyAV (server/media/audio.py,
in a thread), plans its windows (whisper_windows.plan_windows), admits the request
(bounded: `max_queue` requests in flight, else EngineOverloaded) and turns the engine
process's window results (whisper_loop.py, which batches the windows of concurrent
requests) into events, in window order: TranscriptionStarted, one TranscriptionDelta
per window (text, timed segments, words), TranscriptionDone.

Options: max_queue (64), max_audio_s (7200, longest audio accepted), and the engine
process's (whisper_loop.py: device, dtype, threads, max_batch, max_wait_ms,
max_new_tokens).
"""
from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import AsyncIterator

from genapi.config import TRANSCRIPTION_MAX_QUEUE

from ..base import (
    EngineBase,
    EngineError,
    EngineInvalidRequest,
    EngineOverloaded,
    EngineStats,
    TokenLogprob,
    TranscriberInfo,
    TranscriptionDelta,
    TranscriptionDone,
    TranscriptionEvent,
    TranscriptionRequest,
    TranscriptionStarted,
    TranscriptSegment,
    TranscriptWord,
)
from ..worker import Abort, Step, Submit, WorkerEngine, WorkerProcess
from .whisper_loop import TranscribeJob, WhisperLoop, WindowResult
from .whisper_windows import (
    FRAMES_PER_SECOND,
    SAMPLE_RATE,
    Window,
    clamp_words,
    compression_ratio,
    group_words,
    parse_segments,
    plan_windows,
    stitch,
)

log = logging.getLogger("genapi.engine.whisper")

DEFAULT_MAX_QUEUE = TRANSCRIPTION_MAX_QUEUE  # genapi.config sizes the shim's threads from it
DEFAULT_MAX_AUDIO_S = 7200.0


def language_names() -> dict[str, str]:
    """Whisper's language codes -> lower-case English names (transformers' table)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return dict(LANGUAGES)


class WhisperEngine(WorkerEngine, EngineBase):
    """Transcriber on one Whisper checkpoint (its own engine process)."""

    def __init__(self, name: str, path: str, options: dict | None = None):
        self.name = name
        self.path = path
        self.options = dict(options or {})
        self.max_queue = int(self.options.get("max_queue", DEFAULT_MAX_QUEUE))
        self.max_audio_s = float(self.options.get("max_audio_s", DEFAULT_MAX_AUDIO_S))
        self.transcriber_info: TranscriberInfo | None = None
        self._info: dict = {}
        self._names = language_names()
        self._lock = threading.Lock()  # guards _waiting and _stats
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stats = EngineStats()
        self._stopping = False
        self._worker = WorkerProcess(name, path, self.options, WhisperLoop, self._on_step, self._on_exit)

    # ---- lifecycle -------------------------------------------------------------
    async def start(self) -> None:
        self._info = await self._worker.start()
        self.transcriber_info = TranscriberInfo(list(self._info["languages"]), self.max_audio_s)


    # ---- validation --------------------------------------------------------------
    def _language(self, language: str | None) -> str | None:
        """An ISO-639-1 code (or Whisper's English name) -> code; None stays None."""
        if not language:
            return None
        langs = self.transcriber_info.languages
        code = language.strip().lower()
        by_name = {v: k for k, v in self._names.items()}
        code = by_name.get(code, code)
        if not langs:
            if code != "en":
                raise EngineInvalidRequest(f"The model `{self.name}` is English-only: language must be 'en'.",
                                           "language", "unsupported_language")
            return code
        if code not in langs:
            raise EngineInvalidRequest(f"Unsupported language '{language[:32]}': expected an ISO-639-1 code "
                                       f"this model knows (e.g. 'en', 'fr', 'de').", "language",
                                       "unsupported_language")
        return code

    def _job(self, request: TranscriptionRequest):
        """Decodes and plans (runs in a thread): (job, windows, duration_s)."""
        from server.media.audio import MIN_AUDIO_S, AudioError, decode_audio

        try:
            samples = decode_audio(request.audio, SAMPLE_RATE, self.max_audio_s)
        except AudioError as e:
            raise EngineInvalidRequest(str(e), "file", "invalid_audio") from None
        if len(samples) < MIN_AUDIO_S * SAMPLE_RATE:
            raise EngineInvalidRequest(f"Audio file is too short. Minimum audio length is {MIN_AUDIO_S} seconds.",
                                       "file", "audio_too_short")
        windows = plan_windows(len(samples), samples, request.vad)
        tok = self._info["tokenizer"]
        prompt_ids = tok.encode(" " + request.prompt.strip(), add_special_tokens=False) if request.prompt.strip() \
            else []
        prompt_ids = prompt_ids[-self._info["max_prompt_tokens"]:]
        job = TranscribeJob(request.request_id, samples, [(w.start, w.end) for w in windows], request.task,
                            self._language(request.language), prompt_ids, float(request.temperature),
                            request.words)
        return job, windows, len(samples) / SAMPLE_RATE

    # ---- the capability ------------------------------------------------------------
    async def transcribe(self, request: TranscriptionRequest) -> AsyncIterator[TranscriptionEvent]:
        if request.task == "translate" and "translate" not in self._info.get("task_ids", []):
            raise EngineInvalidRequest(f"The model `{self.name}` cannot translate (it is English-only).", "model")
        self._language(request.language)  # refuse a bad language before decoding anything
        with self._lock:  # and a full queue (checked again once decoded, when it counts)
            if len(self._waiting) >= self.max_queue:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(f"{self.name}: request queue is full ({self.max_queue} in flight)")
        job, windows, duration = await asyncio.to_thread(self._job, request)
        if not self.ready():
            raise EngineError(f"the engine process for {self.name!r} is not running")
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if len(self._waiting) >= self.max_queue:
                self._stats.requests_rejected += 1
                raise EngineOverloaded(f"{self.name}: request queue is full ({self.max_queue} in flight)")
            self._waiting[job.request_id] = (loop, inbox)
        finished = False
        try:
            self._worker.send(Submit(job))
            # Started once the job is with the engine: a caller leaving from here on aborts it.
            yield TranscriptionStarted(duration, len(windows))
            assembler = TranscriptAssembler(self._info, self._names, windows, duration, request)
            assembler.prompt_tokens = len(job.prompt_ids)
            ready: dict[int, WindowResult] = {}
            nxt = 0
            while nxt < len(windows):
                item = await inbox.get()
                if isinstance(item, Exception):
                    raise item
                if item is None:
                    continue
                for res in item:
                    ready[res.index] = res
                while nxt in ready:
                    yield assembler.window(ready.pop(nxt))
                    nxt += 1
            finished = True
            yield assembler.done()
        except OSError:
            raise EngineError(f"the engine process for {self.name!r} is not running") from None
        finally:
            with self._lock:
                live = self._waiting.pop(job.request_id, None) is not None
                if live and not finished:
                    self._stats.requests_aborted += 1
            if live and not finished:
                try:
                    self._worker.send(Abort(job.request_id))
                except OSError:
                    pass

    # ---- the engine process --------------------------------------------------------
    def _on_step(self, step: Step) -> None:
        """Reader thread: the windows one batch decoded."""
        with self._lock:
            self._stats.forward_passes += step.forward_passes
            targets = {rid: self._waiting.get(rid) for rid in set(step.events) | set(step.ended)}
            self._stats.requests_finished += sum(1 for rid, w in targets.items()
                                                 if w and step.ended.get(rid) == "finished")
        for rid, waiter in targets.items():
            if waiter is None:
                continue  # aborted meanwhile
            loop, inbox = waiter
            if rid in step.events:
                loop.call_soon_threadsafe(inbox.put_nowait, step.events[rid])
            ended = step.ended.get(rid)
            if ended is not None and ended != "finished":
                loop.call_soon_threadsafe(inbox.put_nowait, EngineError(str(ended)))

    def _on_exit(self) -> None:
        with self._lock:
            lost, self._waiting = self._waiting, {}
        if self._stopping:
            log.info("engine process for %s stopped (%d request(s) still open)", self.name, len(lost))
        else:
            log.error("engine process for %s exited (code %s); failing its requests",
                      self.name, self._worker.exitcode)
        for loop, inbox in lost.values():
            loop.call_soon_threadsafe(inbox.put_nowait, EngineError("the engine process exited"))


class TranscriptAssembler:
    """Window results -> events: timed, clamped segments with global ids, words, text
    deltas that concatenate to the final text (leading whitespace of the transcript
    dropped), usage."""

    def __init__(self, info: dict, names: dict[str, str], windows: list[Window], duration_s: float,
                 request: TranscriptionRequest):
        self.tok = info["tokenizer"]
        self.eot, self.tb = info["eot"], info["timestamp_begin"]
        self.names, self.windows, self.duration = names, windows, duration_s
        self.request = request
        self.text = ""
        self.next_id = 0
        self.output_tokens = 0
        self.language = "en"
        self.prompt_tokens = 0

    def window(self, res: WindowResult) -> TranscriptionDelta:
        w = self.windows[res.index]
        self.language = res.language or self.language
        self.output_tokens += len(res.tokens) + 1  # + EOT
        raw = parse_segments(res.tokens, self.eot, self.tb, w.end_s - w.start_s)
        times = stitch(raw, w.start_s, w.end_s, self.duration)
        text_count = sum(1 for t in res.tokens if t < self.eot)
        avg = res.sum_logprob / (text_count + 1)
        window_text = "".join(self.tok.decode(s.text_tokens) for s in raw)
        ratio = compression_ratio(window_text)
        token_times = res.token_times
        segments: list[TranscriptSegment] = []
        k = 0  # position among the window's text tokens
        for seg, (start, end) in zip(raw, times):
            text = self.tok.decode(seg.text_tokens)
            words: list[TranscriptWord] = []
            if token_times is not None:
                n = len(seg.text_tokens)
                pieces = [self.tok.decode([t]) for t in seg.text_tokens]
                starts = [w.start_s + token_times[k + i] for i in range(n)]
                ends = [w.start_s + token_times[k + i + 1] for i in range(n)]
                words = [TranscriptWord(*x) for x in clamp_words(group_words(pieces, starts, ends), start, end)]
            k += len(seg.text_tokens)
            segments.append(TranscriptSegment(self.next_id, w.start // 160, start, end, text, seg.tokens,
                                              res.temperature, avg, ratio, res.no_speech_prob, words))
            self.next_id += 1
        full = (self.text + window_text).lstrip() if not self.text else self.text + window_text
        delta, self.text = full[len(self.text):], full
        logprobs: list[TokenLogprob] = []
        if self.request.logprobs:
            for t, lp in zip(res.tokens, res.logprobs):
                if t < self.eot:
                    piece = self.tok.decode([t])
                    logprobs.append(TokenLogprob(piece, lp, piece.encode("utf-8")))
        return TranscriptionDelta(delta, segments, logprobs)

    def done(self) -> TranscriptionDone:
        language = "english" if self.request.task == "translate" else self.names.get(self.language, self.language)
        audio_tokens = sum(math.ceil((w.end - w.start) * FRAMES_PER_SECOND / SAMPLE_RATE) for w in self.windows)
        return TranscriptionDone(self.text, language, self.duration, self.prompt_tokens, self.output_tokens,
                                 audio_tokens)

