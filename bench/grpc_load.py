"""Drives concurrent Generate streams straight at the gRPC core and times them."""
from __future__ import annotations

import asyncio
import time

import grpc

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc


def make_request(model: str, prompt: str, max_tokens: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=model,
        messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=prompt)])],
        sampling=pb.SamplingOptions(temperature=0.0),
        stopping=pb.StoppingOptions(max_tokens=max_tokens, ignore_eos=True),
    )


async def one_stream(stub, req) -> tuple[int, float, list[float]]:
    """Returns (tokens, ttft_s, inter-token gaps)."""
    t0 = time.perf_counter()
    ttft, last, gaps, tokens = None, None, [], 0
    async for ev in stub.Generate(req):
        kind = ev.WhichOneof("event")
        if kind == "text" or kind == "finished":
            now = time.perf_counter()
            if ttft is None:
                ttft = now - t0
            elif last is not None:
                gaps.append(now - last)
            last = now
        tokens = ev.usage.completion_tokens
    return tokens, ttft or 0.0, gaps


async def run(target: str, model: str, prompts: list[str], concurrency: int, max_tokens: int):
    """All prompts, `concurrency` at a time. Returns (tokens, seconds, ttfts, gaps)."""
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        sem = asyncio.Semaphore(concurrency)
        results = []

        async def task(p):
            async with sem:
                results.append(await one_stream(stub, make_request(model, p, max_tokens)))

        t0 = time.perf_counter()
        await asyncio.gather(*(task(p) for p in prompts))
        dt = time.perf_counter() - t0
    return sum(r[0] for r in results), dt, [r[1] for r in results], [g for r in results for g in r[2]]
