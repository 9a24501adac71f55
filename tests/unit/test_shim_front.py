"""The shim's HTTP front, piece by piece (issue 18): thread-pool sizing against the core's
capacity, the request scanner of the worker's event loop, the strict chunked reader, the
read deadline, and the refusals' wire form. tests/integration/test_http_front.py runs them
together behind a real gunicorn.
"""
from __future__ import annotations

import importlib
import json
import socket
import time

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData
from gunicorn.http.unreader import Unreader

from genapi.config import ENGINE_ADMISSION_DEFAULTS, Config, ModelConfig, Task, load_config
from shim.gunicorn_http import DeadlineUnreader, RequestTimeout, ShimParser, ShimRequest, read_deadline
from shim.request_scan import RequestScan


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for var in [v for v in os.environ if v.startswith("GENAPI_")]:
        monkeypatch.delenv(var)


# ---- capacity: the shim holds at least what the core holds -----------------------------

def test_default_config_shim_capacity_covers_the_core(clean_env):
    """With the bundled config, gunicorn's workers x threads admit at least every request
    the core can hold (running + waiting), so the core's admission control decides."""
    from server.engines.torch.embed import EmbeddingEngine
    from server.engines.torch.engine import TorchEngine
    from server.engines.torch.whisper import WhisperEngine
    from server.registry import Registry

    import shim.gunicorn_conf as conf

    conf = importlib.reload(conf)
    core = 0
    for engine in Registry(load_config().models).engines():  # built, not started
        if isinstance(engine, TorchEngine):
            core += engine.max_batch + engine.max_queue
        else:
            assert isinstance(engine, (EmbeddingEngine, WhisperEngine))
            core += engine.max_queue
    # the defaults: 32 slots + 256 waiting; one MiniLM engine, 256 in flight; Whisper, 64
    assert core >= 288 + 256 + 64
    assert conf.workers * conf.threads >= core, (conf.workers, conf.threads, core)
    assert conf.worker_class == "shim.worker.ShimWorker"


def test_engine_admission_defaults_are_the_engines_own():
    from server.engines.torch.engine import TorchEngine
    from server.engines.trtllm import mapping

    torch_engine = TorchEngine("m", "", {})
    assert ENGINE_ADMISSION_DEFAULTS["torch"] == (torch_engine.max_batch, torch_engine.max_queue)
    assert ENGINE_ADMISSION_DEFAULTS["trtllm"] == (mapping.DEFAULT_MAX_BATCH, mapping.DEFAULT_MAX_QUEUE)


def test_auto_threads_follow_the_models(tmp_path, clean_env, monkeypatch):
    two = [ModelConfig("a", options={"max_batch": 8, "max_queue": 100}), ModelConfig("b", backend="trtllm"),
           ModelConfig("e", task=Task.EMBEDDING, path="/m"), ModelConfig("r", task=Task.RERANK, path="/m")]
    cfg = Config(workers=4, models=two)
    # chat: running + waiting; embedding and rerank share one engine (same path): 256 in flight
    assert cfg.core_capacity == 108 + (64 + 256) + 256
    assert cfg.shim_threads == -(-684 // 4) + 32
    assert cfg.workers * cfg.shim_threads >= cfg.core_capacity
    assert Config(workers=4, threads=5, models=two).shim_threads == 5  # explicit wins
    assert Config(workers=2).shim_threads == 32  # no models (a shim in front of remote cores)

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text("[shim]\nthreads = -1\n")
    with pytest.raises(ValueError, match="threads"):
        load_config(cfg_file)
    cfg_file.write_text("[shim]\nread_timeout_s = 7.5\n")
    assert load_config(cfg_file).read_timeout_s == 7.5
    monkeypatch.setenv("GENAPI_READ_TIMEOUT_S", "2")
    assert load_config(cfg_file).read_timeout_s == 2.0
    monkeypatch.setenv("GENAPI_READ_TIMEOUT_S", "0")
    with pytest.raises(ValueError, match="read_timeout_s"):
        load_config(cfg_file)


# ---- the scanner: when a thread may take the request -------------------------------------

HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def fed(data: bytes, limit: int = 1 << 20, piece: int | None = None) -> bool:
    scan = RequestScan(limit)
    pieces = [data] if piece is None else [data[i:i + piece] for i in range(0, len(data), piece)]
    ready = [scan.feed(p) for p in pieces]
    assert not any(ready[:-1]) or ready[-1]  # once ready, stays ready
    return ready[-1]


@pytest.mark.parametrize("data, ready", [
    (b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n", True),  # no body
    (b"GET /v1/models HTTP/1.1\r\nHost: t\r\n", False),  # head still arriving
    (HEAD + b"Content-Length: 2\r\n\r\n{", False),
    (HEAD + b"Content-Length: 2\r\n\r\n{}", True),
    (HEAD + b"content-length:2\r\n\r\n{}", True),  # any case, no space
    (HEAD + b"Content-Length: 0\r\n\r\n", True),
    (CHUNKED + b"2\r\n{}\r\n", False),
    (CHUNKED + b"2\r\n{}\r\n0\r\n", False),
    (CHUNKED + b"2\r\n{}\r\n0\r\n\r\n", True),
    (CHUNKED + b"2;ext=1\r\n{}\r\n0\r\nX-Trailer: v\r\n", False),
    (CHUNKED + b"2;ext=1\r\n{}\r\n0\r\nX-Trailer: v\r\n\r\n", True),
    (CHUNKED + b"000000000000000000002\r\n{}\r\n0\r\n\r\n", True),  # leading zeros are fine
    # malformed: handed over at once, for the parser to refuse
    (b"GET / HTTP/1.1\nHost: t\n", True),  # bare LF in the head
    (CHUNKED + b"2\n{}", True),  # bare LF after a chunk size
    (CHUNKED + b"ffffffffffffffffffffffff\r\n{}", True),  # chunk size over 64 bits
    (CHUNKED + b"zz\r\n{}", True),  # not hex
    (CHUNKED + b"2\r\n{}\n", True),  # chunk data not ended by CRLF
    (CHUNKED + b"2\r\n{}x", True),
    (HEAD + b"Transfer-Encoding: xchunked\r\n\r\n", True),
    (HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n", True),
    (HEAD + b"Content-Length: two\r\n\r\n", True),
    (HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n", False),  # the front answers 100
    (HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}", True),
    (HEAD + b"Expect: the-moon\r\nContent-Length: 2\r\n\r\n", True),  # gunicorn answers 417
])
def test_scan_readiness(data, ready):
    assert fed(data) is ready
    assert fed(data, piece=1) is ready  # one byte at a time: the same answer


def test_scan_flags_a_client_waiting_for_100_continue():
    scan = RequestScan(1 << 20)
    assert not scan.feed(HEAD + b"expect: 100-Continue\r\nContent-Length: 2\r\n\r\n")
    assert scan.expects_continue
    http10 = RequestScan(1 << 20)
    assert not http10.feed(HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert not http10.expects_continue  # HTTP/1.0 ignores it (RFC 9110 10.1.1), as gunicorn does
    plain = RequestScan(1 << 20)
    assert not plain.feed(HEAD + b"Content-Length: 2\r\n\r\n") and not plain.expects_continue


def test_scan_hands_over_large_bodies_at_the_limit():
    big = HEAD + b"Content-Length: 100000\r\n\r\n" + b"x" * 5000
    assert fed(big, limit=4096)
    assert not fed(big, limit=1 << 20)
    chunk = CHUNKED + b"100000\r\n" + b"x" * 5000
    assert fed(chunk, limit=4096) and not fed(chunk, limit=1 << 20)


def test_scan_keeps_pipelined_bytes():
    one = b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n"
    scan = RequestScan(1 << 20)
    assert scan.feed(one + one[:10]) and bytes(scan.buf) == one + one[:10]


# ---- the strict chunked reader -----------------------------------------------------------

class Bytes(Unreader):
    """An unreader over fixed bytes that fails the test if asked for more: a reader that
    would wait for the client is a reader that would hold a thread."""

    def __init__(self, data: bytes, eof: bool = False):
        super().__init__()
        self.data, self.eof = data, eof

    def chunk(self, size_hint=None):
        if self.data is None:
            if self.eof:
                return b""
            raise AssertionError("the reader waited for more bytes")
        data, self.data = self.data, None
        return data


def request(data: bytes, eof: bool = False) -> ShimRequest:
    return ShimRequest(GunicornConfig(), Bytes(data, eof), ("127.0.0.1", 1))


def test_valid_chunked_body_reads_whole():
    req = request(CHUNKED + b"2\r\n{}\r\n3;x=y\r\nabc\r\n0\r\nX-T: v\r\n\r\n")
    assert req.body.read() == b"{}abc"
    assert not req.should_close()


@pytest.mark.parametrize("body, error", [
    (b"2\n{}\n0\n\n", InvalidChunkSize),  # bare LF ends the size line
    (b"2\n", InvalidChunkSize),
    (b"ffffffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", InvalidChunkSize),  # over 64 bits
    (b"fffffffffffffffff", InvalidChunkSize),  # ... refused before its line even ends
    (b"2\r\n{}\n0\r\n\r\n", ChunkMissingTerminator),
    (b"2\r\n{}\n", ChunkMissingTerminator),  # no waiting for a second byte
])
def test_malformed_chunks_fail_at_once_and_close_the_connection(body, error):
    req = request(CHUNKED + body)
    with pytest.raises(error):
        req.body.read()
    assert req.should_close()  # the response says Connection: close


def test_truncated_chunked_body_closes_the_connection():
    req = request(CHUNKED + b"5\r\n{}", eof=True)  # the client left mid-body
    with pytest.raises(NoMoreData):
        req.body.read()
    assert req.should_close()


# ---- the read deadline ---------------------------------------------------------------------

def test_read_deadline_grows_with_what_arrived():
    assert read_deadline(100.0, 0, 30) == 130.0
    assert read_deadline(100.0, 64 * 1024 * 10, 30) == 140.0


def test_deadline_unreader_times_out_and_restores_the_socket_timeout():
    a, b = socket.socketpair()
    with a, b:
        u = DeadlineUnreader(a, read_timeout_s=0.3)
        u.arm()
        assert a.gettimeout() == 0.3
        b.sendall(b"abc")
        assert u.chunk() == b"abc" and u.received == 3
        assert a.gettimeout() == 0.3  # what sends get: bounded too
        t0 = time.monotonic()
        with pytest.raises(RequestTimeout):
            u.chunk()
        assert 0.2 < time.monotonic() - t0 < 1.0
        u.begin(started=time.monotonic() - 10)  # a request whose deadline has passed
        with pytest.raises(RequestTimeout):
            u.chunk()


def test_parser_answers_408_when_the_head_does_not_arrive():
    a, b = socket.socketpair()
    with a, b:
        parser = ShimParser(GunicornConfig(), a, ("127.0.0.1", 1), read_timeout_s=0.3)
        b.sendall(b"GET / HTTP/1.1\r\nHost")
        with pytest.raises(StopIteration):
            next(parser)
        b.settimeout(2)
        head, _, body = b.recv(65536).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close" in head
        assert json.loads(body)["error"]["code"] == "request_timeout"


def test_gunicorn_sends_no_second_100_continue():
    data = HEAD + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
    assert request(data)._expected_100_continue  # gunicorn would send `100 Continue`
    unreader = Bytes(data)
    unreader.continue_sent = True  # ... but the front already has
    req = ShimRequest(GunicornConfig(), unreader, ("127.0.0.1", 1))
    assert not req._expected_100_continue and req.body.read() == b"{}"


def test_parser_serves_bytes_already_buffered_without_reading():
    a, b = socket.socketpair()
    with a, b:
        parser = ShimParser(GunicornConfig(), a, ("127.0.0.1", 1), read_timeout_s=5)
        parser.unreader.unread(HEAD + b"Content-Length: 2\r\n\r\n{}")
        parser.unreader.begin(time.monotonic(), 100)
        req = next(parser)
        assert (req.method, req.path, req.body.read()) == ("POST", "/v1/chat/completions", b"{}")


# ---- the gunicorn internals the worker extends ------------------------------------------------

def test_gunicorn_internals_the_worker_overrides_are_unchanged():
    import inspect

    from gunicorn.http.body import Body, ChunkedReader
    from gunicorn.http.message import Message
    from gunicorn.arbiter import Arbiter
    from gunicorn.http.unreader import SocketUnreader
    from gunicorn.workers.base import Worker
    from gunicorn.workers.gthread import TConn, ThreadWorker

    def params(fn):
        return list(inspect.signature(fn).parameters)

    expected = {
        ThreadWorker.get_thread_pool: ["self"], ThreadWorker.enqueue_req: ["self", "conn"],
        ThreadWorker.finish_request: ["self", "conn", "fs"], ThreadWorker.handle_request: ["self", "req", "conn"],
        ThreadWorker.accept: ["self", "listener"], ThreadWorker.on_client_socket_readable: ["self", "conn", "client"],
        ThreadWorker.murder_pending: ["self"], ThreadWorker.wait_for_and_dispatch_events: ["self", "timeout"],
        TConn.__init__: ["self", "cfg", "sock", "client", "server"], TConn.init: ["self"],
        SocketUnreader.chunk: ["self", "size_hint"], Body._read_reader: ["self", "size"],
        ChunkedReader.parse_chunk_size: ["self", "unreader", "data"], ChunkedReader.parse_chunked: ["self", "unreader"],
        Message.set_body_reader: ["self"],
        # drain: the worker's signal handlers, and the master's (SIGINT drains like SIGTERM)
        Worker.init_signals: ["self"], Worker.handle_exit: ["self", "sig", "frame"],
        Worker.handle_quit: ["self", "sig", "frame"], Arbiter.handle_term: ["self"], Arbiter.handle_int: ["self"],
    }
    assert {fn.__qualname__: params(fn) for fn in expected} == {fn.__qualname__: p for fn, p in expected.items()}
    assert hasattr(TConn, "__init__") and "data_ready" in inspect.getsource(TConn.__init__)
    assert "take_buffered" in dir(SocketUnreader)
    # gthread's loop runs while `alive`, then closes its listeners: the drain keeps it alive
    assert "while self.alive:" in inspect.getsource(ThreadWorker.run)
    assert 'getattr(self, "handle_%s" % signame' in inspect.getsource(Arbiter.run)  # instance handlers win


# ---- the front's memory budget ---------------------------------------------------------------

def test_the_front_hands_over_the_request_that_takes_it_past_its_budget(monkeypatch):
    """Slow clients hold no thread while the worker's front holds less than its budget;
    beyond it a thread takes the request that crossed it (and reads the rest under its
    deadline), so the front's memory stays bounded. Its count follows every exit."""
    import selectors

    from shim import worker as front

    monkeypatch.setattr(front, "FRONT_BUDGET_BYTES", 1000)
    w = object.__new__(front.ShimWorker)  # the front's state only: no process, no pool
    w.cfg = GunicornConfig()
    w.cfg.set("threads", 4)
    w.reading, w.front_bytes, w.busy, w.nr_conns, w.drain_until = {}, 0, 0, 2, None
    w.read_timeout_s, w.poller = 30.0, selectors.DefaultSelector()
    handed = []
    w.enqueue_req = handed.append
    head = b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        first, second = (front.ShimConn(w.cfg, server, ("peer", 1), ("here", 2), 30.0) for server, _ in pairs)
        w._watch(first, head + b"x" * 500)
        assert (handed, w.front_bytes) == ([], len(head) + 500)  # still arriving: buffered
        w._watch(second, head + b"y" * 500)  # the two together: past the budget
        assert handed == [second] and w.front_bytes == len(head) + 500
        assert second.parser.unreader.take_buffered() == head + b"y" * 500  # the thread gets every byte
        pairs[0][1].close()  # the first client leaves
        w._recv(first)
        assert (w.reading, w.front_bytes) == ({}, 0)
    finally:
        for server, client in pairs:
            server.close()
            client.close()
        w.poller.close()


# ---- refusals on the wire ------------------------------------------------------------------

def parse_response(raw: bytes) -> tuple[int, dict, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_overloaded_answer_is_a_retryable_429():
    from shim.worker import overloaded_response

    status, headers, body = parse_response(overloaded_response())
    assert status == 429 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert headers["x-request-id"].startswith("req_")
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["code"] == "server_overloaded"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_shutting_down_answer_is_a_retryable_503():
    from shim.worker import shutting_down_response

    status, headers, body = parse_response(shutting_down_response())
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "server_shutting_down"
    assert set(body["error"]) == {"message", "type", "param", "code"}


def test_unsupported_transfer_coding_is_a_400_not_a_501():
    from shim import gunicorn_errors

    a, b = socket.socketpair()
    with a, b:
        gunicorn_errors._write_error(a, 501, "Not Implemented", "Unsupported transfer coding: 'xchunked'")
        status, headers, body = parse_response(b.recv(65536))
    assert status == 400 and headers["connection"] == "close" and "retry-after" not in headers
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "bad_request"


def test_gunicorns_refusals_quote_the_request_clipped():
    """gunicorn quotes a bad request line or header whole (up to its 8 KiB limits), in the
    answer and in its warning: both are clipped like any client value we quote."""
    import logging

    from shim import gunicorn_errors

    line = "GET /" + "a" * 8000 + "\n HTTP/1.1"
    a, b = socket.socketpair()
    with a, b:
        gunicorn_errors._write_error(a, 400, "Bad Request", f"Invalid Request Line '{line}'")
        raw = b""
        while not raw.endswith(b"}"):
            raw += b.recv(65536)
    _, _, body = parse_response(raw)
    message = body["error"]["message"]
    assert len(message) < 400 and "...(+" in message, message
    record = logging.LogRecord("gunicorn.error", logging.WARNING, __file__, 1,
                               "Invalid request from ip={ip}: {error}".format(ip="10.0.0.1", error=line), (), None)
    assert gunicorn_errors.ClipInvalidRequests().filter(record)
    logged = record.getMessage()
    assert logged.startswith("Invalid request from ip=10.0.0.1: GET /aaa") and len(logged) < 700
    assert "\n" not in logged  # one line
