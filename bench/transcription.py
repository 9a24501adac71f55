"""Transcription: real-time factor through the shim vs. the engine in-process, and 4
concurrent requests vs. 4 sequential ones (window batching), in one run.

Checkpoint: the `bench` preset of tools/tiny_whisper.py (openai/whisper-tiny's geometry,
random weights, so every window decodes to the token limit), built into bench/.models/.
Audio: espeak-ng speech (a tone without it), repeated to the length asked for, as mp3.

Side A: the engine's own code in this process (server/engines/torch/whisper_loop.py:
decode the file with PyAV, plan the windows, detect the language, decode all windows of
the request as one batch). Side B: the same file through `genapi serve` (POST
/v1/audio/transcriptions, json), one request at a time. A and B alternate run by run; the
ratio is the median of the per-run ratios. RTF = processing seconds / audio seconds; the ratio B/A (target
<= 1.05) is the cost of the HTTP shim, gRPC and the engine process.

Then: 4 requests for a 30 s file (one window each) one after another vs. 4 at once
(their windows share one batch; target >= 1.5x the throughput), in alternating rounds;
the engine's batch count (GetEngineStats.forward_passes) shows the merging.

    .venv/bin/python bench/transcription.py [--device cpu|cuda] [--seconds 60] [--runs 3] [--threads 1]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, grpc_ready, http_ready, running

sys.path.insert(0, str(ROOT))

MODEL = "bench-whisper"
TEXT = ("The harbour was quiet in the morning, and the old clockmaker walked past the mill "
        "to the market, where travellers asked about the road to the coast.")


def bench_checkpoint() -> Path:
    from tools.tiny_whisper import build

    return build(ROOT / "bench" / ".models" / "whisper-bench", preset="bench")


def audio(seconds: float) -> bytes:
    import numpy as np

    from tests.integration.audio_support import RATE, encode, silence, speech

    unit = np.concatenate([speech(TEXT), silence(0.5)])
    n = int(seconds * RATE)
    return encode(np.tile(unit, n // len(unit) + 1)[:n], "mp3")


class InProcess:
    """The engine's own loop, in this process."""

    def __init__(self, path: Path, device: str, threads: int):
        from server.engines.torch.whisper_loop import WhisperLoop

        self.loop = WhisperLoop("bench", str(path), {"device": device, "max_batch": 8, "threads": threads})
        self.loop.load()

    def transcribe(self, data: bytes) -> float:
        from server.engines.torch.whisper_loop import TranscribeJob, _Row
        from server.engines.torch.whisper_windows import plan_windows
        from server.media.audio import decode_audio

        t = time.perf_counter()
        samples = decode_audio(data)
        windows = plan_windows(len(samples))
        job = TranscribeJob("r", samples, [(w.start, w.end) for w in windows])
        job.language = self.loop.detect_language(job)
        for i in range(0, len(windows), self.loop.max_batch):
            self.loop.decode([_Row(job, k) for k in range(i, min(len(windows), i + self.loop.max_batch))])
        return time.perf_counter() - t


def through_shim(base: str, data: bytes) -> float:
    import httpx

    t = time.perf_counter()
    r = httpx.post(f"{base}/v1/audio/transcriptions", data={"model": MODEL},
                   files={"file": ("a.mp3", data, "audio/mpeg")}, timeout=600)
    assert r.status_code == 200, r.text
    return time.perf_counter() - t


def batches(target: str) -> int:
    """Batches the engine decoded so far (GetEngineStats.forward_passes)."""
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as ch:
        return pb_grpc.AdminServiceStub(ch).GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0].forward_passes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the RTF audio")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads on both sides (1: on a shared 2-core machine more threads contend)")
    args = ap.parse_args()
    path = bench_checkpoint()
    long_file, short_file = audio(args.seconds), audio(30.0)
    a = InProcess(path, args.device, args.threads)
    a.transcribe(short_file)  # warm-up

    cfg = Path(tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False).name)
    cfg.write_text(f'[shim]\nworkers = 2\nthreads = 16\n[[models]]\nname = "{MODEL}"\ntask = "transcription"\n'
                   f'path = "{path}"\n[models.options]\ndevice = "{args.device}"\nmax_batch = 8\n'
                   f'threads = {args.threads}\n')
    port, gport = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    argv = [sys.executable, "-m", "genapi", "serve", "--config", str(cfg), "--port", str(port),
            "--grpc-port", str(gport)]
    with running(argv, lambda: grpc_ready(target)() and http_ready(f"{base}/health")(),
                 log_name="bench-transcription.log"):
        through_shim(base, short_file)  # warm-up
        # A and B alternate, run by run, so drift on a shared machine hits both sides.
        a_times, b_times = [], []
        for _ in range(args.runs):
            a_times.append(a.transcribe(long_file))
            b_times.append(through_shim(base, long_file))
        # Sequential and concurrent rounds alternate, so drift on a shared machine hits both.
        seq_times, conc_times, conc_batches = [], [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            for _ in range(4):
                through_shim(base, short_file)
            seq_times.append(time.perf_counter() - t)
            n0 = batches(target)
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: through_shim(base, short_file), range(4)))
            conc_times.append(time.perf_counter() - t)
            conc_batches.append(batches(target) - n0)
        ratios = [a / b for a, b in zip(seq_times, conc_times)]
    pair_ratios = [b / a_ for a_, b in zip(a_times, b_times)]
    print(f"{MODEL} (whisper-tiny geometry, random weights) on {args.device}, {args.threads} torch thread(s); "
          f"{args.seconds:g} s of audio ({len(long_file) // 1024} KiB mp3), {args.runs} alternating runs")
    print("A: in-process engine loop: " + ", ".join(f"{t:.2f} s" for t in a_times)
          + f"; RTF (median) {statistics.median(a_times) / args.seconds:.4f}")
    print("B: through the shim:       " + ", ".join(f"{t:.2f} s" for t in b_times)
          + f"; RTF (median) {statistics.median(b_times) / args.seconds:.4f}")
    print("ratio B/A per run: " + ", ".join(f"{r:.3f}" for r in pair_ratios)
          + f"; median {statistics.median(pair_ratios):.3f} (target <= 1.05)")
    print(f"4 x 30 s, sequential vs concurrent, {args.runs} alternating rounds: "
          + ", ".join(f"{a:.2f} s vs {b:.2f} s ({r:.2f}x, {n} batch(es))"
                      for a, b, r, n in zip(seq_times, conc_times, ratios, conc_batches)))
    print(f"throughput ratio, median {statistics.median(ratios):.2f}x (target >= 1.5x)")


if __name__ == "__main__":
    main()
