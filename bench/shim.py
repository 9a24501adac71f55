"""REST shim vs. direct gRPC on the same running core.

Starts `genapi serve` once, then streams the same requests (greedy, EOS ignored) at 1, 8
and 32 concurrent streams two ways: SSE through the shim with a raw HTTP client (aiohttp),
and Generate streams straight to the core. Prints tokens/s for both, the ratio, and the
TTFT the shim adds.

    .venv/bin/python bench/shim.py
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

from common import ROOT, bench_model, free_port, grpc_ready, http_ready, pct, prompts, running, write_config

sys.path.insert(0, str(ROOT))


async def sse_stream(session, url: str, prompt: str, tokens: int):
    """One streamed completion; returns (completion tokens, TTFT). Parses as little as
    possible (the load generator shares the machine with the server): TTFT is the first
    frame after the role frame, usage comes from the last chunk's running usage."""
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "stream": True,
            "temperature": 0, "max_tokens": tokens, "ignore_eos": True}
    t0 = time.perf_counter()
    ttft, frames, last = None, 0, b""
    async with session.post(url, json=body) as r:
        r.raise_for_status()
        async for line in r.content:
            if not line.startswith(b"data: "):
                continue
            if line.startswith(b"data: [DONE]"):
                break
            frames += 1
            if frames == 2:
                ttft = time.perf_counter() - t0
            last = line
    return json.loads(last[6:])["usage"]["completion_tokens"], ttft or 0.0


async def run_http(base: str, texts: list[str], concurrency: int, tokens: int):
    sem = asyncio.Semaphore(concurrency)
    results = []
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        async def task(p):
            async with sem:
                results.append(await sse_stream(session, f"{base}/v1/chat/completions", p, tokens))
        t0 = time.perf_counter()
        await asyncio.gather(*(task(p) for p in texts))
        dt = time.perf_counter() - t0
    return sum(r[0] for r in results), dt, [r[1] for r in results]


async def idle_ttft(base: str, target: str, samples: int, tokens: int = 4):
    """TTFT of one request at a time on an idle core, shim and gRPC alternating; returns
    the two TTFT lists and the per-pair differences. With nothing else running this is
    the latency the shim itself adds, free of how concurrent arrivals share prefills."""
    from grpc_load import make_request, one_stream
    import grpc
    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    h, g = [], []
    url = f"{base}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        texts = prompts(samples)
        for i in range(samples + 3):  # the first 3 pairs warm up connections
            p = texts[i % samples]
            ht = (await sse_stream(session, url, p, tokens))[1]
            gt = (await one_stream(stub, make_request("bench", p, tokens)))[1]
            if i >= 3:
                h.append(ht)
                g.append(gt)
    return h, g, [a - b for a, b in zip(h, g)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per level (noise control)")
    ap.add_argument("--idle-samples", type=int, default=40, help="one-at-a-time TTFT pairs (0 to skip)")
    args = ap.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model_dir = bench_model(args.preset, dtype)
    levels = [int(x) for x in args.levels.split(",")]
    cfg = write_config(model_dir, args.device, max_batch=max(levels), dtype=dtype)
    port, gport = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    argv = [sys.executable, "-m", "genapi", "serve", "--config", str(cfg), "--port", str(port),
            "--grpc-port", str(gport)]
    from grpc_load import run as run_grpc

    print(f"model {model_dir.name}, device {args.device}, {args.tokens} tokens per request, EOS ignored")
    with running(argv, lambda: grpc_ready(target)() and http_ready(f"{base}/health")(), log_name="bench-shim.log"):
        asyncio.run(run_http(base, prompts(4), 4, 8))  # warm-up both paths
        asyncio.run(run_grpc(target, "bench", prompts(4), 4, 8))
        if args.idle_samples:
            h, g, d = asyncio.run(idle_ttft(base, target, args.idle_samples))
            print(f"idle, one request at a time ({len(d)} pairs): TTFT p50 shim {pct(h, 50) * 1000:.1f} ms, "
                  f"gRPC {pct(g, 50) * 1000:.1f} ms; shim adds p50 {pct(d, 50) * 1000:+.1f} ms "
                  f"(p10 {pct(d, 10) * 1000:+.1f}, p90 {pct(d, 90) * 1000:+.1f})")
        for c in levels:
            texts = prompts(max(2 * c, 4))
            h_tok = h_s = g_tok = g_s = 0.0
            h_ttft, g_ttft = [], []
            for _ in range(args.rounds):  # alternate the two sides so drift hits both
                t, s, tt = asyncio.run(run_http(base, texts, c, args.tokens))
                h_tok, h_s, h_ttft = h_tok + t, h_s + s, h_ttft + tt
                t, s, tt, _ = asyncio.run(run_grpc(target, "bench", texts, c, args.tokens))
                g_tok, g_s, g_ttft = g_tok + t, g_s + s, g_ttft + tt
            h_tps, g_tps = h_tok / h_s, g_tok / g_s
            print(f"{c:>2} streams: shim {h_tps:.1f} tok/s, gRPC {g_tps:.1f} tok/s, ratio {h_tps / g_tps:.3f} | "
                  f"TTFT p50 shim {pct(h_ttft, 50) * 1000:.1f} ms, gRPC {pct(g_ttft, 50) * 1000:.1f} ms, "
                  f"added {(pct(h_ttft, 50) - pct(g_ttft, 50)) * 1000:+.1f} ms")


if __name__ == "__main__":
    main()
