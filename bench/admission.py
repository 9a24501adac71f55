"""The core's own refusals under a burst: how long a request that admission control
refuses waits for its RESOURCE_EXHAUSTED (the REST 429 `engine_overloaded`).

Two `genapi core` processes serve the tiny chat model with the default admission settings
(max_batch 32, max_queue 256: 288 requests held): one runs this checkout, the other the
checkout given with --before (the code to compare with). Rounds alternate between them:
each round sends --requests Generate calls at once over gRPC (3x the capacity by
default, `--tokens` each, EOS ignored), and the bench prints, per side, how many were
admitted and refused, the refused calls' time from send to status (p50, p90, max), the
admitted calls' time to `started`, and the before/after ratio of the refusal p50.

    .venv/bin/python bench/admission.py --before /path/to/old/checkout
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, grpc_ready, pct, running

sys.path.insert(0, str(ROOT))

from grpc_load import make_request  # noqa: E402

MODEL = "genapi-tiny-chat"


def write_config(root: Path) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(f'[[models]]\nname = "{MODEL}"\npath = "{root / "models" / "tiny-chat"}"\n')
    f.close()
    return Path(f.name)


def core_argv(root: Path, port: int) -> list[str]:
    """`genapi core` run from `root`'s directory, so that its own server/ and genapi/ run."""
    return [sys.executable, "-c", f"import os, sys; os.chdir({str(root)!r}); sys.path.insert(0, ''); "
            "from genapi.cli import main; main()",
            "core", "--config", str(write_config(root)), "--grpc-port", str(port)]


async def burst(target: str, n: int, tokens: int) -> dict[str, list[float]]:
    """n calls at once; seconds from each send to its outcome, by outcome."""
    import grpc

    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        await ch.channel_ready()
        requests = [make_request(MODEL, f"Request {i}: describe the harbour at night.", tokens) for i in range(n)]
        out: dict[str, list[float]] = {}

        async def one(req):
            t0 = time.perf_counter()
            try:
                async for ev in stub.Generate(req, timeout=600):
                    if ev.WhichOneof("event") == "started":
                        out.setdefault("started", []).append(time.perf_counter() - t0)
                kind = "finished"
            except grpc.aio.AioRpcError as e:
                kind = e.code().name
            out.setdefault(kind, []).append(time.perf_counter() - t0)

        await asyncio.gather(*(one(r) for r in requests))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    ap.add_argument("--after", type=Path, default=ROOT, help="checkout to measure (default: this one)")
    ap.add_argument("--requests", type=int, default=864, help="burst size (3x the default core capacity)")
    ap.add_argument("--tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sides = {"before": args.before.resolve(), "after": args.after.resolve()}
    ports = {side: free_port() for side in sides}
    results: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
    with contextlib.ExitStack() as stack:
        for side, root in sides.items():
            target = f"127.0.0.1:{ports[side]}"
            stack.enter_context(running(core_argv(root, ports[side]), grpc_ready(target),
                                        log_name=f"bench-admission-{side}.log"))
            asyncio.run(burst(target, 8, args.tokens))  # warm-up
        for r in range(args.rounds):
            for side in sides:
                got = asyncio.run(burst(f"127.0.0.1:{ports[side]}", args.requests, args.tokens))
                refused = got.get("RESOURCE_EXHAUSTED", [])
                print(f"round {r + 1} {side:>6}: " + ", ".join(f"{len(v)} {k}" for k, v in sorted(got.items())
                                                              if k != "started")
                      + f"; refusal p50 {pct(refused, 50) * 1000:.0f} ms", flush=True)
                for k, v in got.items():
                    results[side].setdefault(k, []).extend(v)
    ms = 1000
    for side, got in results.items():
        refused, started = got.get("RESOURCE_EXHAUSTED", []), got.get("started", [])
        print(f"{side:>6} ({sides[side]}): refused {len(refused)}: send -> 429 p50 {pct(refused, 50) * ms:.0f} ms, "
              f"p90 {pct(refused, 90) * ms:.0f} ms, max {max(refused, default=float('nan')) * ms:.0f} ms | "
              f"admitted {len(started)}: send -> started p50 {pct(started, 50) * ms:.0f} ms, "
              f"max {max(started, default=float('nan')) * ms:.0f} ms")
    before, after = (pct(results[s].get("RESOURCE_EXHAUSTED", []), 50) for s in ("before", "after"))
    print(f"refusal p50 before/after: {before / after:.1f}x")


if __name__ == "__main__":
    main()
