"""Reliability plan L3: a flooding key does not slow the other keys down.

Starts `genapi serve` once with two keys: `calm` (no limit) and `flood` (rpm 30, so
nearly all of its requests are refused with 429 at admission). Side A: the calm key's
non-streamed requests alone, at `--concurrency` streams. Side B: the same load while the
flood key sends requests as fast as `--flood-concurrency` clients can. Prints the calm
key's latency p50/p99 on both sides, their ratio (target: p99 within +-10 %), how many
flood requests were refused, and the server's CPU time per refused request (all its
processes, from /proc: a ratio that holds on a noisy machine where latencies do not).

With `--pin` (the default where there are 2 CPUs or more) the engine process (the model's
forward passes, which a GPU does in production) runs alone on CPU 0, and everything else
(core gRPC process, shim workers, this load generator) on the others: the flood is then
paid where it is in production, on the frontend's CPUs, and what L3 compares is whether it
reaches the other keys' generations.

    .venv/bin/python bench/limits.py
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time

import httpx

import os

from common import ROOT, bench_model, free_port, http_ready, pct, pin, process_tree, prompts, running, tree_cpu_seconds, write_config

sys.path.insert(0, str(ROOT))

CALM, FLOOD = "sk-bench-calm-0123456789", "sk-bench-flood-0123456789"


def add_keys(config) -> None:
    digest = lambda k: hashlib.sha256(k.encode()).hexdigest()  # noqa: E731
    text = config.read_text()
    config.write_text(text +
                      f'[[auth.keys]]\nname = "calm"\nsha256 = "{digest(CALM)}"\n'
                      f'[[auth.keys]]\nname = "flood"\nsha256 = "{digest(FLOOD)}"\nrpm = 30\n')


async def calm_load(base: str, texts: list[str], concurrency: int, tokens: int) -> list[float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=600, headers={"Authorization": f"Bearer {CALM}"},
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def one(p):
            async with sem:
                t0 = time.perf_counter()
                r = await client.post("/v1/chat/completions", json={
                    "model": "bench", "messages": [{"role": "user", "content": p}], "max_tokens": tokens,
                    "temperature": 0, "ignore_eos": True})
                r.raise_for_status()
                latencies.append(time.perf_counter() - t0)
        await asyncio.gather(*(one(p) for p in texts))
    return latencies


async def flood_load(base: str, concurrency: int, stop: asyncio.Event) -> dict[int, int]:
    codes: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=base, timeout=600, headers={"Authorization": f"Bearer {FLOOD}"},
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while not stop.is_set():
                r = await client.post("/v1/chat/completions", json={
                    "model": "bench", "messages": [{"role": "user", "content": "flood"}], "max_tokens": 16})
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return codes


async def side_b(base, texts, args):
    stop = asyncio.Event()
    flood = asyncio.create_task(flood_load(base, args.flood_concurrency, stop))
    await asyncio.sleep(1)  # the flood is running before the measured load starts
    latencies = await calm_load(base, texts, args.concurrency, args.tokens)
    stop.set()
    return latencies, await flood


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--flood-concurrency", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    args = ap.parse_args()
    model = bench_model("bench")
    config = write_config(model, "cpu")
    add_keys(config)
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "genapi", "serve", "--config", str(config), "--port", str(port),
            "--grpc-port", str(grpc_port)]
    with running(argv, http_ready(f"{base}/health"), log_name="bench-limits.log") as proc:
        if args.pin:
            frontend = set(range(1, os.cpu_count() or 2))
            for pid, (_, cmd) in process_tree(proc.pid).items():
                pin(pid, {0} if b"spawn_main" in cmd else frontend)
            pin(os.getpid(), frontend)
        texts = prompts(args.requests)
        asyncio.run(calm_load(base, texts[:8], args.concurrency, args.tokens))  # warm-up
        cpu0 = tree_cpu_seconds(proc.pid)
        a1 = asyncio.run(calm_load(base, texts, args.concurrency, args.tokens))
        cpu1 = tree_cpu_seconds(proc.pid)
        b, codes = asyncio.run(side_b(base, texts, args))
        cpu2 = tree_cpu_seconds(proc.pid)
        a2 = asyncio.run(calm_load(base, texts, args.concurrency, args.tokens))
    a = a1 + a2
    ms = 1000
    refused = codes.get(429, 0)
    # side B's server CPU less what side A showed the calm load costs, per refused request
    # (the flood's few accepted generations are counted in it too)
    flood_cpu = (cpu2 - cpu1) - (cpu1 - cpu0)
    print(f"A calm key alone (before+after): p50 {pct(a, 50) * ms:.0f} ms  p99 {pct(a, 99) * ms:.0f} ms")
    print(f"B calm key during the flood:     p50 {pct(b, 50) * ms:.0f} ms  p99 {pct(b, 99) * ms:.0f} ms")
    print(f"flood key responses: {dict(sorted(codes.items()))}")
    print(f"server CPU: calm load alone {cpu1 - cpu0:.2f} s, with the flood {cpu2 - cpu1:.2f} s; "
          f"per refused flood request {flood_cpu / max(1, refused) * 1e6:.0f} us (pinned: {args.pin})")
    print(f"ratio B/A: p50 {pct(b, 50) / pct(a, 50):.2f}  p99 {pct(b, 99) / pct(a, 99):.2f}  (target p99 <= 1.10)")


if __name__ == "__main__":
    main()
