"""Admission control under overload (reliability plan L2): a full queue or token budget
answers 429 with Retry-After at once, admitted requests still finish in full, nothing
is a 5xx, and the engine goes back to idle.

The service here runs the tiny model with `max_batch = 2`, `max_queue = 2` (two running,
two waiting) and `max_budget_tokens = 1300`: four requests of prompt + 300 tokens fit
the budget together, so in the burst the queue is what refuses; the budget is probed on
its own boundary further down.

Nothing here races the model: while a test needs requests to stay where they are
(running, waiting), it pauses the engine's decoding (`pause_decode_file`, a test-only
fault option: requests are still admitted and get their first token, but none advances
or finishes) and waits on the engine's counters, never on elapsed time. Loaded or idle,
fast or slow machine, the states the assertions look at are the same.
"""
from __future__ import annotations

import json
import socket
import threading

import httpx
import openai
import pytest

from ..conftest import MODEL, Service, wait_until

MAX_BATCH, MAX_QUEUE, BUDGET = 2, 2, 1300
MESSAGES = [{"role": "user", "content": "Describe the harbour at night."}]
LONG = {"ignore_eos": True}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overload")
    svc = Service(tmp, "overload", max_batch=MAX_BATCH,
                  model_options=f"max_queue = {MAX_QUEUE}\nmax_budget_tokens = {BUDGET}\nthreads = 1\n"
                                f'[models.options.fault]\npause_decode_file = "{tmp / "pause"}"\n')
    svc.pause_file = tmp / "pause"
    svc.start()
    yield svc
    svc.stop()


class Pause:
    """Holds the engine's decoding while set; always released at the end of the test."""

    def __init__(self, path):
        self.path = path

    def hold(self) -> None:
        self.path.touch()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)

    def __enter__(self):
        self.hold()
        return self

    def __exit__(self, *exc):
        self.release()


@pytest.fixture
def pause(limited):
    p = Pause(limited.pause_file)
    yield p
    p.release()


@pytest.fixture(scope="module")
def stats(limited):
    import grpc

    from genapi.v1 import admin_service_pb2 as pb
    from genapi.v1 import admin_service_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(limited.grpc_target)
    stub = pb_grpc.AdminServiceStub(channel)
    yield lambda: stub.GetEngineStats(pb.GetEngineStatsRequest(model=MODEL)).engines[0]
    channel.close()


@pytest.fixture(scope="module")
def oa(limited):
    return limited.sdk()


def idle(s) -> bool:
    return (s.active_sequences, s.queued_requests, s.cache_slots_used, s.budget_tokens_used) == (0, 0, 0, 0)


@pytest.fixture
def quiet(stats):
    assert wait_until(lambda: idle(stats()), 30), stats()
    return stats()


def chat(oa, max_tokens: int, **kw):
    return oa.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=max_tokens, extra_body=LONG, **kw)


def assert_rate_limited(err: openai.RateLimitError, reason: str) -> None:
    assert err.status_code == 429
    assert err.type == "rate_limit_error" and err.code == "engine_overloaded"
    assert reason in err.message
    body = err.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    retry_after = err.response.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, err.response.headers
    assert err.response.headers.get("x-should-retry") != "false"


def open_stream(svc, max_tokens: int):
    """A streaming chat completion on a raw socket: the test closes it when it wants."""
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, "stream": True,
                       **LONG}).encode()
    host, port = svc.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def read_frames(sock, n: int) -> bytes:
    buf = b""
    while buf.count(b"data: {") < n:
        data = sock.recv(65536)
        assert data, buf[-300:]
        buf += data
    assert buf.startswith(b"HTTP/1.1 200"), buf[:300]
    return buf


class Background:
    """Non-streaming requests on threads, one at a time, each admitted before the next is
    sent (checked through the engine counters)."""

    def __init__(self, oa, stats):
        self.oa, self.stats = oa, stats
        self.results: list = []
        self.threads: list[threading.Thread] = []

    def start(self, max_tokens: int, until) -> None:
        def run():
            try:
                self.results.append(chat(self.oa, max_tokens))
            except Exception as e:  # asserted in join()
                self.results.append(e)
        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)
        assert wait_until(lambda: until(self.stats()), 30), self.stats()

    def join(self, max_tokens: int) -> None:
        for t in self.threads:
            t.join(120)
        assert len(self.results) == len(self.threads)
        for r in self.results:
            assert not isinstance(r, Exception), r
            assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == max_tokens


# ---- L2: burst ---------------------------------------------------------------------------

def test_burst_admits_batch_plus_queue_and_refuses_the_rest_with_429(oa, stats, quiet, pause):
    n, max_tokens = 10, 300
    barrier = threading.Barrier(n, timeout=30)
    results: list = [None] * n

    def one(i):
        barrier.wait()
        try:
            results[i] = ("ok", chat(oa, max_tokens))
        except openai.RateLimitError as e:
            results[i] = ("429", e)
        except Exception as e:
            results[i] = ("other", e)

    with pause:  # the admitted ones are held, so every refusal has to come back while they wait
        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()

        def settled():  # every request is answered or inside the engine, which filled its slots
            s = stats()
            inside = s.active_sequences + s.queued_requests
            return (sum(r is not None for r in results) + inside == n
                    and s.active_sequences == min(MAX_BATCH, inside))
        assert wait_until(settled, 60), (results, stats())
        held = stats()
        answered = [r for r in results if r is not None]
        assert answered and all(r[0] == "429" for r in answered), answered  # refused at once, not after waiting
        # Exactly two running and two waiting: max_queue counts only the requests that find
        # no free slot, however far the burst runs ahead of the scheduler.
        assert (held.active_sequences, held.queued_requests) == (MAX_BATCH, MAX_QUEUE), held
    for t in threads:
        t.join(120)

    assert not [r for r in results if r[0] == "other"], results  # only 200 or 429: no 5xx
    admitted = [r for r in results if r[0] == "ok"]
    refused = [r for r in results if r[0] == "429"]
    assert len(admitted) == held.active_sequences + held.queued_requests
    assert len(refused) == n - len(admitted)
    for _, resp in admitted:
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage.completion_tokens == max_tokens
        assert resp.choices[0].message.content
    for _, err in refused:
        assert_rate_limited(err, "queue is full")

    after = stats()
    assert after.requests_rejected == quiet.requests_rejected + len(refused)
    assert after.requests_finished == quiet.requests_finished + len(admitted)
    assert wait_until(lambda: idle(stats()), 15), stats()


def test_streaming_request_refused_by_admission_is_a_plain_http_429(limited, oa, stats, quiet, pause):
    pause.hold()  # the four admitted stay where they are until the refusals are checked
    bg = Background(oa, stats)
    bg.start(300, lambda s: s.active_sequences == 1)
    bg.start(300, lambda s: s.active_sequences == 2)
    bg.start(300, lambda s: s.queued_requests == 1)
    bg.start(300, lambda s: s.queued_requests == 2)

    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, "stream": True}
    with httpx.stream("POST", f"{limited.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        raw = r.read()
    assert r.status_code == 429, raw
    assert r.headers["content-type"].startswith("application/json")
    assert b"data:" not in raw  # no SSE byte before the error
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1

    with pytest.raises(openai.RateLimitError) as ei:  # the SDK sees it when it opens the stream
        chat(oa, 5, stream=True)
    assert_rate_limited(ei.value, "queue is full")
    assert stats().requests_rejected == quiet.requests_rejected + 2

    pause.release()
    bg.join(300)  # the admitted four are unaffected
    assert wait_until(lambda: idle(stats()), 15), stats()
    assert stats().requests_finished == quiet.requests_finished + 4


def test_client_leaving_while_queued_frees_its_queue_place_and_budget(limited, oa, stats, quiet, pause):
    pause.hold()  # the running two cannot finish (and free a slot) while this one waits
    bg = Background(oa, stats)
    bg.start(300, lambda s: s.active_sequences == 1)
    bg.start(300, lambda s: s.active_sequences == 2)
    running_budget = stats().budget_tokens_used

    sock = open_stream(limited, 300)
    try:
        read_frames(sock, 1)  # 200 + the role chunk arrive while the request waits
        s = stats()
        assert s.queued_requests == 1 and s.active_sequences == 2
        assert s.budget_tokens_used > running_budget
    finally:
        sock.close()
    assert wait_until(lambda: stats().queued_requests == 0, 15), stats()
    s = stats()
    assert s.requests_aborted == quiet.requests_aborted + 1
    assert s.active_sequences == 2  # the running two go on
    assert s.budget_tokens_used == running_budget  # its share of the budget is back

    pause.release()
    bg.join(300)
    assert wait_until(lambda: idle(stats()), 15), stats()
    assert stats().requests_finished == quiet.requests_finished + 2


def test_cheap_refusals_come_before_the_prompt_is_templated_and_tokenized(limited, oa, stats, quiet, pause):
    """A prompt longer than the context is only found out by tokenizing it (a 400
    `context_length_exceeded`); while the queue is full, or the budget cannot hold the
    request's max_tokens, the same request is a 429: it was refused before its prompt was
    ever templated or tokenized, which is what keeps refusals fast under a burst."""
    too_long = [{"role": "user", "content": "harbour " * 3000}]  # > 2048 tokens
    pause.hold()
    bg = Background(oa, stats)
    bg.start(300, lambda s: s.active_sequences == 1)
    bg.start(300, lambda s: s.active_sequences == 2)
    room = BUDGET - stats().budget_tokens_used
    with pytest.raises(openai.RateLimitError) as ei:  # slots busy, queue empty: the budget
        oa.chat.completions.create(model=MODEL, messages=too_long, max_tokens=room + 1)
    assert_rate_limited(ei.value, "token budget")
    bg.start(300, lambda s: s.queued_requests == 1)
    bg.start(300, lambda s: s.queued_requests == 2)
    with pytest.raises(openai.RateLimitError) as ei:
        oa.chat.completions.create(model=MODEL, messages=too_long, max_tokens=5)
    assert_rate_limited(ei.value, "queue is full")
    assert stats().requests_rejected == quiet.requests_rejected + 2

    pause.release()
    bg.join(300)
    with pytest.raises(openai.BadRequestError) as ei:  # with room, it is tokenized: the 400 it is
        oa.chat.completions.create(model=MODEL, messages=too_long, max_tokens=5)
    assert ei.value.code == "context_length_exceeded"
    assert wait_until(lambda: idle(stats()), 15), stats()


# ---- token budget ------------------------------------------------------------------------

def test_token_budget_refuses_exactly_past_the_limit(limited, oa, stats, quiet, pause):
    pause.hold()  # neither stream may finish (and give its budget back) during the test
    a = open_stream(limited, 900)
    socks = [a]
    try:
        read_frames(a, 1)
        assert wait_until(lambda: stats().active_sequences == 1, 30), stats()
        used = stats().budget_tokens_used
        prompt = used - 900  # the budget charges prompt + max_tokens
        assert 0 < prompt < 100
        room = BUDGET - used  # what is left of the budget, prompt included

        with pytest.raises(openai.RateLimitError) as ei:
            chat(oa, room - prompt + 1)  # one token too many
        assert_rate_limited(ei.value, "token budget")
        assert stats().requests_rejected == quiet.requests_rejected + 1

        c = open_stream(limited, room - prompt)  # fills the budget exactly: admitted
        socks.append(c)
        read_frames(c, 1)
        assert wait_until(lambda: stats().active_sequences == 2, 30), stats()
        s = stats()
        assert s.budget_tokens_used == BUDGET and s.active_sequences == 2
        assert s.requests_rejected == quiet.requests_rejected + 1
    finally:
        for s in socks:
            s.close()
    assert wait_until(lambda: idle(stats()), 15), stats()
    assert stats().requests_aborted == quiet.requests_aborted + 2


def test_request_larger_than_the_budget_runs_alone_when_idle(limited, oa, stats, quiet, pause):
    pause.hold()  # it cannot finish while the next request is tried
    big = open_stream(limited, 1400)  # prompt + 1400 > 1300: more than the whole budget
    try:
        buf = read_frames(big, 1)
        assert b'"error"' not in buf
        # admitted and holding its slot (first token out), not stuck waiting for room
        assert wait_until(lambda: stats().active_sequences == 1, 30), stats()
        s = stats()
        assert s.active_sequences == 1 and s.budget_tokens_used > BUDGET
        with pytest.raises(openai.RateLimitError) as ei:  # nothing else fits next to it
            chat(oa, 1)
        assert_rate_limited(ei.value, "token budget")
    finally:
        big.close()
    assert wait_until(lambda: idle(stats()), 15), stats()
    s = stats()
    assert s.requests_rejected == quiet.requests_rejected + 1
    assert s.requests_aborted == quiet.requests_aborted + 1


def test_serves_normally_after_the_overload(oa, stats, quiet):
    resp = chat(oa, 16)
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 16
    stream = chat(oa, 16, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 16
    assert wait_until(lambda: idle(stats()), 15), stats()
    s = stats()
    assert s.requests_finished == quiet.requests_finished + 2
    assert s.requests_rejected == quiet.requests_rejected
