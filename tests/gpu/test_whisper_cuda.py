"""The Whisper engine's decoding on CUDA (skipped without a CUDA device): the tiny Whisper
in float32 on the GPU decodes the same tokens as on the CPU, in float16 it runs through
every step (batch, word alignment), and its times stay within the window."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

from server.engines.torch.whisper_loop import TranscribeJob, WhisperLoop, _Row  # noqa: E402
from server.engines.torch.whisper_windows import SAMPLE_RATE  # noqa: E402

from ..conftest import ROOT  # noqa: E402

TINY_WHISPER = str(ROOT / "models" / "tiny-whisper")


def jobs(**kw) -> list[TranscribeJob]:
    out = []
    for seed, seconds in ((1, 4.0), (2, 30.0), (3, 12.0)):
        x = (np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE)) * 3000).astype(np.int16)
        out.append(TranscribeJob(f"r{seed}", x, [(0, len(x))], language="en", **kw))
    return out


def test_float32_on_cuda_decodes_as_on_cpu():
    cpu = WhisperLoop("cpu", TINY_WHISPER, {"device": "cpu", "dtype": "float32"})
    gpu = WhisperLoop("gpu", TINY_WHISPER, {"device": "cuda", "dtype": "float32"})
    cpu.load(), gpu.load()
    a = [r.tokens for r in cpu.decode([_Row(j, 0) for j in jobs()])]
    b = [r.tokens for r in gpu.decode([_Row(j, 0) for j in jobs()])]
    same = sum(x[:16] == y[:16] for x, y in zip(a, b))
    assert same >= 2, (a, b)  # float32 kernels differ slightly; greedy paths agree at the start


def test_float16_batch_with_words():
    gpu = WhisperLoop("gpu", TINY_WHISPER, {"device": "cuda"})  # auto: float16
    gpu.load()
    results = gpu.decode([_Row(j, 0) for j in jobs(words=True)])
    for r, seconds in zip(results, (4.0, 30.0, 12.0)):
        text = [t for t in r.tokens if t < gpu.eot]
        assert len(r.token_times) == len(text) + 1 and r.token_times == sorted(r.token_times)
        assert r.token_times[-1] <= seconds + 0.02 and 0 <= r.no_speech_prob <= 1
