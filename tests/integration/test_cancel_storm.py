"""Cancel storms (reliability plan C2, issue 18 item 1): many callers leaving at random
moments, over gRPC and over REST, five rounds each.

Every way a caller can leave must abort its engine request exactly once and free its
slots at the next step: gRPC cancel, gRPC deadline, a closed channel; an HTTP client
closing or resetting its socket, the openai SDK timing out or closing its stream; while
queued (the batch holds 16 sequences, 200 callers come at once), at `started`, between
tokens, during a chunked prefill (long prompts, `prefill_chunk = 32`), for n > 1,
streaming or not. After each round the engine is idle again within SETTLE_S
(GetEngineStats), nothing ran to its end, and `requests_aborted` equals the number of
requests that reached the engine, which the core logs as `request <id> model=...`
(callers that left before their request got that far leave nothing to abort).
"""
from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import time

import grpc
import pytest

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc, content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, Service, wait_until

CALLERS = 200
ROUNDS = 5
MAX_BATCH = 16
MAX_TOKENS = 1500  # far more than any caller stays for: nothing finishes on its own
SETTLE_S = 2.0  # idle again this long after the last caller left
LEAVE_BY_S = 1.5  # every caller leaves at its moment or by its own random timer below this
SHORT = "Tell me a story about the sea."
LONG = " ".join(f"harbour{i % 37} lights" for i in range(40))  # ~200 tokens: several prefill chunks


@pytest.fixture(scope="module")
def storm(tmp_path_factory):
    # Shim threads sized from the model (GENAPI_THREADS=0: auto), so the HTTP callers reach
    # the core instead of being refused at the front; one torch thread keeps the engine
    # from starving everything else on a small machine.
    svc = Service(tmp_path_factory.mktemp("storm"), "storm", max_batch=MAX_BATCH,
                  model_options="prefill_chunk = 32\nthreads = 1\n", env={"GENAPI_THREADS": "0"}).start()
    channel = grpc.insecure_channel(svc.grpc_target)
    admin = admin_service_pb2_grpc.AdminServiceStub(channel)
    svc.stats = lambda: admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=MODEL)).engines[0]
    yield svc
    channel.close()
    svc.stop()


def idle(s) -> bool:
    return (s.active_sequences, s.queued_requests, s.cache_slots_used, s.budget_tokens_used) == (0, 0, 0, 0)


def reached_engine(svc, prefix: str) -> set[str]:
    """Request ids (of this test) that the core handed to the engine."""
    return set(re.findall(rf"request ({re.escape(prefix)}\S+) model=", svc.log()))


def settle(svc, prefix: str, base, left_at: float) -> set[str]:
    """Waits until the engine is idle and has counted, since `base`, one abort per request
    of `prefix` that reached it; returns those ids. Counted over the whole test, not per
    round: an HTTP request whose client left while it waited for a shim thread reaches
    the core late, maybe after its round was checked, and is aborted then."""
    state = {}

    def done():
        s = svc.stats()
        state["stats"], state["reached"] = s, reached_engine(svc, prefix)
        return idle(s) and s.requests_aborted - base.requests_aborted == len(state["reached"])
    ok = wait_until(done, SETTLE_S + 30, 0.05)
    took = time.monotonic() - left_at
    s = state["stats"]
    assert ok, (f"{len(state['reached'])} requests reached the engine; after {took:.1f}s: "
                f"aborted {s.requests_aborted - base.requests_aborted}, {s}")
    assert took <= SETTLE_S, f"the engine took {took:.2f}s to drop the requests of callers that left"
    assert s.requests_finished == base.requests_finished, s  # nothing ran to its end
    assert s.requests_rejected == base.requests_rejected, s
    return state["reached"]


def assert_aborted_once(svc, ids: set[str]) -> None:
    log = svc.log()
    counts = {rid: log.count(f"request {rid} cancelled by the client") for rid in ids}
    assert all(c == 1 for c in counts.values()), {k: v for k, v in counts.items() if v != 1}
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def variant(rng: random.Random) -> tuple[str, int]:
    """(prompt, n) of one caller: mostly short single-choice, some long (chunked
    prefill) and some with several choices."""
    prompt = LONG if rng.random() < 0.2 else SHORT
    n = rng.choice((1, 1, 1, 2, 3))
    return prompt, n


# ---- gRPC -----------------------------------------------------------------------------

def generate_request(rid: str, prompt: str, n: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        model=MODEL, request_id=rid,
        messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=prompt)])],
        output=pb.OutputOptions(n=n),
        stopping=pb.StoppingOptions(max_tokens=MAX_TOKENS, ignore_eos=True))


async def grpc_caller(target: str, shared, rid: str, rng: random.Random, started: set) -> None:
    """One gRPC caller: it leaves at its moment (`started`, the k-th token, its deadline)
    or when its own timer runs out, whichever comes first, by cancelling the call or by
    closing its channel under it."""
    mode = rng.choice(("at_started", "after_tokens", "timer", "deadline", "disconnect"))
    prompt, n = variant(rng)
    own = grpc.aio.insecure_channel(target) if mode == "disconnect" else None
    stub = pb_grpc.GenerationServiceStub(own or shared)
    timeout = rng.uniform(0.05, LEAVE_BY_S) if mode == "deadline" else None
    call = stub.Generate(generate_request(rid, prompt, n), timeout=timeout)
    tokens = rng.randint(1, 8)

    async def read():
        seen = 0
        async for ev in call:
            if ev.WhichOneof("event") == "started":
                started.add(rid)
                if mode in ("at_started", "disconnect"):
                    return
            else:
                seen += 1
                if mode == "after_tokens" and seen >= tokens:
                    return
        raise AssertionError(f"{rid}: the stream ended on its own")

    try:
        if mode == "deadline":
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await read()
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, ei.value
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(read(), rng.uniform(0.0, LEAVE_BY_S))
    finally:
        if own is not None:
            await own.close(None)  # the transport goes away under the call
        call.cancel()


async def grpc_round(target: str, prefix: str, seed: int) -> tuple[float, set]:
    rng = random.Random(seed)
    channels = [grpc.aio.insecure_channel(target) for _ in range(4)]
    started: set[str] = set()
    try:
        await asyncio.gather(*(
            grpc_caller(target, channels[i % 4], f"{prefix}{i}", random.Random(rng.random()), started)
            for i in range(CALLERS)))
        return time.monotonic(), started
    finally:
        for ch in channels:
            await ch.close(None)


def test_grpc_callers_leaving_at_random_moments_abort_exactly_their_requests(storm):
    assert wait_until(lambda: idle(storm.stats()), 15), storm.stats()
    base = storm.stats()
    for r in range(ROUNDS):
        prefix = f"storm-grpc-r{r}-"
        left_at, started = asyncio.run(grpc_round(storm.grpc_target, prefix, seed=1000 + r))
        reached = settle(storm, "storm-grpc-", base, left_at)
        assert started <= reached, started - reached
        # a real storm: more callers in the engine each round than its batch holds, so some
        # left while queued. How many more depends on the machine's load (on a loaded one
        # more callers' timers run out before their call gets there: 29 of 200 seen).
        assert len({i for i in reached if i.startswith(prefix)}) > MAX_BATCH
    assert len(reached) >= ROUNDS * CALLERS // 5
    assert_aborted_once(storm, reached)


# ---- REST -----------------------------------------------------------------------------

def http_request(svc, rid: str, prompt: str, n: int, stream: bool) -> bytes:
    import json

    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}], "n": n,
                       "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": stream}).encode()
    host = svc.base_url.removeprefix("http://")
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"x-request-id: {rid}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def raw_caller(svc, rid: str, rng: random.Random, started: set) -> None:
    """An HTTP client on a raw socket that closes (FIN) or resets (RST) it at its moment
    (the response head, the k-th SSE frame) or when its own timer runs out."""
    mode = rng.choice(("at_headers", "after_frames", "timer", "timer"))
    stream = mode != "timer" or rng.random() < 0.5
    prompt, n = variant(rng)
    host, port = svc.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    frames = rng.randint(2, 8)

    async def read():
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                raise AssertionError(f"{rid}: the server closed the connection: {buf[-300:]!r}")
            buf += data
            if b"\r\n\r\n" in buf:
                if buf.startswith(b"HTTP/1.1 429") and b"retry-after:" in buf.lower():
                    return  # refused at the front (every shim thread busy): never reached the core
                assert buf.startswith(b"HTTP/1.1 200"), buf[:300]
                started.add(rid)
                if mode == "at_headers" or (mode == "after_frames" and buf.count(b"data: {") >= frames):
                    return

    try:
        writer.write(http_request(svc, rid, prompt, n, stream))
        await writer.drain()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(read(), rng.uniform(0.0, LEAVE_BY_S))
    finally:
        if rng.random() < 0.3:  # reset instead of an orderly close
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()


async def sdk_caller(client, rid: str, rng: random.Random, started: set) -> None:
    """The openai SDK: a non-streaming call that times out, or a stream the caller
    closes after k chunks (or when its timer runs out)."""
    import openai

    prompt, n = variant(rng)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": prompt}], n=n, max_tokens=MAX_TOKENS,
              extra_body={"ignore_eos": True}, extra_headers={"x-request-id": rid})
    chunks = rng.randint(1, 8)

    async def consume():
        stream = await client.chat.completions.create(stream=True, **kw)
        started.add(rid)
        try:
            left = chunks
            async for _ in stream:
                left -= 1
                if left <= 0:
                    break
        finally:
            await stream.close()

    try:
        if rng.random() < 0.5:
            with pytest.raises(openai.APITimeoutError):
                await client.with_options(timeout=rng.uniform(0.05, LEAVE_BY_S)).chat.completions.create(**kw)
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(consume(), rng.uniform(0.0, LEAVE_BY_S))
    except openai.RateLimitError as e:  # refused at the front: never reached the core
        assert e.response.headers.get("retry-after"), e.response.headers


async def rest_round(svc, prefix: str, seed: int) -> tuple[float, set]:
    rng = random.Random(seed)
    started: set[str] = set()
    client = svc.sdk(asynchronous=True)
    try:
        await asyncio.gather(*(
            (sdk_caller(client, f"{prefix}{i}", random.Random(rng.random()), started) if i % 5 == 0
             else raw_caller(svc, f"{prefix}{i}", random.Random(rng.random()), started))
            for i in range(CALLERS)))
        return time.monotonic(), started
    finally:
        await client.close()


def test_http_callers_leaving_at_random_moments_abort_exactly_their_requests(storm):
    assert wait_until(lambda: idle(storm.stats()), 15), storm.stats()
    base = storm.stats()
    for r in range(ROUNDS):
        prefix = f"storm-http-r{r}-"
        left_at, started = asyncio.run(rest_round(storm, prefix, seed=2000 + r))
        reached = settle(storm, "storm-http-", base, left_at)
        assert started <= reached, started - reached
    assert_aborted_once(storm, reached)
