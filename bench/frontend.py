"""The path engine -> core -> shim -> client, without a model: CPU per streamed token.

Starts a real gRPC core whose chat engine is the benchmark-only `token_rate_engine`
(tokens at a set rate, realistic text, usage on every event; registered here, in the core
process this script starts, and nowhere else) and a real gunicorn shim in front of it.
At each level of concurrent streams it runs the same streams two ways, in one run:

  grpc  Generate streams straight to the core (grpc.aio): the core's ceiling;
  shim  the chat completions SSE endpoint through the shim (raw aiohttp client, default
        stream options, so obfuscation is on as with OpenAI);
  sync  (--sides grpc,sync,shim) Generate streams read the shim's way without HTTP: the
        sync grpc client, one thread per stream; its cost is the load generator's column.

For each side it prints tokens/s and events/s delivered (SSE data frames or gRPC messages:
they differ once deltas are coalesced) and, per process (each shim worker, the gunicorn
master, the core, its engine process, this load generator), CPU-seconds from /proc
divided by the tokens delivered, in microseconds per token. Those ratios hold on a noisy
2-core box where wall-clock figures do not. The last line per level is the ratio shim ÷
gRPC of tokens/s. `--nonstream N` also measures the shim's CPU per non-streamed request.

    .venv/bin/python bench/frontend.py                        # 1, 64, 256 streams, ~2 minutes
    .venv/bin/python bench/frontend.py --levels 1,64,256,1024 --tokens 200
    .venv/bin/python bench/frontend.py --step-ms 0            # engine as fast as the pipe: ceilings
    .venv/bin/python bench/frontend.py --py-spy /tmp/prof     # py-spy record of each server process
    .venv/bin/python bench/frontend.py --root /tmp/before     # another checkout's core and shim
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, free_port, grpc_ready, http_ready, pct, prompts, running

MODEL = "rate"
CLK = os.sysconf("SC_CLK_TCK")

# Run from the checkout `root` (for before/after runs): its genapi, server and shim.
IN_ROOT = "import os, sys; os.chdir({root!r}); sys.path.insert(0, os.getcwd()); "
# Registers the rate engine in place of the torch backend, in the core's process only.
CORE_MAIN = ("from genapi.config import Task; import server.registry as r; "
             "r.BACKENDS[(Task.CHAT, 'torch')] = 'bench.token_rate_engine:RateEngine'; "
             "from genapi.cli import main; main(sys.argv[1:])")
SHIM_MAIN = "from genapi.cli import main; main(sys.argv[1:])"


def write_config(workers: int, threads: int, max_batch: int) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    f.write(f"[shim]\nworkers = {workers}\nthreads = {threads}\n")
    f.write(f'[[models]]\nname = "{MODEL}"\npath = "{ROOT / "models" / "tiny-chat"}"\n'
            f"[models.options]\nmax_batch = {max_batch}\nmax_queue = {max_batch}\n")
    f.close()
    return Path(f.name)


# ---- processes and their CPU ----------------------------------------------------------

def _stat(pid: int) -> list[str]:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK


def children(pid: int) -> list[int]:
    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(_stat(int(p))[1]) == pid:
                out.append(int(p))
        except (OSError, IndexError):
            continue
    return sorted(out)


def cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


def server_processes(core_pid: int, shim_pid: int) -> dict[str, int]:
    """name -> pid: the core, its engine process, the gunicorn master and each worker."""
    procs = {"core": core_pid}
    for c in children(core_pid):
        if b"spawn_main" in cmdline(c):
            procs["engine"] = c
    procs["shim master"] = shim_pid
    for i, w in enumerate(children(shim_pid)):
        procs[f"shim worker {i}"] = w
    return procs


def cpu_snapshot(procs: dict[str, int]) -> dict[str, float]:
    snap = {name: cpu_s(pid) for name, pid in procs.items()}
    snap["load generator"] = time.process_time()
    return snap


# ---- load generators ------------------------------------------------------------------

def chat_body(prompt: str, tokens: int, stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": stream,
            "max_tokens": tokens}


async def sse_stream(session, url: str, prompt: str, tokens: int) -> tuple[int, int, float]:
    """One streamed completion; returns (completion tokens, SSE data frames, TTFT s). Counts
    frames in the raw bytes and parses only the last chunk (its running usage)."""
    t0 = time.perf_counter()
    ttft, frames, tail = 0.0, 0, b""
    async with session.post(url, json=chat_body(prompt, tokens, True)) as r:
        r.raise_for_status()
        async for data in r.content.iter_any():
            if not ttft:
                ttft = time.perf_counter() - t0
            frames += data.count(b"data: ")
            tail = (tail + data)[-8192:]
    frames -= 1  # data: [DONE]
    last = tail.rsplit(b"data: ", 2)[-2]
    return json.loads(last)["usage"]["completion_tokens"], frames, ttft


async def run_sse(base: str, streams: int, tokens: int) -> tuple[int, int, float, list[float]]:
    import aiohttp

    conn = aiohttp.TCPConnector(limit=streams)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=1800)) as session:
        url = f"{base}/v1/chat/completions"
        t0 = time.perf_counter()
        res = await asyncio.gather(*(sse_stream(session, url, p, tokens) for p in prompts(streams)))
        dt = time.perf_counter() - t0
    return sum(r[0] for r in res), sum(r[1] for r in res), dt, [r[2] for r in res]


async def run_grpc(target: str, streams: int, tokens: int) -> tuple[int, int, float, list[float]]:
    import grpc

    from genapi.v1 import content_pb2, generation_service_pb2 as pb, generation_service_pb2_grpc as pb_grpc

    async def one(stub, prompt):
        req = pb.GenerateRequest(model=MODEL, messages=[content_pb2.ChatMessage(
            role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=prompt)])],
            stopping=pb.StoppingOptions(max_tokens=tokens))
        t0 = time.perf_counter()
        ttft, n, last = 0.0, 0, None
        async for ev in stub.Generate(req):
            if not ttft:
                ttft = time.perf_counter() - t0
            n += 1
            last = ev
        return last.usage.completion_tokens, n, ttft

    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.GenerationServiceStub(ch)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one(stub, p) for p in prompts(streams)))
        dt = time.perf_counter() - t0
    return sum(r[0] for r in res), sum(r[1] for r in res), dt, [r[2] for r in res]


def grpc_sync(target: str, streams: int, tokens: int) -> tuple[int, int, float, list[float]]:
    """The shim's way of reading the core, without HTTP: the sync grpc client on its channel
    options, one thread per stream, each iterating its call (what a request thread does
    after the hand-off). Its CPU shows in the load generator's column."""
    import threading

    import grpc

    from genapi.v1 import content_pb2, generation_service_pb2 as pb, generation_service_pb2_grpc as pb_grpc
    from shim.grpc_client import channel_options

    res: list = [None] * streams
    channel = grpc.insecure_channel(target, options=channel_options(64, False))
    stub = pb_grpc.GenerationServiceStub(channel)

    def one(i, prompt):
        req = pb.GenerateRequest(model=MODEL, messages=[content_pb2.ChatMessage(
            role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=prompt)])],
            stopping=pb.StoppingOptions(max_tokens=tokens))
        t0 = time.perf_counter()
        ttft, n, last = 0.0, 0, None
        for ev in stub.Generate(req):
            if not ttft:
                ttft = time.perf_counter() - t0
            n += 1
            last = ev
        res[i] = (last.usage.completion_tokens, n, ttft)

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(prompts(streams))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    channel.close()
    return sum(r[0] for r in res), sum(r[1] for r in res), dt, [r[2] for r in res]


async def run_grpc_sync(target: str, streams: int, tokens: int) -> tuple[int, int, float, list[float]]:
    return await asyncio.to_thread(grpc_sync, target, streams, tokens)


async def run_nonstream(base: str, requests: int, concurrency: int, tokens: int) -> float:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def one(p):
            async with sem, session.post(f"{base}/v1/chat/completions", json=chat_body(p, tokens, False)) as r:
                assert r.status == 200, r.status
                return (await r.json())["usage"]["completion_tokens"]
        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(p) for p in prompts(requests)))
        assert all(g == tokens for g in got), got
        return time.perf_counter() - t0


# ---- report ---------------------------------------------------------------------------

def report(side: str, streams: int, tokens: int, events: int, dt: float, ttft: list[float],
           before: dict, after: dict) -> float:
    tps = tokens / dt
    print(f"  {side:4} {streams:5} streams: {tokens} tokens in {dt:.2f} s = {tps:,.0f} tok/s, "
          f"{events / dt:,.0f} events/s ({events / max(tokens, 1):.2f} events/token), "
          f"TTFT p50 {pct(ttft, 50) * 1000:.0f} ms")
    parts = []
    for name in after:
        us = (after[name] - before[name]) / max(tokens, 1) * 1e6
        parts.append(f"{name} {us:.1f}")
    shim = sum(after[n] - before[n] for n in after if n.startswith("shim worker"))
    print(f"       CPU µs/token: {', '.join(parts)}" + (f" | shim workers total {shim / tokens * 1e6:.1f}"
                                                        if side == "shim" else ""))
    return tps


WARM_UP_STREAMS = 4


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="1,64,256", help="concurrent streams per level (1,64,256,1024)")
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per stream")
    ap.add_argument("--step-ms", type=float, default=20.0,
                    help="engine step time: each running stream gets one token per step (0: as fast as possible)")
    ap.add_argument("--workers", type=int, default=1, help="gunicorn workers of the shim")
    ap.add_argument("--sides", default="grpc,shim", help="which sides to run, in this order per level (also "
                    "sync: the sync grpc client the shim uses, one thread per stream, in this process)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds of the sides per level")
    ap.add_argument("--nonstream", type=int, default=200, help="non-streamed requests for the shim's CPU per "
                    "request (0 to skip)")
    ap.add_argument("--py-spy", type=Path, default=None, help="record each server process with py-spy "
                    "(raw folded stacks) into this directory during the streaming levels (with --levels '': "
                    "during the non-streamed requests)")
    ap.add_argument("--root", type=Path, default=ROOT, help="checkout whose core and shim run (before/after; it "
                    "needs bench/token_rate_engine.py, its generated stubs and models/tiny-chat)")
    ap.add_argument("--summary", type=Path, default=None, help="also append the output lines to this file")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]  # "" : the non-streamed requests only
    sides = args.sides.split(",")
    most = max(levels + [WARM_UP_STREAMS, 16])
    cfg = write_config(args.workers, most + 16, most)
    port, gport = free_port(), free_port()
    base, target = f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    env = {**os.environ, "GENAPI_BENCH_STEP_MS": str(args.step_ms), "GENAPI_LOG_LEVEL": "warning"}
    root = str(args.root.resolve())
    core_argv = [sys.executable, "-c", IN_ROOT.format(root=root) + CORE_MAIN, "core", "--config", str(cfg),
                 "--grpc-port", str(gport)]
    shim_argv = [sys.executable, "-c", IN_ROOT.format(root=root) + SHIM_MAIN, "shim", "--config", str(cfg),
                 "--port", str(port), "--core", target]
    if args.summary:
        sys.stdout = Tee(sys.stdout, open(args.summary, "a"))
    print(f"bench/frontend.py ({root}): engine step {args.step_ms} ms, {args.tokens} tokens per stream, "
          f"{args.workers} shim worker(s), levels {levels}")
    with running(core_argv, grpc_ready(target), env=env, log_name="bench-frontend-core.log") as core, \
            running(shim_argv, http_ready(f"{base}/health"), env=env, log_name="bench-frontend-shim.log") as shim:
        procs = server_processes(core.pid, shim.pid)
        print("processes: " + ", ".join(f"{n} {p}" for n, p in procs.items()))
        asyncio.run(run_grpc(target, WARM_UP_STREAMS, 8))  # warm-up
        asyncio.run(run_sse(base, WARM_UP_STREAMS, 8))
        spies = start_py_spy(args.py_spy, procs) if args.py_spy else []
        for c in levels:
            print(f"{c} streams:")
            tps = {}
            for _ in range(args.rounds):
                for side in sides:
                    before = cpu_snapshot(procs)
                    run = (run_grpc(target, c, args.tokens) if side == "grpc" else
                           run_grpc_sync(target, c, args.tokens) if side == "sync" else run_sse(base, c, args.tokens))
                    tokens, events, dt, ttft = asyncio.run(run)
                    assert tokens == c * args.tokens, (tokens, c * args.tokens)
                    tps.setdefault(side, []).append(report(side, c, tokens, events, dt, ttft, before,
                                                           cpu_snapshot(procs)))
            for side in ("shim", "sync"):
                if "grpc" in tps and side in tps:
                    g, s = (sum(tps[k]) / len(tps[k]) for k in ("grpc", side))
                    print(f"  ratio {side} ÷ gRPC tok/s at {c} streams: {s / g:.3f}")
        if levels:
            stop_py_spy(spies)
        if args.nonstream:
            before = cpu_snapshot(procs)
            dt = asyncio.run(run_nonstream(base, args.nonstream, 16, 16))
            after = cpu_snapshot(procs)
            shim_s = sum(after[n] - before[n] for n in after if n.startswith("shim worker"))
            core_s = after["core"] - before["core"]
            print(f"non-streamed: {args.nonstream} requests of 16 tokens, 16 at a time, in {dt:.2f} s: "
                  f"shim workers {shim_s / args.nonstream * 1000:.2f} ms CPU per request, "
                  f"core {core_s / args.nonstream * 1000:.2f} ms")
        stop_py_spy(spies)  # (still recording without streaming levels: the non-streamed requests)


def start_py_spy(out: Path, procs: dict[str, int]) -> list[subprocess.Popen]:
    out.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    spies = []
    for name, pid in procs.items():
        if name == "shim master":
            continue
        path = out / (name.replace(" ", "-") + ".txt")
        spies.append(subprocess.Popen([str(spy), "record", "-p", str(pid), "-f", "raw", "-r", "100", "-o", str(path),
                                       "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1)  # attached
    return spies


def stop_py_spy(spies: list[subprocess.Popen]) -> None:
    for p in spies:  # py-spy writes its file on SIGINT
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            p.wait(60)


class Tee:
    def __init__(self, *files):
        self.files = files

    def write(self, s):
        for f in self.files:
            f.write(s)
            f.flush()

    def flush(self):
        for f in self.files:
            f.flush()


if __name__ == "__main__":
    main()
