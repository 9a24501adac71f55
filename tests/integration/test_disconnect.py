"""Client disconnects cancel generation (reliability plan C1, C2).

HTTP client gone (stream or not) -> the shim cancels the gRPC call -> the core aborts the
engine request and frees its batch slot. Checked through the engine's live counters
(GetEngineStats), the core's log and, for leaks, the shim workers' /proc entries.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import grpc
import pytest

from genapi.v1 import content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc

from ..conftest import MODEL, Service, engine_stats_reader, shim_workers, wait_until

LONG = 1500  # tokens: ~7 s on the tiny model, far longer than any test waits
SETTLE_S = 3.0  # plan C1: in-flight count back to baseline within 2 s (+ polling slack)


# ---- raw HTTP ------------------------------------------------------------------------

def open_chat(service, *, stream: bool, request_id: str, max_tokens: int = LONG, keep_alive: bool = True):
    """Sends a chat completion on a raw socket (so the test decides exactly when the
    connection goes away) and returns the socket."""
    body = json.dumps({
        "model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens, "stream": stream, "ignore_eos": True,
    }).encode()
    host, port = service.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"x-request-id: {request_id}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def read_frames(sock, n: int) -> bytes:
    """Reads until `n` SSE data frames have arrived; returns everything read."""
    buf = b""
    while buf.count(b"data: {") < n:
        data = sock.recv(65536)
        assert data, f"stream ended after {buf.count(b'data: {')} frames: {buf[-300:]!r}"
        buf += data
    return buf


def rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def cancelled_in_log(service, request_id: str) -> int:
    return service.log().count(f"request {request_id} cancelled by the client")


def idle(stats) -> bool:
    return (stats.active_sequences == 0 and stats.cache_slots_used == 0 and stats.queued_requests == 0
            and stats.budget_tokens_used == 0)


@pytest.fixture
def quiet(engine_stats):
    """The engine is idle before the test starts; returns its counters at that point."""
    assert wait_until(lambda: idle(engine_stats()), 10), engine_stats()
    return engine_stats()


# ---- C1 --------------------------------------------------------------------------------

def test_closing_a_stream_aborts_its_generation(service, engine_stats, quiet):
    request_id = rid("c1-stream")
    sock = open_chat(service, stream=True, request_id=request_id)
    try:
        buf = read_frames(sock, 6)  # role chunk + 5 content chunks
        assert buf.startswith(b"HTTP/1.1 200") and b"text/event-stream" in buf.split(b"\r\n\r\n")[0]
        during = engine_stats()
        assert during.active_sequences == 1 and during.cache_slots_used == 1
    finally:
        sock.close()
    t0 = time.monotonic()
    assert wait_until(lambda: engine_stats().requests_aborted == quiet.requests_aborted + 1, SETTLE_S), engine_stats()
    assert wait_until(lambda: idle(engine_stats()), SETTLE_S), engine_stats()
    assert time.monotonic() - t0 < SETTLE_S
    after = engine_stats()
    assert after.requests_aborted == quiet.requests_aborted + 1  # aborted once, not twice
    assert after.requests_finished == quiet.requests_finished  # it did not run to the end
    assert wait_until(lambda: cancelled_in_log(service, request_id) == 1, 2), service.log()[-3000:]


def test_closing_a_non_stream_request_aborts_its_generation(service, engine_stats, quiet):
    request_id = rid("c1-nonstream")
    sock = open_chat(service, stream=False, request_id=request_id)
    try:
        assert wait_until(lambda: engine_stats().active_sequences == 1, 5), engine_stats()
        time.sleep(0.5)
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):  # still generating: no response byte yet
            sock.recv(1)
        assert engine_stats().active_sequences == 1
    finally:
        sock.close()
    assert wait_until(lambda: engine_stats().requests_aborted == quiet.requests_aborted + 1, SETTLE_S), engine_stats()
    assert wait_until(lambda: idle(engine_stats()), SETTLE_S), engine_stats()
    after = engine_stats()
    assert after.requests_aborted == quiet.requests_aborted + 1
    assert after.requests_finished == quiet.requests_finished
    assert wait_until(lambda: cancelled_in_log(service, request_id) == 1, 2), service.log()[-3000:]


def test_cancelling_a_grpc_generate_call_aborts_it(service, grpc_channel, engine_stats, quiet):
    request_id = rid("c1-grpc")
    stub = pb_grpc.GenerationServiceStub(grpc_channel)
    req = pb.GenerateRequest(
        model=MODEL, request_id=request_id,
        messages=[content_pb2.ChatMessage(role=content_pb2.ROLE_USER,
                                          content=[content_pb2.ContentPart(text="A long story, please.")])],
        stopping=pb.StoppingOptions(max_tokens=LONG, ignore_eos=True))
    call = stub.Generate(req)
    events = [next(call) for _ in range(5)]
    assert events[0].WhichOneof("event") == "started"
    assert engine_stats().active_sequences == 1
    call.cancel()
    with pytest.raises(grpc.RpcError) as ei:
        for _ in call:
            pass
    assert ei.value.code() == grpc.StatusCode.CANCELLED
    assert wait_until(lambda: engine_stats().requests_aborted == quiet.requests_aborted + 1, SETTLE_S), engine_stats()
    assert wait_until(lambda: idle(engine_stats()), SETTLE_S), engine_stats()
    assert engine_stats().requests_finished == quiet.requests_finished
    assert wait_until(lambda: cancelled_in_log(service, request_id) == 1, 2), service.log()[-3000:]


# ---- many at once ----------------------------------------------------------------------

def drop_streams(service, engine_stats, n: int, frames: int = 4) -> dict:
    """Opens `n` streams at once, waits until every one has received `frames` frames
    (so all are generating together), then closes them all. Returns the engine counters
    seen while all were open."""
    seen = {}
    barrier = threading.Barrier(n, action=lambda: seen.setdefault("stats", engine_stats()), timeout=60)
    errors = []

    def one(i):
        sock = None
        try:
            sock = open_chat(service, stream=True, request_id=rid(f"drop{i}"))
            read_frames(sock, frames)
            barrier.wait()
        except BaseException as e:  # reported below; the barrier breaks for the others
            errors.append(e)
            barrier.abort()
        finally:
            if sock is not None:
                sock.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    return seen["stats"]


def test_abort_20_streams_dropped_mid_generation_leave_no_active_sequences_and_no_held_cache(
        service, client, engine_stats, quiet):
    during = drop_streams(service, engine_stats, 20)
    assert during.active_sequences == 20 and during.cache_slots_used == 20 and during.queued_requests == 0

    assert wait_until(lambda: engine_stats().requests_aborted == quiet.requests_aborted + 20, 5), engine_stats()
    assert wait_until(lambda: idle(engine_stats()), 5), engine_stats()
    after = engine_stats()
    assert (after.active_sequences, after.cache_slots_used, after.queued_requests, after.budget_tokens_used) == (0, 0, 0, 0)
    assert after.requests_aborted == quiet.requests_aborted + 20
    assert after.requests_finished == quiet.requests_finished

    # The freed slots serve the next request normally.
    resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=8, extra_body={"ignore_eos": True})
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 8
    assert resp.choices[0].message.content
    assert wait_until(lambda: idle(engine_stats()), 5)
    assert engine_stats().requests_finished == quiet.requests_finished + 1


# ---- C2-lite: no leaked threads or fds in the shim workers -----------------------------

def resources(pids) -> dict[int, tuple[int, int]]:
    """pid -> (threads, open fds)."""
    out = {}
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        out[pid] = (threads, len(os.listdir(f"/proc/{pid}/fd")))
    return out


def read_response(sock) -> bytes:
    """One complete HTTP response with a Content-Length body. (Waiting for EOF instead
    would stall: gunicorn's graceful close lingers until the client closes its side.)"""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, buf
        body += chunk
    return head + b"\r\n\r\n" + body


def fill_thread_pools(service, connections: int = 72) -> None:
    """gthread workers grow their thread pool on demand and never shrink it; complete more
    requests at once than the pools can take (headers sent, then the bodies' last bytes
    together) so both pools reach full size before the baseline is taken. Each is refused
    without reaching the engine: an invalid request (400), or, past a worker's last free
    thread, the front's 429 (shim/worker.py)."""
    body = json.dumps({"model": MODEL}).encode()
    host, port = service.base_url.removeprefix("http://").split(":")
    socks = []
    try:
        for _ in range(connections):
            s = socket.create_connection((host, int(port)), timeout=30)
            s.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:-1])
            socks.append(s)
        time.sleep(1.0)
        for s in socks:
            s.sendall(body[-1:])
        for s in socks:
            assert read_response(s)[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 429")
    finally:
        for s in socks:
            s.close()


def test_dropped_streams_leak_no_threads_or_fds_in_shim_workers(service, engine_stats, quiet):
    workers = shim_workers(service)
    assert len(workers) == 2, workers  # conftest: [shim] workers = 2
    fill_thread_pools(service)
    drop_streams(service, engine_stats, 20)  # warm-up: every lazily created piece exists now
    assert wait_until(lambda: idle(engine_stats()), 5), engine_stats()
    time.sleep(1.0)
    baseline = resources(workers)

    for _ in range(2):
        during = drop_streams(service, engine_stats, 20)
        assert during.active_sequences == 20
        assert wait_until(lambda: idle(engine_stats()), 5), engine_stats()

    def back_to_baseline():
        now = resources(workers)
        return all(abs(now[p][0] - baseline[p][0]) <= 2 and abs(now[p][1] - baseline[p][1]) <= 2 for p in workers)
    assert wait_until(back_to_baseline, 10, 0.2), f"baseline (threads, fds) {baseline}, now {resources(workers)}"
    assert shim_workers(service) == workers  # no worker was restarted on the way


# ---- a reader that falls behind --------------------------------------------------------

def sse_events(raw: bytes) -> list[dict]:
    """The JSON chunks of an SSE response read on a raw socket (chunked transfer encoding:
    each HTTP chunk holds whole SSE events, between the chunk-size lines)."""
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return [json.loads(line[6:]) for line in body.replace(b"\r\n", b"\n").split(b"\n")
            if line.startswith(b"data: {")]


def raw_stream(service, *, paused_until=None) -> list[dict]:
    """One seeded 1,200-token stream with logprobs on a raw socket, read at once or, with
    `paused_until`, not at all until it is true (the shim's writes back up behind it)."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell me about boats."}],
                       "stream": True, "seed": 11, "max_tokens": 1200, "ignore_eos": True, "logprobs": True,
                       "top_logprobs": 20, "temperature": 0.9}).encode()
    host, port = service.base_url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room on this side
    sock.settimeout(60)
    sock.connect((host, int(port)))
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    if paused_until is not None:
        assert wait_until(paused_until, 600, 0.05), "the engine did not finish the stream"
    buf = b""
    while data := sock.recv(65536):
        buf += data
    sock.close()
    return sse_events(buf)


@pytest.fixture(scope="module")
def patient_service(tmp_path_factory):
    """A service whose shim waits as long as a loaded machine's 1,200 tokens take for a reader
    that reads nothing (the default `read_timeout_s`, 30 s, would close the connection)."""
    svc = Service(tmp_path_factory.mktemp("patient"), "patient", env={"GENAPI_READ_TIMEOUT_S": "600"}).start()
    yield svc
    svc.stop()


def test_a_reader_that_falls_behind_gets_merged_chunks_with_the_same_text_and_usage(patient_service):
    with grpc.insecure_channel(patient_service.grpc_target) as ch:
        stats = engine_stats_reader(ch)
        fast = raw_stream(patient_service)
        before = stats().requests_finished
        slow = raw_stream(patient_service, paused_until=lambda: stats().requests_finished > before)

    def text(events):
        return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])

    def tokens(events):
        return [lp["token"] for e in events for c in e["choices"] for lp in (c.get("logprobs") or {}).get("content", [])]
    assert text(slow) == text(fast) and tokens(slow) == tokens(fast)
    assert slow[-1]["usage"] == fast[-1]["usage"] and slow[-1]["usage"]["completion_tokens"] == 1200
    # the engine finished while nothing was read: the shim sent what piled up merged (not
    # against len(fast): on a loaded machine the fast reader falls behind and is merged too)
    assert len(slow) < 1200 / 2, (len(slow), len(fast))
