"""Interactive TTFT while a batch runs, and the batch's own rate.

Starts `genapi serve` once (the embedded tiny chat model), then runs 4 interactive
streaming clients (sequential streamed chats each, through the shim) for --seconds
alone, then for --seconds while a batch of --lines chat lines runs, then lets the batch
run --seconds alone and cancels what is left (so the run is bounded on any machine).
Prints the interactive TTFT p50/p90 of both phases, their ratio (target <= 1.5: batch
lines run at lower priority), and the batch's lines/s with and without interactive load.

    .venv/bin/python bench/batches.py [--lines 2000] [--streams 4] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from common import ROOT, free_port, http_ready, pct, prompts, running

MODEL = "genapi-tiny-chat"


async def stream_once(client: httpx.AsyncClient, prompt: str, tokens: int) -> float:
    """One streamed chat; returns its TTFT (first content frame) in seconds."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "max_tokens": tokens, "temperature": 0}
    t0 = time.perf_counter()
    async with client.stream("POST", "/chat/completions", json=body) as r:
        r.raise_for_status()
        frames = 0
        async for line in r.aiter_lines():
            if line.startswith("data: ") and not line.startswith("data: [DONE]"):
                frames += 1
                if frames == 2:  # after the role frame
                    ttft = time.perf_counter() - t0
        return ttft


async def interactive(base: str, streams: int, seconds: float, tokens: int) -> list[float]:
    ttfts: list[float] = []
    texts = prompts(64)
    deadline = time.monotonic() + seconds

    async def one(i: int):
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            n = 0
            while time.monotonic() < deadline:
                ttfts.append(await stream_once(c, texts[(i * 16 + n) % len(texts)], tokens))
                n += 1
    await asyncio.gather(*(one(i) for i in range(streams)))
    return ttfts


def submit_batch(base: str, lines: int, tokens: int) -> str:
    texts = prompts(lines)
    data = "".join(json.dumps({"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": MODEL, "messages": [{"role": "user", "content": texts[i]}],
                                        "max_tokens": tokens, "temperature": 0}}) + "\n" for i in range(lines))
    with httpx.Client(base_url=base, timeout=120) as c:
        f = checked(c.post("/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", data.encode())}))
        return checked(c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                "completion_window": "24h"}))["id"]


def checked(resp: httpx.Response) -> dict:
    if resp.status_code != 200:
        raise SystemExit(f"{resp.request.method} {resp.request.url}: {resp.status_code} {resp.text[:500]}")
    return resp.json()


def batch_state(base: str, batch_id: str) -> dict:
    return httpx.get(f"{base}/batches/{batch_id}", timeout=60).json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30, help="length of each interactive phase")
    ap.add_argument("--tokens", type=int, default=16, help="max_tokens of interactive requests and batch lines")
    ap.add_argument("--concurrency", type=int, default=4, help="[batches] concurrency")
    args = ap.parse_args()

    port, grpc_port = free_port(), free_port()
    cfg = Path(tempfile.mkdtemp()) / "bench.toml"
    cfg.write_text(f'[shim]\nworkers = 2\nthreads = 64\n[batches]\nconcurrency = {args.concurrency}\n'
                   f'[[models]]\nname = "{MODEL}"\npath = "{ROOT / "models" / "tiny-chat"}"\n')
    base = f"http://127.0.0.1:{port}/v1"
    argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "genapi", "serve", "--config", str(cfg),
            "--port", str(port), "--grpc-port", str(grpc_port)]
    with running(argv, http_ready(f"http://127.0.0.1:{port}/health"), log_name="bench-batches.log"):
        asyncio.run(interactive(base, args.streams, 3, args.tokens))  # warm-up
        alone = asyncio.run(interactive(base, args.streams, args.seconds, args.tokens))
        batch_id = submit_batch(base, args.lines, args.tokens)
        while batch_state(base, batch_id)["status"] == "validating":
            time.sleep(0.2)
        n0, t0 = done_lines(base, batch_id), time.monotonic()
        during = asyncio.run(interactive(base, args.streams, args.seconds, args.tokens))
        n1, t1 = done_lines(base, batch_id), time.monotonic()
        time.sleep(args.seconds)
        n2, t2 = done_lines(base, batch_id), time.monotonic()
        httpx.post(f"{base}/batches/{batch_id}/cancel", timeout=60)
    ms = 1000
    a50, b50 = pct(alone, 50), pct(during, 50)
    print(f"interactive alone:      TTFT p50 {a50 * ms:.1f} ms p90 {pct(alone, 90) * ms:.1f} ms ({len(alone)} requests)")
    print(f"interactive with batch: TTFT p50 {b50 * ms:.1f} ms p90 {pct(during, 90) * ms:.1f} ms ({len(during)} requests)")
    print(f"TTFT p50 ratio with/without batch: {b50 / a50:.2f} (target <= 1.5)")
    print(f"batch lines/s: {(n1 - n0) / (t1 - t0):.2f} beside {args.streams} interactive streams, "
          f"{(n2 - n1) / (t2 - t1):.2f} alone ({n2} of {args.lines} lines done, concurrency {args.concurrency})")


def done_lines(base: str, batch_id: str) -> int:
    counts = batch_state(base, batch_id)["request_counts"]
    return counts["completed"] + counts["failed"]

if __name__ == "__main__":
    main()
