"""Pure functions of Whisper transcription (no torch, no model): where the audio is cut
into windows, how a window's tokens become timed segments, how times are stitched and
clamped, how tokens group into words, and the DTW alignment behind word times.

Units: samples at 16 kHz; times in seconds; Whisper's timestamp tokens are 0.02 s apart
(`TIME_PRECISION`) and its encoder has 50 positions per second (`FRAMES_PER_SECOND`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
TIME_PRECISION = 0.02  # seconds per timestamp token
FRAMES_PER_SECOND = 50  # encoder positions per second (1,500 per 30 s window)
VAD_FRAME_S = 0.02
MIN_WINDOW_S = 5.0  # a VAD cut never makes a window shorter than this


@dataclass(frozen=True)
class Window:
    """A stretch of the audio, [start, end) in samples (end - start <= 30 s)."""

    start: int
    end: int

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


def voiced_frames(samples: np.ndarray, threshold: float) -> np.ndarray:
    """bool [n_frames]: 20 ms frames whose RMS, relative to the loudest frame, is above
    -60 dB x (1 - threshold) (threshold in [0, 1]; 0.5 is -30 dB)."""
    hop = int(VAD_FRAME_S * SAMPLE_RATE)
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0, dtype=bool)
    x = samples[:n * hop].astype(np.float32).reshape(n, hop)
    rms = np.sqrt((x * x).mean(axis=1)) + 1e-9
    db = 20 * np.log10(rms / rms.max())
    return db > -60.0 * (1.0 - float(threshold))


def silence_cuts(voiced: np.ndarray, silence_frames: int, padding_frames: int) -> list[int]:
    """Candidate cut points (in frames): in each run of at least `silence_frames`
    unvoiced frames between speech, `padding_frames` before the speech that follows
    (never before the run's start)."""
    cuts: list[int] = []
    i, n = 0, len(voiced)
    while i < n:
        if voiced[i]:
            i += 1
            continue
        j = i
        while j < n and not voiced[j]:
            j += 1
        if j - i >= max(1, silence_frames) and i > 0 and j < n:
            cuts.append(max(i, j - padding_frames))
        i = j
    return cuts


def plan_windows(num_samples: int, samples: np.ndarray | None = None, vad=None) -> list[Window]:
    """Contiguous windows covering [0, num_samples), each at most 30 s.

    Without `vad` (an engines.base.VadParams): fixed 30 s windows. With it: each window
    ends at the last silence cut (silence_cuts) that keeps it between MIN_WINDOW_S and
    30 s long, else at 30 s."""
    if num_samples <= 0:
        return []
    cuts: list[int] = []
    if vad is not None and samples is not None:
        hop = int(VAD_FRAME_S * SAMPLE_RATE)
        frames = silence_cuts(voiced_frames(samples, vad.threshold), round(vad.silence_duration_ms / 20),
                              round(vad.prefix_padding_ms / 20))
        cuts = [f * hop for f in frames]
    windows: list[Window] = []
    start = 0
    while start < num_samples:
        hard = min(start + WINDOW_SAMPLES, num_samples)
        end = hard
        if hard < num_samples:
            usable = [c for c in cuts if start + MIN_WINDOW_S * SAMPLE_RATE <= c <= hard]
            if usable:
                end = usable[-1]
        windows.append(Window(start, end))
        start = end
    return windows


@dataclass
class RawSegment:
    """A segment of one window: times relative to the window's start, in seconds;
    `tokens` its ids (timestamp tokens included); `text_tokens` without them."""

    start: float
    end: float
    tokens: list[int]
    text_tokens: list[int]


def parse_segments(tokens: list[int], eot: int, timestamp_begin: int, window_s: float) -> list[RawSegment]:
    """Splits a window's sampled tokens (after the prompt, EOT excluded or not) into
    segments at Whisper's timestamp tokens: `<|t0|> text <|t1|>` is one segment from t0
    to t1. Text before any timestamp starts at 0; text with no closing timestamp (the
    window was cut by the token limit, or the model ended without one) ends at
    `window_s`. Consecutive timestamps with no text between them make no segment."""
    segments: list[RawSegment] = []
    start: float | None = None
    cur: list[int] = []
    text: list[int] = []
    for t in tokens:
        if t == eot:
            break
        if t >= timestamp_begin:
            time = (t - timestamp_begin) * TIME_PRECISION
            if text:
                segments.append(RawSegment(start if start is not None else 0.0, time, cur + [t], text))
                text = []
            start, cur = time, [t]  # a timestamp after text closes its segment and opens the next
        elif t < eot:
            cur.append(t)
            text.append(t)
    if text:
        segments.append(RawSegment(start if start is not None else 0.0, max(window_s, start or 0.0), cur, text))
    return segments


def stitch(raw: list[RawSegment], offset_s: float, window_end_s: float, duration_s: float
           ) -> list[tuple[float, float]]:
    """Absolute (start, end) of a window's segments: shifted by the window's start,
    clamped to [offset_s, min(window_end_s, duration_s)] (random-weight checkpoints emit
    timestamps past the end), made non-decreasing and non-overlapping."""
    hi = min(window_end_s, duration_s)
    out: list[tuple[float, float]] = []
    prev = offset_s
    for seg in raw:
        s = min(max(offset_s + seg.start, prev), hi)
        e = min(max(offset_s + seg.end, s), hi)
        out.append((round(s, 3), round(e, 3)))
        prev = e
    return out


def compression_ratio(text: str) -> float:
    """len(utf-8 bytes) / len(zlib-compressed bytes), as Whisper reports it (0 for empty)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic time warping over `cost` [n, m] (lower is better): the monotone path from
    (0, 0) to (n-1, m-1) with steps (1,1), (1,0), (0,1) of least total cost, as
    (row indices, column indices). Vectorized over anti-diagonals."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    trace = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0 diagonal, 1 up (i-1), 2 left (j-1)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)
        j = d - i
        options = np.stack([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]])
        best = options.argmin(axis=0)
        acc[i, j] = cost[i - 1, j - 1] + options[best, np.arange(len(i))]
        trace[i, j] = best
    i, j = n, m
    rows, cols = [], []
    while i > 0 and j > 0:
        rows.append(i - 1)
        cols.append(j - 1)
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    return np.array(rows[::-1]), np.array(cols[::-1])


def token_start_times(alignment: np.ndarray) -> np.ndarray:
    """Start time (seconds, from the window's start) of each row of an alignment matrix
    [tokens + 1, frames] (the text tokens then EOT; higher is more aligned): the frame
    where the DTW path first reaches that row. Length tokens + 1: the last entry is where
    EOT starts, i.e. the last token's end."""
    rows, cols = dtw(-alignment)
    jumps = np.concatenate([[True], np.diff(rows) > 0])
    return cols[jumps] / FRAMES_PER_SECOND


def group_words(pieces: list[str], starts: list[float], ends: list[float]) -> list[tuple[str, float, float]]:
    """Words from token pieces (decoded text of each token) with their times: a word
    starts at a piece beginning with a space; punctuation-only pieces join the word before.
    Returns (word without its leading space, start, end)."""
    words: list[list] = []
    for piece, s, e in zip(pieces, starts, ends):
        starts_word = piece[:1].isspace() or not words
        if not starts_word or (piece.strip() and all(not c.isalnum() for c in piece.strip()) and words):
            words[-1][0] += piece
            words[-1][2] = e
        else:
            words.append([piece, s, e])
    return [(w.strip(), s, e) for w, s, e in words if w.strip()]


def clamp_words(words: list[tuple[str, float, float]], start: float, end: float) -> list[tuple[str, float, float]]:
    """Word times clamped into [start, end] and made non-decreasing."""
    out = []
    prev = start
    for w, s, e in words:
        s = min(max(s, prev), end)
        e = min(max(e, s), end)
        out.append((w, round(s, 3), round(e, 3)))
        prev = e
    return out
