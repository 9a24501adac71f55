"""The transport's own CPU per streamed message: grpc.aio server, sync and aio clients.

What bench/frontend.py cannot separate: how much of the core's and the shim's CPU per
token is gRPC itself. A bare grpc.aio server (its own process) streams pre-built
GenerateResponse messages (a one-token text delta with usage, as the core sends) to every
open call, one message per call per step of `--step-ms` (one event-loop wake-up per step,
like the core's engine reader), and nothing else: no model, no mapping, no HTTP. The
same streams are read two ways, in one run:

  aio   grpc.aio, every call on one event loop (as bench/frontend.py's gRPC side);
  sync  the shim's way: the sync client on the shim's channel options
        (shim.grpc_client.channel_options), one thread per call iterating it;
        syncN (--sides aio,sync,sync8) the same over N channels, the calls spread evenly.

For each it prints the server's and this process's CPU per message (from /proc), which is
the floor of the core's and the shim's CPU per token at one event per token.

    .venv/bin/python bench/grpc_floor.py --streams 64 --messages 256
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time

from common import ROOT, free_port, grpc_ready, running

CLK = os.sysconf("SC_CLK_TCK")

SERVER = r'''
import asyncio, sys
import grpc
from grpc_health.v1 import health, health_pb2_grpc
from genapi.v1 import common_pb2, generation_service_pb2 as pb, generation_service_pb2_grpc as pb_grpc

STEP_S = float(sys.argv[2]) / 1000

class Paced(pb_grpc.GenerationServiceServicer):
    def __init__(self):
        self.step = None

    async def ticker(self):
        loop = asyncio.get_running_loop()
        self.step = loop.create_future()
        while True:
            await asyncio.sleep(STEP_S)
            done, self.step = self.step, loop.create_future()
            done.set_result(None)  # every waiting call wakes in this one loop iteration

    async def Generate(self, request, context):
        n = request.stopping.max_tokens
        usage = common_pb2.Usage(prompt_tokens=12, total_tokens=12)
        for i in range(n):
            await self.step
            usage.completion_tokens, usage.total_tokens = i + 1, 13 + i
            await context.write(pb.GenerateResponse(text=pb.TextDelta(text=" word"), usage=usage))

async def main():
    server = grpc.aio.server()
    servicer = Paced()
    pb_grpc.add_GenerationServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(sys.argv[1])
    await server.start()
    asyncio.get_running_loop().create_task(servicer.ticker())
    await server.wait_for_termination()

asyncio.run(main())
'''


def cpu_s(pid: int) -> float:
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def request(messages: int):
    from genapi.v1 import generation_service_pb2 as pb
    return pb.GenerateRequest(model="floor", stopping=pb.StoppingOptions(max_tokens=messages))


async def read_aio(target: str, streams: int, messages: int) -> int:
    import grpc

    from genapi.v1 import generation_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)

        async def one():
            return sum([1 async for _ in stub.Generate(request(messages))])
        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def read_sync(target: str, streams: int, messages: int, channels: int = 1) -> int:
    import grpc

    from genapi.v1 import generation_service_pb2_grpc as pb_grpc
    from shim.grpc_client import channel_options

    counts = [0] * streams
    chans = [grpc.insecure_channel(target, options=channel_options(64, False)) for _ in range(channels)]
    stubs = [pb_grpc.GenerationServiceStub(ch) for ch in chans]

    def one(i):
        counts[i] = sum(1 for _ in stubs[i % channels].Generate(request(messages)))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ch in chans:
        ch.close()
    return sum(counts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--messages", type=int, default=256, help="messages per stream")
    ap.add_argument("--step-ms", type=float, default=20.0, help="one message per stream per step")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sides", default="aio,sync", help="aio, sync, and syncN: the sync client over N channels")
    args = ap.parse_args()
    target = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-c", SERVER, target, str(args.step_ms)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(f"bench/grpc_floor.py: {args.streams} streams x {args.messages} messages, step {args.step_ms} ms")
    with running(argv, grpc_ready(target), env=env, log_name="bench-grpc-floor.log") as server:
        asyncio.run(read_aio(target, 4, 4))  # warm-up
        for _ in range(args.rounds):
            for side in args.sides.split(","):
                s0, c0, t0 = cpu_s(server.pid), time.process_time(), time.perf_counter()
                n = (asyncio.run(read_aio(target, args.streams, args.messages)) if side == "aio"
                     else read_sync(target, args.streams, args.messages, int(side[4:] or 1)))
                s1, c1, dt = cpu_s(server.pid), time.process_time(), time.perf_counter() - t0
                assert n == args.streams * args.messages, n
                print(f"  {side:4}: {n / dt:,.0f} msg/s; CPU µs/message: server (grpc.aio) "
                      f"{(s1 - s0) / n * 1e6:.1f}, client ({side}) {(c1 - c0) / n * 1e6:.1f}")


if __name__ == "__main__":
    main()
