"""The transcription engine process: a Whisper-architecture checkpoint through
transformers (WhisperForConditionalGeneration, its WhisperFeatureExtractor and tokenizer),
decoding the windows of concurrent requests together.

Messages (engines/worker.py): `Submit(TranscribeJob)` in (16 kHz int16 samples and the
window plan, made by the parent); out, one `Step` per decoded batch whose
`events[request_id]` lists that request's `WindowResult`s and whose `ended[request_id]`
is "finished" once all its windows are done (or the error text).

A batch takes waiting windows round-robin over their requests (pick_batch: a short
request is not queued behind all the windows of a long file), waiting up to `max_wait_ms`
after the first for more, up to `max_batch` windows of equal prompt length (so rows stay
aligned: prompts differ only by the optional conditioning text). Each batch
runs the encoder once and decodes all rows together with a KV cache until every row has
sampled `<|endoftext|>` or `max_new_tokens`.

Decoding follows Whisper's rules (openai/whisper `decoding.py`): the prompt is
`[<|startofprev|> prompt...] <|startoftranscript|> <|lang|> <|task|>`; at each step other
special tokens are suppressed, blank and EOT are suppressed at the first position, and
the timestamp rules hold (the first token is a timestamp no later than
`max_initial_timestamp_index`, timestamps come in pairs and never decrease, a timestamp
is forced when timestamps are together likelier than any text token). `no_speech_prob` is
the probability of `<|nospeech|>` after `<|startoftranscript|>`. The language of a request
without one is detected on its first window (the likeliest language token after
`<|startoftranscript|>`), for all such requests of a batch together, before it is formed;
the first windows' encoder states are kept for their decoding. Word times come from a second, teacher-forced pass over the
text tokens: the cross-attention of the checkpoint's `alignment_heads`, normalized and
median-filtered, aligned to the encoder frames by DTW (whisper_windows.token_start_times).

Options: device, dtype, threads, max_batch (8 windows), max_wait_ms (100),
max_new_tokens (half the decoder context, Whisper's sample_len).
"""
from __future__ import annotations

import inspect
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ..worker import Abort, Step, Stop, Submit
from .whisper_windows import FRAMES_PER_SECOND, SAMPLE_RATE, token_start_times

log = logging.getLogger("genapi.engine.whisper")

DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_WAIT_MS = 100.0  # a window decodes for seconds: waiting for company costs a few %
MEDIAN_FILTER_WIDTH = 7


@dataclass
class TranscribeJob:
    """One request as the engine process sees it. `windows`: [(start, end)] in samples."""

    request_id: str
    samples: np.ndarray  # int16 [n], mono 16 kHz
    windows: list[tuple[int, int]]
    task: str = "transcribe"
    language: str | None = None  # code; None: detect on the first window
    prompt_ids: list[int] = field(default_factory=list)
    temperature: float = 0.0
    words: bool = False
    first_states: object = None  # engine process only: encoder states kept by language detection


@dataclass
class WindowResult:
    """What one window decoded to. `tokens`: sampled ids after the prompt (timestamps
    included, EOT excluded); `logprobs`: one per token; `sum_logprob` includes EOT's;
    `token_times`: when words were asked for, start time (s, from the window's start) of
    each text token plus the end of the last one (len = text tokens + 1)."""

    index: int
    language: str
    tokens: list[int]
    logprobs: list[float]
    sum_logprob: float
    no_speech_prob: float
    temperature: float
    token_times: list[float] | None = None


@dataclass
class _Row:
    job: TranscribeJob
    index: int


class WhisperLoop:
    """The child side (engines/worker.py `factory`): `load()` then `run(conn)`."""

    def __init__(self, name: str, path: str, options: dict):
        self.name, self.path = name, path
        self.options = dict(options)
        self.max_batch = int(self.options.get("max_batch", DEFAULT_MAX_BATCH))
        self.max_wait_s = float(self.options.get("max_wait_ms", DEFAULT_MAX_WAIT_MS)) / 1000
        self.languages: dict[str, int] = {}

    # ---- loading -------------------------------------------------------------------
    def load(self) -> dict:
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a directory, never the hub
        device = self.options.get("device", "auto")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("device = 'cuda' but no CUDA device is available")
        dtype = self.options.get("dtype", "auto")
        if dtype == "auto":
            dtype = "float16" if device.startswith("cuda") else "float32"
        if self.options.get("threads"):
            torch.set_num_threads(int(self.options["threads"]))
        from transformers import AutoTokenizer, WhisperFeatureExtractor, WhisperForConditionalGeneration

        # SDPA for decoding (faster, also on CPU); the word-timestamp pass switches to eager
        # attention, the one that returns the cross-attention weights.
        model = WhisperForConditionalGeneration.from_pretrained(
            self.path, local_files_only=True, attn_implementation="sdpa", dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.device, self.dtype = torch.device(device), getattr(torch, dtype)
        # transformers 5 names the decoder's KV cache argument `cache` (`past_key_values` before)
        params = inspect.signature(self.model.model.decoder.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.features = WhisperFeatureExtractor.from_pretrained(self.path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        gc = model.generation_config
        ids = tok.convert_tokens_to_ids
        self.eot = ids("<|endoftext|>")
        self.sot = ids("<|startoftranscript|>")
        self.sot_prev = ids("<|startofprev|>")
        self.no_timestamps = ids("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        nospeech = [i for i in (ids("<|nospeech|>"), ids("<|nocaptions|>")) if i is not None and i != tok.unk_token_id]
        self.no_speech = nospeech[0] if nospeech else None
        lang_to_id = dict(getattr(gc, "lang_to_id", None) or {})
        self.languages = {k[2:-2]: v for k, v in lang_to_id.items()}
        task_to_id = dict(getattr(gc, "task_to_id", None) or {})
        self.task_ids = {k: v for k, v in task_to_id.items()}
        self.n_ctx = int(model.config.max_target_positions)
        self.max_new_tokens = int(self.options.get("max_new_tokens", self.n_ctx // 2))
        self.max_initial_ts = int(getattr(gc, "max_initial_timestamp_index", 50) or 50)
        vocab = int(model.config.vocab_size)
        specials = [i for i in range(self.eot + 1, self.timestamp_begin) if i < vocab]  # sot .. notimestamps
        suppress = [t for t in (getattr(gc, "suppress_tokens", None) or []) if 0 <= t < vocab]
        self.suppress = torch.tensor(sorted(set(specials + suppress)), dtype=torch.long, device=self.device)
        self.blank = [t for t in tok.encode(" ", add_special_tokens=False)] + [self.eot]
        heads = getattr(gc, "alignment_heads", None)
        if not heads:  # openai/whisper's default: every head of the last half of the layers
            L, H = model.config.decoder_layers, model.config.decoder_attention_heads
            heads = [[layer, h] for layer in range(L // 2, L) for h in range(H)]
        self.alignment_heads = [tuple(h) for h in heads]
        log.info("%s: Whisper %s on %s (%s), %d languages, %d-token context", self.name,
                 type(model).__name__, device, dtype, len(self.languages), self.n_ctx)
        return {"tokenizer": tok, "languages": sorted(self.languages), "task_ids": sorted(self.task_ids),
                "n_ctx": self.n_ctx, "eot": self.eot, "timestamp_begin": self.timestamp_begin,
                "max_prompt_tokens": self.n_ctx // 2 - 1}

    # ---- one batch -------------------------------------------------------------------
    def _encode(self, rows: list[_Row]):
        """Encoder states [rows, 1500, d] of the rows' windows; a first window whose states
        language detection already computed reuses them (and lets them go)."""
        import torch

        fresh = [r for r in rows if not (r.index == 0 and r.job.first_states is not None)]
        states = {}
        if fresh:
            audio = [r.job.samples[slice(*r.job.windows[r.index])].astype(np.float32) / 32768.0 for r in fresh]
            feats = self.features(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
            x = torch.from_numpy(np.asarray(feats)).to(self.device, self.dtype)
            out = self.model.model.encoder(x).last_hidden_state
            states = {id(r): out[i:i + 1] for i, r in enumerate(fresh)}
        parts = []
        for r in rows:
            if id(r) in states:
                parts.append(states[id(r)])
            else:
                parts.append(r.job.first_states)
                r.job.first_states = None
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def detect_languages(self, jobs: list[TranscribeJob]) -> None:
        """Sets each job's language: the likeliest language token after
        <|startoftranscript|> on its first window (one batched encoder pass and one decoder
        step for all of them). The encoder states are kept for the window's decoding."""
        import torch

        if not self.languages:
            for job in jobs:
                job.language = "en"
            return
        with torch.inference_mode():
            enc = self._encode([_Row(job, 0) for job in jobs])
            sot = torch.full((len(jobs), 1), self.sot, device=self.device)
            out = self.model.model.decoder(input_ids=sot, encoder_hidden_states=enc)
            logits = self.model.proj_out(out.last_hidden_state[:, -1]).float()
        codes = list(self.languages)
        best = logits[:, [self.languages[c] for c in codes]].argmax(-1).tolist()
        for i, job in enumerate(jobs):
            job.language = codes[best[i]]
            job.first_states = enc[i:i + 1]

    def detect_language(self, job: TranscribeJob) -> str:
        """The language of one job (see detect_languages)."""
        self.detect_languages([job])
        return job.language

    def prompt(self, job: TranscribeJob) -> tuple[list[int], int]:
        """The decoder prompt of a job's windows and the position of <|startoftranscript|>."""
        prev = [self.sot_prev, *job.prompt_ids[-(self.n_ctx // 2 - 1):]] if job.prompt_ids else []
        seq = [self.sot]
        if self.languages:
            seq.append(self.languages[job.language])
            seq.append(self.task_ids.get(job.task, self.task_ids.get("transcribe")))
        return prev + seq, len(prev)

    def _rules(self, logits, sampled: list[list[int]]):
        """Whisper's suppression and timestamp rules on logits [B, V], in place."""
        import torch

        ninf = -float("inf")
        logits[:, self.suppress] = ninf
        tb = self.timestamp_begin
        for b, seq in enumerate(sampled):
            row = logits[b]
            if not seq:
                row[self.blank] = ninf
                row[:tb] = ninf  # the first token is a timestamp ...
                row[tb + self.max_initial_ts + 1:] = ninf  # ... not too late
                continue
            last_ts = seq[-1] >= tb
            penult_ts = len(seq) < 2 or seq[-2] >= tb
            if last_ts:
                if penult_ts:
                    row[tb:] = ninf  # after a pair: text or EOT
                else:
                    row[:self.eot] = ninf  # after text and a timestamp: its pair or EOT
            stamps = [t for t in seq if t >= tb]
            if stamps:
                floor = stamps[-1] if last_ts and not penult_ts else stamps[-1] + 1
                row[tb:floor] = ninf  # timestamps never decrease
        logprobs = torch.log_softmax(logits, dim=-1)
        ts_mass = torch.logsumexp(logprobs[:, tb:], dim=-1)
        text_max = logprobs[:, :tb].max(dim=-1).values
        force = ts_mass > text_max
        if force.any():
            logits[force, :tb] = ninf
        return logits

    def decode(self, rows: list[_Row]) -> list[WindowResult]:
        """Decodes one batch of windows (equal prompt lengths)."""
        import torch

        with torch.inference_mode():
            enc = self._encode(rows)
            prompts = [self.prompt(r.job) for r in rows]
            sot_at = prompts[0][1]
            ids = torch.tensor([p for p, _ in prompts], device=self.device)
            out = self.model.model.decoder(input_ids=ids, encoder_hidden_states=enc, use_cache=True)
            cache = _cache_of(out)
            hidden = out.last_hidden_state
            if self.no_speech is not None:
                no_speech = torch.softmax(self.model.proj_out(hidden[:, sot_at]).float(), -1)[:, self.no_speech]
            else:
                no_speech = torch.zeros(len(rows))
            logits = self.model.proj_out(hidden[:, -1]).float()
            B = len(rows)
            sampled: list[list[int]] = [[] for _ in rows]
            lps: list[list[float]] = [[] for _ in rows]
            sums = [0.0] * B
            done = [False] * B
            temps = torch.tensor([r.job.temperature for r in rows], device=logits.device)
            budget = max(1, min(self.max_new_tokens, self.n_ctx - ids.shape[1]))
            for step in range(budget):
                logits = self._rules(logits, sampled)
                logprobs = torch.log_softmax(logits, dim=-1)
                greedy = logits.argmax(-1)
                nxt = greedy
                if (temps > 0).any():
                    t = torch.where(temps > 0, temps, torch.ones_like(temps))
                    drawn = torch.multinomial(torch.softmax(logits / t[:, None], -1), 1)[:, 0]
                    nxt = torch.where(temps > 0, drawn, greedy)
                if step == budget - 1:
                    nxt = torch.full_like(nxt, self.eot)  # out of room: the window ends here
                chosen = logprobs.gather(1, nxt[:, None])[:, 0].tolist()
                nxt_list = nxt.tolist()
                for b in range(B):
                    if done[b]:
                        continue
                    sums[b] += chosen[b] if step < budget - 1 else 0.0
                    if nxt_list[b] == self.eot:
                        done[b] = True
                    else:
                        sampled[b].append(nxt_list[b])
                        lps[b].append(chosen[b])
                if all(done):
                    break
                feed = torch.tensor([self.eot if done[b] else nxt_list[b] for b in range(B)], device=self.device)
                out = self.model.model.decoder(input_ids=feed[:, None], encoder_hidden_states=enc,
                                               use_cache=True, **{self.cache_kw: cache})
                cache = _cache_of(out)
                logits = self.model.proj_out(out.last_hidden_state[:, -1]).float()
            results = []
            for b, r in enumerate(rows):
                times = None
                if r.job.words:
                    times = self.align(enc[b:b + 1], r, [t for t in sampled[b] if t < self.eot])
                results.append(WindowResult(r.index, r.job.language, sampled[b], lps[b], sums[b],
                                            float(no_speech[b]), r.job.temperature, times))
            return results

    def align(self, enc, row: _Row, text_tokens: list[int]) -> list[float]:
        """Start times (s) of each text token and the end of the last (len + 1)."""
        import torch

        if not text_tokens:
            return [0.0]
        prompt, sot_at = self.prompt(row.job)
        head = prompt[sot_at:] + [self.no_timestamps]
        ids = torch.tensor([head + text_tokens + [self.eot]], device=self.device)
        self.model.set_attn_implementation("eager")
        try:
            out = self.model.model.decoder(input_ids=ids, encoder_hidden_states=enc, output_attentions=True)
        finally:
            self.model.set_attn_implementation("sdpa")
        cross = out.cross_attentions
        start, end = row.job.windows[row.index]
        frames = max(1, min(enc.shape[1], int(np.ceil((end - start) / SAMPLE_RATE * FRAMES_PER_SECOND))))
        w = torch.stack([cross[layer][0, h] for layer, h in self.alignment_heads]).float()[:, :, :frames]
        std, mean = torch.std_mean(w, dim=-2, keepdim=True, unbiased=False)
        w = ((w - mean) / (std + 1e-9)).cpu().numpy()
        w = _median_filter(w, MEDIAN_FILTER_WIDTH)
        matrix = w.mean(axis=0)[len(head) - 1:len(head) + len(text_tokens)]  # rows predicting each token + EOT
        return [float(t) for t in token_start_times(matrix)]

    # ---- the loop ------------------------------------------------------------------
    def run(self, conn) -> None:
        jobs: dict[str, TranscribeJob] = {}
        left: dict[str, int] = {}  # windows not yet decoded, per request
        queue: deque[_Row] = deque()
        while True:
            try:
                if not queue and not self._take(conn.recv(), jobs, left, queue):
                    return
                deadline = time.monotonic() + self.max_wait_s
                while len(queue) < self.max_batch:
                    if not conn.poll(max(0.0, deadline - time.monotonic())):
                        break
                    if not self._take(conn.recv(), jobs, left, queue):
                        return
                while conn.poll(0):
                    if not self._take(conn.recv(), jobs, left, queue):
                        return
            except (EOFError, OSError):
                return
            if not queue:
                continue
            undetected = list({id(r.job): r.job for r in queue if r.job.language is None}.values())
            if undetected:
                try:
                    self.detect_languages(undetected)
                except Exception as e:
                    log.exception("%s: language detection failed", self.name)
                    failed = {j.request_id for j in undetected}
                    for rid in failed:
                        jobs.pop(rid, None)
                        left.pop(rid, None)
                    queue = deque(r for r in queue if r.job.request_id not in failed)
                    try:
                        conn.send(Step(ended={rid: f"language detection failed: {e}" for rid in failed}))
                    except (EOFError, OSError):
                        return
                    continue
            rows, queue = pick_batch(queue, self.max_batch, lambda r: len(self.prompt(r.job)[0]))
            try:
                results = self.decode(rows)
                step = Step(forward_passes=1)
                for r, res in zip(rows, results):
                    rid = r.job.request_id
                    if rid not in left:
                        continue  # aborted while its window was being decoded
                    step.events.setdefault(rid, []).append(res)
                    left[rid] -= 1
                    if left[rid] == 0:
                        step.ended[rid] = "finished"
                        jobs.pop(rid, None)
                        left.pop(rid, None)
            except Exception as e:  # a failed batch fails the requests it served, not the engine
                log.exception("%s: decoding failed", self.name)
                step = Step()
                for rid in {r.job.request_id for r in rows}:
                    step.ended[rid] = f"decoding failed: {e}"
                    jobs.pop(rid, None)
                    left.pop(rid, None)
                queue = deque(r for r in queue if r.job.request_id in jobs)
            try:
                conn.send(step)
            except (EOFError, OSError):
                return

    def _take(self, msg, jobs: dict, left: dict, queue: deque) -> bool:
        """Files one message; False on Stop."""
        if isinstance(msg, Submit):
            job: TranscribeJob = msg.request  # a job without a language is detected with the next batch
            jobs[job.request_id] = job
            left[job.request_id] = len(job.windows)
            queue.extend(_Row(job, i) for i in range(len(job.windows)))
        elif isinstance(msg, Abort):
            if jobs.pop(msg.request_id, None) is not None:
                left.pop(msg.request_id, None)
                kept = [r for r in queue if r.job.request_id != msg.request_id]
                queue.clear()
                queue.extend(kept)
        elif isinstance(msg, Stop):
            return False
        return True


def pick_batch(queue: deque, max_batch: int, width) -> tuple[list, deque]:
    """The next batch from the waiting windows and what stays waiting (in order).

    Windows are taken round-robin over their requests (each request's first waiting
    window, then each one's second, ...), in arrival order, so a short request that
    arrives behind a long file's windows joins the next batch instead of waiting for all
    of them; within a request they stay in time order. Only windows whose prompt length
    (`width(row)`) equals the first one's share the batch (rows stay aligned)."""
    by_request: dict[str, list] = {}
    for r in queue:
        by_request.setdefault(r.job.request_id, []).append(r)
    order = []
    for rank in range(max((len(v) for v in by_request.values()), default=0)):
        order.extend(rows[rank] for rows in by_request.values() if rank < len(rows))
    if not order:
        return [], deque()
    w = width(order[0])
    picked = []
    for r in order:
        if len(picked) == max_batch:
            break
        if width(r) == w:
            picked.append(r)
    chosen = {id(r) for r in picked}
    return picked, deque(r for r in queue if id(r) not in chosen)


def _cache_of(out):
    """The KV cache a decoder call returned (`cache` in transformers 5, else `past_key_values`)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def _median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of `width` (odd) along the last axis, edges reflected."""
    if x.shape[-1] < width or width < 2:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1), axis=-1)
