"""Grammar-constrained decoding vs. free decoding, on the same running core.

Starts a gRPC core once, then streams the same requests (distinct prompts and seeds,
temperature 1) through GenerationService.Generate at 8 concurrent streams: first with a
`json_schema` response_format (each ends when its grammar does), then unconstrained with
max_tokens set to the token count each constrained answer had and EOS ignored, so both
sides generate exactly the same number of tokens per request. The constrained side runs
before and after the unconstrained one (same seeds: the same answers; the mean of both
counts). Prints tokens/s of both and the ratio (target >= 0.8).

    .venv/bin/python bench/structured.py [--requests 64] [--concurrency 8] [--device cpu]
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from common import ROOT, bench_model, free_port, grpc_ready, mean, prompts, running, write_config

sys.path.insert(0, str(ROOT))

SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 24},
        "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
        "genre": {"enum": ["drama", "comedy", "horror", "documentary"]},
        "cast": {"type": "array", "maxItems": 4,
                 "items": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                                            "age": {"type": "integer", "minimum": 0,
                                                                    "maximum": 99}},
                           "required": ["name", "age"]}},
    },
    "required": ["title", "year", "genre", "cast"],
}


def request(text: str, seed: int, max_tokens: int, constrained: bool):
    from google.protobuf import struct_pb2

    from genapi.v1 import content_pb2
    from genapi.v1 import generation_service_pb2 as pb

    req = pb.GenerateRequest(
        model="bench", messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                                         content=[content_pb2.ContentPart(text=text)])],
        sampling=pb.SamplingOptions(temperature=1.0, seed=seed),
        stopping=pb.StoppingOptions(max_tokens=max_tokens, ignore_eos=not constrained))
    if constrained:
        schema = struct_pb2.Struct()
        schema.update(SCHEMA)
        req.response_format.CopyFrom(content_pb2.ResponseFormat(
            type=content_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="movie", schema=schema))
    return req


async def run(target: str, reqs: list, concurrency: int) -> tuple[list[int], float]:
    """Streams every request, `concurrency` at a time; (completion tokens each, seconds)."""
    import grpc

    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    sem = asyncio.Semaphore(concurrency)
    tokens = [0] * len(reqs)
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)

        async def one(i, req):
            async with sem:
                async for ev in stub.Generate(req):
                    tokens[i] = ev.usage.completion_tokens
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, r) for i, r in enumerate(reqs)))
        return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=256, help="cap of the constrained answers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", help="checkpoint directory (default: the `bench` preset, built on first use)")
    args = ap.parse_args()

    grpc_port = free_port()
    target = f"127.0.0.1:{grpc_port}"
    model = Path(args.model).resolve() if args.model else bench_model("bench")
    config = write_config(model, args.device, max_batch=max(32, args.concurrency))
    texts = prompts(args.requests)
    seeds = range(args.requests)
    argv = [sys.executable, "-m", "genapi", "core", "--config", str(config), "--grpc-port", str(grpc_port)]
    with running(argv, grpc_ready(target), log_name="bench-structured.log"):
        warm = [request(t, s, args.max_tokens, True) for t, s in zip(texts[:8], seeds)]
        asyncio.run(run(target, warm, args.concurrency))  # compiles the grammar, warms the model
        constrained = [request(t, s, args.max_tokens, True) for t, s in zip(texts, seeds)]
        c_rates = []
        for side in ("constrained", "free", "constrained"):
            if side == "free":
                counts, dt = asyncio.run(run(target, [request(t, s, n, False) for t, s, n in zip(texts, seeds, lengths)],
                                             args.concurrency))
                f_rate = sum(counts) / dt
                print(f"unconstrained: {sum(counts)} tokens in {dt:.2f}s = {f_rate:.1f} tok/s")
                continue
            lengths, dt = asyncio.run(run(target, constrained, args.concurrency))
            c_rates.append(sum(lengths) / dt)
            print(f"json_schema  : {sum(lengths)} tokens in {dt:.2f}s = {c_rates[-1]:.1f} tok/s "
                  f"(answers of {min(lengths)}..{max(lengths)} tokens)")
    print(f"ratio constrained (mean of before/after) / unconstrained at {args.concurrency} streams: "
          f"{mean(c_rates) / f_rate:.2f} (target >= 0.8)")


if __name__ == "__main__":
    main()
