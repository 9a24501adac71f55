"""The transcription engine process's decoding (server/engines/torch/whisper_loop.py) on
the embedded tiny Whisper, in this process: the KV-cached batched loop against the
checkpoint's own uncached forward, batching against single rows, language detection and
word alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from server.engines.torch.whisper_loop import TranscribeJob, WhisperLoop, _Row
from server.engines.torch.whisper_windows import SAMPLE_RATE

from ..conftest import ROOT

TINY_WHISPER = ROOT / "models" / "tiny-whisper"


@pytest.fixture(scope="module")
def loop():
    if not (TINY_WHISPER / "config.json").is_file():
        pytest.skip("models/tiny-whisper is missing (./build.sh builds it)")
    w = WhisperLoop("tiny", str(TINY_WHISPER), {"threads": 1, "device": "cpu"})
    w.info = w.load()
    return w


def job(seconds: float, seed: int, **kw) -> TranscribeJob:
    x = (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 3000).astype(np.int16)
    return TranscribeJob(f"r{seed}", x, [(0, len(x))], **{"language": "en", **kw})


def test_cached_batched_decoding_equals_the_uncached_forward_under_the_rules(loop):
    j = job(4.0, 1)
    res = loop.decode([_Row(j, 0)])[0]
    assert res.tokens and len(res.logprobs) == len(res.tokens)
    prompt, _ = loop.prompt(j)
    with torch.inference_mode():
        enc = loop._encode([_Row(j, 0)])
        for k, token in enumerate(res.tokens[:20]):
            ids = torch.tensor([prompt + res.tokens[:k]])
            hidden = loop.model.model.decoder(input_ids=ids, encoder_hidden_states=enc).last_hidden_state
            logits = loop._rules(loop.model.proj_out(hidden[:, -1]).float(), [res.tokens[:k]])
            lp = torch.log_softmax(logits, -1)[0]
            assert int(lp.argmax()) == token  # greedy
            assert float(lp[token]) == pytest.approx(res.logprobs[k], abs=1e-4)


def test_timestamps_follow_whisper_rules(loop):
    res = loop.decode([_Row(job(6.0, 2), 0)])[0]
    tb = loop.timestamp_begin
    assert res.tokens[0] >= tb and res.tokens[0] - tb <= loop.max_initial_ts
    stamps = [t for t in res.tokens if t >= tb]
    assert stamps == sorted(stamps)  # never decrease
    assert all(t < loop.eot or t >= tb for t in res.tokens)  # no special tokens


def test_a_row_decodes_the_same_alone_and_in_a_batch(loop):
    jobs = [job(3.0, 3), job(9.0, 4), job(20.0, 5, temperature=0.0)]
    alone = [loop.decode([_Row(j, 0)])[0].tokens for j in jobs]
    together = [r.tokens for r in loop.decode([_Row(j, 0) for j in jobs])]
    assert together == alone


def test_language_detection_and_prompt(loop):
    j = job(3.0, 6, language=None)
    code = loop.detect_language(j)
    assert code in loop.languages
    j.language = "fr"
    j.prompt_ids = [5, 6, 7]
    prompt, sot_at = loop.prompt(j)
    assert prompt[0] == loop.sot_prev and prompt[1:4] == [5, 6, 7] and sot_at == 4
    assert prompt[4:] == [loop.sot, loop.languages["fr"], loop.task_ids["transcribe"]]


def test_word_alignment_times_are_monotone_within_the_window(loop):
    j = job(5.0, 7, words=True)
    res = loop.decode([_Row(j, 0)])[0]
    text = [t for t in res.tokens if t < loop.eot]
    assert len(res.token_times) == len(text) + 1
    assert res.token_times == sorted(res.token_times)
    assert 0 <= res.token_times[0] and res.token_times[-1] <= 5.0 + 0.02


def test_batched_detection_keeps_the_first_windows_states_for_decoding(loop):
    a, b = job(3.0, 8, language=None), job(35.0, 9, language=None)
    b.windows = [(0, 30 * SAMPLE_RATE), (30 * SAMPLE_RATE, len(b.samples))]
    loop.detect_languages([a, b])
    assert a.language in loop.languages and a.first_states is not None
    assert loop.detect_language(job(3.0, 8, language=None)) == a.language  # alone or together
    kept = loop.decode([_Row(a, 0), _Row(b, 0), _Row(b, 1)])
    assert a.first_states is None and b.first_states is None  # used once, then dropped
    again = [job(3.0, 8, language=a.language), job(35.0, 9, language=b.language)]
    again[1].windows = b.windows
    fresh = loop.decode([_Row(again[0], 0), _Row(again[1], 0), _Row(again[1], 1)])
    assert [r.tokens for r in kept] == [r.tokens for r in fresh]


def test_sampling_rows_beside_greedy_ones_keep_the_rules(loop):
    torch.manual_seed(0)
    greedy, hot = job(6.0, 10), job(6.0, 10, temperature=1.0)
    hot.request_id = "hot"
    results = loop.decode([_Row(greedy, 0), _Row(hot, 0)])
    assert results[0].tokens == loop.decode([_Row(job(6.0, 10), 0)])[0].tokens  # greedy row unaffected
    tb = loop.timestamp_begin
    for r in results:
        stamps = [t for t in r.tokens if t >= tb]
        assert r.tokens[0] >= tb and stamps == sorted(stamps) and all(lp <= 0 for lp in r.logprobs)
    assert results[1].temperature == 1.0


def test_batches_take_windows_round_robin_over_requests():
    from collections import deque

    from server.engines.torch.whisper_loop import pick_batch

    long_file = TranscribeJob("long", np.zeros(1, np.int16), [(0, 1)] * 5)
    short = TranscribeJob("short", np.zeros(1, np.int16), [(0, 1)])
    prompted = TranscribeJob("prompted", np.zeros(1, np.int16), [(0, 1)], prompt_ids=[1, 2])
    queue = deque([_Row(long_file, i) for i in range(5)] + [_Row(short, 0), _Row(prompted, 0)])
    width = {"long": 3, "short": 3, "prompted": 6}
    rows, rest = pick_batch(queue, 3, lambda r: width[r.job.request_id])
    assert [(r.job.request_id, r.index) for r in rows] == [("long", 0), ("short", 0), ("long", 1)]
    assert [(r.job.request_id, r.index) for r in rest] == [("long", 2), ("long", 3), ("long", 4), ("prompted", 0)]
    assert pick_batch(deque(), 3, len) == ([], deque())
