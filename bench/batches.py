"""Interactive TTFT while a batch runs, and the batch's own rate.

Starts `genapi serve` once (the embedded tiny chat model unless --preset), then runs 4
interactive streaming clients (sequential streamed chats each, through the shim) twice:
alone, and while a batch of --lines chat lines runs. Prints the interactive TTFT p50/p90
of both phases, the ratio (target <= 1.5: batch lines run at lower priority), and the
batch's lines/s (created -> completed).

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
        f = c.post("/files", data={"purpose": "batch"}, files={"file": ("bench.jsonl", data.encode())}).json()
        return c.post("/batches", json={"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                        "completion_window": "24h"}).json()["id"]


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
        t0 = time.monotonic()
        while batch_state(base, batch_id)["status"] == "validating":
            time.sleep(0.2)
        during = asyncio.run(interactive(base, args.streams, args.seconds, args.tokens))
        state = batch_state(base, batch_id)
        mid_done = state["request_counts"]["completed"] + state["request_counts"]["failed"]
        while state["status"] not in ("completed", "failed", "expired", "cancelled"):
            time.sleep(0.5)
            state = batch_state(base, batch_id)
        elapsed = time.monotonic() - t0
    ms = 1000
    a50, b50 = pct(alone, 50), pct(during, 50)
    print(f"interactive alone:      TTFT p50 {a50 * ms:.1f} ms p90 {pct(alone, 90) * ms:.1f} ms ({len(alone)} requests)")
    print(f"interactive with batch: TTFT p50 {b50 * ms:.1f} ms p90 {pct(during, 90) * ms:.1f} ms ({len(during)} requests)")
    print(f"TTFT p50 ratio with/without batch: {b50 / a50:.2f} (target <= 1.5)")
    print(f"batch: {args.lines} lines {state['status']} in {elapsed:.1f} s = {args.lines / elapsed:.1f} lines/s "
          f"({mid_done} done during the {args.seconds:.0f} s interactive phase)")


if __name__ == "__main__":
    main()
