"""Chunked prefill vs whole-prompt prefill: how much a long prompt stalls running streams.

One core serves the same checkpoint twice: `whole` (prefill_chunk = 0, a prompt is
prefilled in one pass) and `chunked` (prefill_chunk = --chunk). For each, --streams
short requests decode while one long prompt (~1500 tokens) arrives; the bench prints the
running streams' inter-token gaps (p50, p99, max), the long request's TTFT, total
tokens/s, and the whole/chunked ratio of the worst gap. Sides alternate for --rounds.

    .venv/bin/python bench/chunked_prefill.py
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from common import ROOT, bench_model, free_port, grpc_ready, pct, prompts, running, write_config

sys.path.insert(0, str(ROOT))

from grpc_load import make_request, one_stream  # noqa: E402


async def one_round(target: str, model: str, streams: int, tokens: int, long_prompt: str):
    """Returns (running streams' gaps, long request TTFT, tokens, seconds)."""
    import grpc

    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        t0 = time.perf_counter()
        running = [asyncio.create_task(one_stream(stub, make_request(model, p, tokens)))
                   for p in prompts(streams)]
        await asyncio.sleep(0.5)  # the short streams are decoding
        long_tokens, long_ttft, _ = await one_stream(stub, make_request(model, long_prompt, 4))
        results = await asyncio.gather(*running)
        dt = time.perf_counter() - t0
    gaps = [g for r in results for g in r[2]]
    return gaps, long_ttft, sum(r[0] for r in results) + long_tokens, dt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=160, help="completion tokens of each running stream")
    ap.add_argument("--long-words", type=int, default=1100, help="words in the long prompt (~1.4 tokens each)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    model_dir = bench_model(args.preset, dtype)
    cfg = write_config(model_dir, args.device, max_batch=16, dtype=dtype,
                       models={"whole": {"prefill_chunk": 0}, "chunked": {"prefill_chunk": args.chunk}})
    port = free_port()
    target = f"127.0.0.1:{port}"
    long_prompt = prompts(1, words=args.long_words)[0]
    argv = [sys.executable, "-m", "genapi", "core", "--config", str(cfg), "--grpc-port", str(port)]
    print(f"model {model_dir.name}, device {args.device}, {args.streams} running streams x {args.tokens} tokens, "
          f"one long prompt of {args.long_words} words, chunk {args.chunk}")
    with running(argv, grpc_ready(target), log_name="bench-chunked.log"):
        for side in ("whole", "chunked"):  # warm-up
            asyncio.run(one_round(target, side, 2, 8, prompts(1)[0]))
        res = {"whole": ([], [], 0, 0.0), "chunked": ([], [], 0, 0.0)}
        for _ in range(args.rounds):
            for side in ("whole", "chunked"):
                gaps, ttft, toks, dt = asyncio.run(one_round(target, side, args.streams, args.tokens, long_prompt))
                g, t, n, s = res[side]
                res[side] = (g + gaps, t + [ttft], n + toks, s + dt)
        ms = 1000
        for side, (gaps, ttfts, toks, secs) in res.items():
            print(f"{side:>7}: running streams' gap p50 {pct(gaps, 50) * ms:.1f} ms, p99 {pct(gaps, 99) * ms:.1f} ms, "
                  f"max {max(gaps) * ms:.1f} ms | long prompt TTFT p50 {pct(ttfts, 50) * ms:.0f} ms | "
                  f"{toks / secs:.1f} tok/s")
        worst = {side: max(r[0]) for side, r in res.items()}
        print(f"worst gap whole/chunked: {worst['whole'] / worst['chunked']:.2f}x")


if __name__ == "__main__":
    main()
