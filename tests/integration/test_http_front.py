"""The shim's HTTP front (issue 18): a burst beyond capacity gets 429 at once (plan row L2),
slow clients cannot take the request threads, malformed framing is a 400 that closes.

One service for the module (and the default one, for the workers' listeners). Its shim has fewer request threads (2 workers x 2) than its
core holds (2 running + 4 waiting): the shape of the old default config (64 threads in
front of a core holding 288), where the excess waited in gunicorn's queue without bound.
The default config itself keeps the shim's capacity above the core's (unit-tested in
tests/unit/test_shim_front.py), so there the core's admission control decides.

Raw sockets on loopback throughout: the tests decide every byte. They wait on what they
can observe (answers, closes, the engine's counters; requests held in flight by the
engine's test-only decode pause), never on how fast a loaded machine answers.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import socket
import threading
import time

import httpx
import pytest

from ..conftest import MODEL, Service, shim_workers, wait_until

MAX_BATCH, MAX_QUEUE = 2, 4  # the core holds 6 requests
WORKERS, THREADS = 2, 2  # the shim runs 4 at a time
READ_TIMEOUT_S = 3.0
PROMPT = [{"role": "user", "content": "Describe the harbour at night."}]


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("front")
    svc = Service(tmp, "front", max_batch=MAX_BATCH,
                  model_options=f'max_queue = {MAX_QUEUE}\nthreads = 1\n'
                                f'[models.options.fault]\npause_decode_file = "{tmp / "pause"}"\n',
                  env={"GENAPI_WORKERS": str(WORKERS), "GENAPI_THREADS": str(THREADS),
                       "GENAPI_READ_TIMEOUT_S": str(READ_TIMEOUT_S)}).start()
    svc.pause_file = tmp / "pause"
    yield svc
    svc.pause_file.unlink(missing_ok=True)
    svc.stop()


@pytest.fixture(scope="module")
def stats(front):
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(front.grpc_target)
    stub = pb_grpc.AdminServiceStub(channel)
    yield lambda: stub.GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0]
    channel.close()


def idle(s) -> bool:
    return (s.active_sequences, s.queued_requests, s.cache_slots_used) == (0, 0, 0)


def address(svc: Service) -> tuple[str, int]:
    host, port = svc.base_url.removeprefix("http://").split(":")
    return host, int(port)


def chat_request(max_tokens: int, stream: bool = False) -> bytes:
    body = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": stream}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


class Reply:
    """One HTTP/1.1 response read off a raw socket (Content-Length framed)."""

    def __init__(self):
        self.raw = b""
        self.closed_at: float | None = None

    def feed(self, data: bytes, now: float) -> None:
        if not data and self.closed_at is None:
            self.closed_at = now
        self.raw += data

    @property
    def final(self) -> bytes:
        """The bytes after any interim (1xx) responses."""
        raw = self.raw
        while raw.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in raw:
            raw = raw.partition(b"\r\n\r\n")[2]
        return raw

    @property
    def head(self) -> tuple[int, dict] | None:
        head, sep, _ = self.final.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return int(lines[0].split()[1]), headers

    @property
    def complete(self) -> bool:
        if self.head is None:
            return False
        _, headers = self.head
        body = self.final.partition(b"\r\n\r\n")[2]
        return len(body) >= int(headers.get("content-length", 1 << 62))

    @property
    def status(self) -> int:
        return self.head[0]

    @property
    def headers(self) -> dict:
        return self.head[1]

    def json(self) -> dict:
        return json.loads(self.final.partition(b"\r\n\r\n")[2])


def assert_envelope(reply: Reply, status: int) -> dict:
    assert reply.status == status, reply.raw[:400]
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.headers["x-request-id"]
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


# ---- item 2, plan row L2: a burst of 3x capacity ------------------------------------------

def test_burst_beyond_capacity_is_refused_at_once_with_429(front, stats):
    """Every request beyond what the service holds gets its 429 while the admitted ones are
    still held in flight (decode paused): refused at once, not queued behind them."""
    assert wait_until(lambda: idle(stats()), 15), stats()
    n, max_tokens = 3 * (MAX_BATCH + MAX_QUEUE), 24
    socks = [socket.create_connection(address(front), timeout=60) for _ in range(n)]
    replies = {s: Reply() for s in socks}
    sel = selectors.DefaultSelector()

    def read(until, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                return False
            for key, _ in sel.select(0.1):
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                replies[key.fileobj].feed(chunk, time.monotonic())
                if not chunk:
                    sel.unregister(key.fileobj)
        return True

    def answered() -> list[Reply]:
        return [r for r in replies.values() if r.complete or r.closed_at is not None]

    def settled() -> bool:  # every request is answered or inside the engine, which filled its slots
        s = stats()
        inside = s.active_sequences + s.queued_requests
        return len(answered()) + inside == n and s.active_sequences == min(MAX_BATCH, inside)

    try:
        front.pause_file.touch()  # the admitted ones cannot finish while the refusals come back
        data = chat_request(max_tokens)
        for s in socks:
            s.sendall(data)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        assert read(settled, 90), ([r.raw[:80] for r in replies.values()], stats())
        held = stats()
        early = answered()
        assert all(r.complete and r.status == 429 for r in early), [r.raw[:200] for r in early]
        front.pause_file.unlink()
        assert read(lambda: len(answered()) == n, 90), [r.raw[:80] for r in replies.values()]
    finally:
        front.pause_file.unlink(missing_ok=True)
        sel.close()
        for s in socks:
            s.close()

    statuses = sorted(r.status for r in replies.values())
    admitted = [r for r in replies.values() if r.status == 200]
    refused = [r for r in replies.values() if r.status == 429]
    assert len(admitted) + len(refused) == n, statuses  # nothing else: no 5xx, no timeout
    assert len(admitted) == held.active_sequences + held.queued_requests, (statuses, held)
    assert 1 <= len(admitted) <= min(MAX_BATCH + MAX_QUEUE, WORKERS * THREADS), statuses
    for r in admitted:  # admitted requests finish normally
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "length" and r.json()["usage"]["completion_tokens"] == max_tokens
    for r in refused:
        err = assert_envelope(r, 429)
        assert err["type"] == "rate_limit_error" and err["code"] in ("engine_overloaded", "server_overloaded"), err
        assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1

    # The service is whole again afterwards.
    assert wait_until(lambda: idle(stats()), 30), stats()
    resp = httpx.post(f"{front.base_url}/v1/chat/completions", timeout=30,
                      json={"model": MODEL, "messages": PROMPT, "max_tokens": 2})
    assert resp.status_code == 200, resp.text


def sockets_on(port: int) -> dict[int, str]:
    """inode -> TCP state (/proc/net/tcp's hex: "0A" listening, "01" established) of every
    socket whose local port is `port`."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    out[int(fields[9])] = fields[3]
    return out


def socket_inodes(pid: int) -> set[int]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def test_each_worker_listens_on_its_own_socket_and_takes_a_share_of_the_connections(service):
    """With the default config (two workers) each worker accepts from a socket of its own
    (SO_REUSEPORT), so the kernel spreads connections by address hash. With the one socket
    they used to share, the worker whose event loop was awake accepted them all: under a
    burst on a busy machine one worker took all 864 connections and refused what the other
    could have served."""
    host, port = address(service)
    workers = shim_workers(service)
    assert len(workers) == 2, workers
    on_port = sockets_on(port)
    listening = {pid: {i for i in socket_inodes(pid) if on_port.get(i) == "0A"} for pid in workers}
    assert all(len(inodes) == 1 for inodes in listening.values()), listening
    assert len(set.union(*listening.values())) == 2, listening  # not one socket inherited by both

    def shares() -> list[int]:
        on_port = sockets_on(port)
        return [sum(on_port.get(i) == "01" for i in socket_inodes(pid)) for pid in workers]

    n = 200
    socks = [socket.create_connection((host, port), timeout=30) for _ in range(n)]
    try:  # idle connections stay open for read_timeout_s (30 s): time enough to count them
        assert wait_until(lambda: sum(shares()) >= n, 20), shares()
        # An even hash split: either side under 50 of 200 has a chance of about 1e-13.
        assert min(shares()) >= n // 4, shares()
    finally:
        for s in socks:
            s.close()


# ---- item 3: slow clients ------------------------------------------------------------------

SLOW_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             + b"X-Slow: " + b"a" * 200)
SLOW_BODY_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000\r\n\r\n")
SLOW_EXPECT_HEAD = SLOW_BODY_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
# A large body whose first 300 KB come at once: more than a small buffer, so that a front
# that handed large bodies to a thread would let each hold one (READ_TIMEOUT_S + 5 s).
LARGE_BODY_FIRST = 300_000
SLOW_LARGE_HEAD = SLOW_BODY_HEAD.replace(b"Content-Length: 1000", b"Content-Length: 400000") + b"{" + b" " * (LARGE_BODY_FIRST - 1)


def test_slow_clients_do_not_starve_the_others_and_are_closed_in_time(front):
    n_slow = 100
    outcome = {"ok": 0, "failed": []}
    stop = threading.Event()

    def normal_traffic():
        with httpx.Client(base_url=front.base_url, timeout=READ_TIMEOUT_S + 5) as c:
            while not stop.is_set():
                try:
                    if outcome["ok"] % 2:
                        r = c.get("/v1/models")
                    else:
                        r = c.post("/v1/chat/completions", json={"model": MODEL, "messages": PROMPT, "max_tokens": 2})
                    if r.status_code == 200:
                        outcome["ok"] += 1
                    else:
                        outcome["failed"].append(r.status_code)
                except httpx.HTTPError as e:
                    outcome["failed"].append(repr(e))

    # A quarter send their head, a quarter their body, a quarter their body after
    # `Expect: 100-continue`, a quarter the rest of a large body: one byte per second.
    slow = []
    for i in range(n_slow):
        # Timed from before the connect: the server may accept (and start its read timeout)
        # before a loaded machine runs this thread again after the handshake.
        opened = time.monotonic()
        s = socket.create_connection(address(front), timeout=10)
        kind = i % 4
        if kind:
            s.sendall((SLOW_BODY_HEAD, SLOW_EXPECT_HEAD, SLOW_LARGE_HEAD)[kind - 1])
        s.setblocking(False)
        data = (SLOW_HEAD, b"{" + b" " * 998 + b"}", b"{" + b" " * 998 + b"}",
                b" " * (400_000 - LARGE_BODY_FIRST - 1) + b"}")[kind]
        slow.append({"sock": s, "opened": opened, "pos": 0, "reply": Reply(), "expect": kind == 2, "data": data})
    traffic = [threading.Thread(target=normal_traffic) for _ in range(2)]
    for t in traffic:
        t.start()

    sel = selectors.DefaultSelector()
    for c in slow:
        sel.register(c["sock"], selectors.EVENT_READ, c)
    deadline = time.monotonic() + READ_TIMEOUT_S + 60  # a bound on the wait, not the expectation
    next_trickle = 0.0
    try:
        while any(c["reply"].closed_at is None for c in slow) and time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_trickle:  # one byte on every connection still open
                next_trickle = now + 1.0
                for c in slow:
                    if c["reply"].closed_at is None and c["pos"] < len(c["data"]):
                        try:
                            c["sock"].send(c["data"][c["pos"]:c["pos"] + 1])
                            c["pos"] += 1
                        except OSError:  # reset by the server: closed
                            c["reply"].feed(b"", time.monotonic())
            for key, _ in sel.select(0.05):
                c = key.data
                try:
                    chunk = c["sock"].recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                c["reply"].feed(chunk, time.monotonic())
                if not chunk:
                    sel.unregister(c["sock"])
        # Normal traffic keeps succeeding after the slow ones are gone.
        # (and at least 10 in all, however slowly a loaded machine serves them)
        served = outcome["ok"]
        assert wait_until(lambda: outcome["ok"] >= max(served + 4, 10), timeout_s=60), outcome
    finally:
        stop.set()
        for t in traffic:
            t.join(30)
        sel.close()
        for c in slow:
            c["sock"].close()

    still_open = [c for c in slow if c["reply"].closed_at is None]
    assert not still_open, f"{len(still_open)} slow connections still open after {READ_TIMEOUT_S + 60} s"
    # Closed by the read timeout: not before it, and long before they could finish sending
    # (a byte a second of 200+ bytes).
    lifetimes = sorted(c["reply"].closed_at - c["opened"] for c in slow)
    assert lifetimes[0] >= READ_TIMEOUT_S, lifetimes
    assert all(c["pos"] < len(c["data"]) for c in slow), [(c["pos"], len(c["data"])) for c in slow]
    for c in slow:  # answered 408 before the close (or reset: closed all the same)
        if c["expect"]:
            assert c["reply"].raw.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), c["reply"].raw[:100]
        if c["reply"].final:
            assert_envelope(c["reply"], 408)
    total = outcome["ok"] + len(outcome["failed"])
    assert total >= 10 and outcome["ok"] >= 0.95 * total, outcome


STOCK_LINGER_S = 2.0  # gunicorn.util.close_graceful: what stock gthread waits per such client


def test_clients_that_never_close_do_not_stall_the_others(front):
    """After a `Connection: close` answer the server half-closes and waits a moment for the
    client to close its side. That wait must not block a worker's event loop: stock gthread
    waited there, STOCK_LINGER_S per client in turn, and everything else (the next answers,
    new connections, the next FINs) waited behind it.

    The one time bound here tells a blocked event loop from a slow one: half the smallest
    stall stock gthread would cause (40 clients over 2 workers: 40 s), where a loaded
    2-core machine serves all of this in a few seconds."""
    lingerers = [socket.create_connection(address(front), timeout=60) for _ in range(40)]
    stall_s = STOCK_LINGER_S * len(lingerers) / WORKERS
    try:
        t0 = time.monotonic()
        replies = []
        for s in lingerers:
            s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        for s in lingerers:  # each is answered (200, or 429 past the busy threads), never closed
            reply = Reply()
            while not reply.complete:
                reply.feed(s.recv(65536), time.monotonic())
            assert reply.status in (200, 429), reply.raw[:200]
            replies.append(reply)
        for _ in range(5):
            with httpx.Client(base_url=front.base_url, timeout=60) as c:  # a new connection each time
                assert c.get("/v1/models").status_code == 200
        for s, reply in zip(lingerers, replies):  # the server's FIN came with the answer
            while reply.closed_at is None:
                reply.feed(s.recv(65536), time.monotonic())
        assert time.monotonic() - t0 < stall_s / 2
    finally:
        for s in lingerers:
            s.close()


def test_expect_100_continue_is_answered_once(front):
    body = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 2}).encode()
    with socket.create_connection(address(front), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        reply = Reply()
        while b"\r\n\r\n" not in reply.raw:
            reply.feed(s.recv(65536), time.monotonic())
        assert reply.raw == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        while not reply.complete:
            reply.feed(s.recv(65536), time.monotonic())
    assert reply.raw.count(b"100 Continue") == 1
    assert reply.status == 200 and reply.json()["choices"][0]["finish_reason"] in ("length", "stop")


# ---- item 6: framing -----------------------------------------------------------------------

CHUNKED_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")


@pytest.mark.parametrize("data", [
    CHUNKED_HEAD.replace(b"chunked", b"xchunked") + b"2\r\n{}\r\n0\r\n\r\n",
    CHUNKED_HEAD + b"ffffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n",  # chunk size beyond 64 bits
    CHUNKED_HEAD + b"2\n{}\n0\n\n",  # size lines ended by a bare LF
    CHUNKED_HEAD + b"2\r\n{}\n0\r\n\r\n",  # chunk data ended by a bare LF
    CHUNKED_HEAD + b"2\r\n{}\n",  # ... and nothing after it
    CHUNKED_HEAD.replace(b"chunked", b"gzip, chunked") + b"2\r\n{}\r\n0\r\n\r\n",  # a coding never decoded
], ids=["xchunked", "chunk-size-overflow", "bare-lf-size-line", "bare-lf-after-data", "bare-lf-then-wait",
        "gzip-chunked"])
def test_malformed_framing_is_a_400_and_the_connection_closes(front, data):
    with socket.create_connection(address(front), timeout=READ_TIMEOUT_S + 5) as s:
        t0 = time.monotonic()
        s.sendall(data)
        reply = Reply()
        while reply.closed_at is None:
            try:
                reply.feed(s.recv(65536), time.monotonic())
            except ConnectionResetError:
                reply.feed(b"", time.monotonic())
    err = assert_envelope(reply, 400)
    assert err["type"] == "invalid_request_error" and err["code"] in ("bad_request", "invalid_body"), err
    assert len(err["message"]) < 400, err  # gunicorn's quote of the request, clipped
    assert reply.headers.get("connection", "").lower() == "close", reply.headers
    assert "retry-after" not in reply.headers
    # At once, not when the read timeout runs out.
    assert reply.closed_at - t0 < READ_TIMEOUT_S / 2, reply.closed_at - t0


def split_responses(raw: bytes) -> list[tuple[int, bytes]]:
    """The complete Content-Length framed responses in `raw`, as (status, body)."""
    out = []
    while True:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            return out
        length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        if len(rest) < length:
            return out
        out.append((int(head.split()[1]), rest[:length]))
        raw = rest[length:]


def test_well_formed_chunked_bodies_still_work_pipelined(front):
    body = json.dumps({"model": MODEL, "messages": PROMPT, "max_tokens": 2}).encode()
    data = CHUNKED_HEAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    with socket.create_connection(address(front), timeout=30) as s:
        s.sendall(data + data)  # two requests on one connection, the second sent before the first is answered
        raw = b""
        while len(split_responses(raw)) < 2:
            chunk = s.recv(65536)
            assert chunk, raw
            raw += chunk
    for status, resp_body in split_responses(raw):
        assert status == 200, resp_body
        assert json.loads(resp_body)["choices"][0]["finish_reason"] in ("length", "stop")
