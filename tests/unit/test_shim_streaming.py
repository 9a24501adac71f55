"""shim.streaming: the gRPC pump thread, client-disconnect detection, and CoreStream
(first event, non-streaming drain, SSE body) with fake calls and real sockets."""
from __future__ import annotations

import queue
import socket
import threading
import time

import grpc
import pytest

from shim import sse
from shim.errors import APIError, error_envelope
from shim.streaming import (
    END,
    HANDOFF,
    WATCHDOG,
    MAX_EVENTS_PER_WRITE,
    ClientClosed,
    CoreStream,
    DisconnectWatch,
    EventPump,
    client_gone,
    socket_closed_by_peer,
)


class FakeStreamCall:
    """An iterable call: yields items (raising exceptions found among them) until cancelled."""

    def __init__(self, items, block_at_end=False):
        self.items = list(items)
        self.block_at_end = block_at_end
        self.cancelled = threading.Event()

    def __iter__(self):
        for item in self.items:
            if self.cancelled.is_set():
                raise Cancelled()
            if isinstance(item, BaseException):
                raise item
            yield item
        if self.block_at_end:
            self.cancelled.wait(10)
            raise Cancelled()

    def cancel(self):
        self.cancelled.set()
        return True


class Cancelled(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.CANCELLED


def drain(pump, timeout=2.0):
    out = []
    while True:
        item = pump.get(timeout=timeout)
        out.append(item)
        if item is END:
            return out


def test_pump_delivers_events_then_end():
    pump = EventPump(FakeStreamCall([1, 2, 3]))
    assert drain(pump) == [1, 2, 3, END]
    assert pump.join(1)


def test_pump_delivers_the_error_then_end():
    err = Cancelled()
    pump = EventPump(FakeStreamCall([1, err]))
    assert drain(pump) == [1, err, END]


def test_pump_cancel_ends_the_thread():
    call = FakeStreamCall([1], block_at_end=True)
    pump = EventPump(call)
    assert pump.get(timeout=1) == 1
    with pytest.raises(queue.Empty):
        pump.get(timeout=0.05)
    pump.cancel()
    items = drain(pump)
    assert isinstance(items[0], Cancelled) and items[-1] is END
    assert pump.join(1)


def test_pump_unexpected_exception_is_reported():
    boom = ValueError("boom")
    pump = EventPump(FakeStreamCall([boom]))
    assert drain(pump) == [boom, END]


def test_pump_hands_the_call_over_after_the_first_event_that_asks():
    pump = EventPump(FakeStreamCall(["started", "t1", "t2", Cancelled()]), hand_off=lambda ev: ev != "started")
    assert [pump.get(timeout=2) for _ in range(3)] == ["started", "t1", HANDOFF]
    assert pump.join(1)  # the pump thread is gone: the request thread reads on
    rest = list(pump.direct())
    assert rest[0] == "t2" and isinstance(rest[1], Cancelled) and rest[2] is END


def tcp_pair():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    server.close()
    return client, conn


def test_socket_open_idle_and_with_pending_data_is_alive():
    client, conn = tcp_pair()
    try:
        assert socket_closed_by_peer(conn) is False
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")  # pipelined request: still alive, not consumed
        time.sleep(0.05)
        assert socket_closed_by_peer(conn) is False
        assert conn.recv(100).startswith(b"GET")
    finally:
        client.close()
        conn.close()


def test_socket_closed_by_peer_is_detected():
    client, conn = tcp_pair()
    client.close()
    time.sleep(0.05)
    assert socket_closed_by_peer(conn) is True
    conn.close()
    assert socket_closed_by_peer(conn) is False  # closed fd: unknown, not "gone"


def test_socket_reset_by_peer_is_detected():
    import struct

    client, conn = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    time.sleep(0.05)
    assert socket_closed_by_peer(conn) is True
    conn.close()


def test_client_gone_without_gunicorn_socket():
    assert client_gone({}) is False


def test_disconnect_watch_rate_limits():
    client, conn = tcp_pair()
    watch = DisconnectWatch({"gunicorn.socket": conn}, interval=10)
    client.close()
    time.sleep(0.05)
    assert watch.gone() is False  # not due yet
    assert watch.gone(force=True) is True
    conn.close()


# --- CoreStream --------------------------------------------------------------------------

class Failed(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "details"


class SlowCall(FakeStreamCall):
    """Like FakeStreamCall; a float among the items is a pause of that many seconds (cut
    short by cancel)."""

    def __iter__(self):
        for item in self.items:
            if isinstance(item, float):
                if self.cancelled.wait(item):
                    raise Cancelled()
                continue
            if self.cancelled.is_set():
                raise Cancelled()
            yield item


def mapped(calls):
    def map_error(err, request_id=None):
        calls.append((err, request_id))
        return APIError(418, "mapped", "x_error", "p", "c")
    return map_error


def core_stream(call, environ=None, calls=None, poll_s=0.02, hand_off=None):
    return CoreStream(call, environ=environ or {}, request_id="rid-1", map_error=mapped([] if calls is None else calls),
                      poll_s=poll_s, hand_off=hand_off)


def closed_client_environ():
    client, conn = tcp_pair()
    client.close()
    deadline = time.monotonic() + 5
    while not socket_closed_by_peer(conn) and time.monotonic() < deadline:  # the FIN has arrived
        time.sleep(0.01)
    return {"gunicorn.socket": conn}, conn


def on_event(event):
    return f"<{event}>".encode()


def finish():
    return b"<fin>" + sse.DONE


def test_client_closed_is_the_exact_499_envelope():
    err = ClientClosed()
    assert isinstance(err, APIError) and err.status == 499 and err.headers == {}
    assert err.envelope() == error_envelope("The client closed the connection.", "invalid_request_error", None,
                                            "client_closed_request")


def test_first_then_drain_collects_every_event_in_order():
    call = FakeStreamCall(["a", "b", "c"])
    cs = core_stream(call)
    first = cs.first()
    assert first == "a" and not call.cancelled.is_set()
    got = []
    cs.drain(first, got.append)
    assert got == ["a", "b", "c"]


def test_first_maps_an_rpc_error_with_the_request_id_and_cancels():
    calls = []
    err = Failed(grpc.StatusCode.NOT_FOUND)
    call = FakeStreamCall([err])
    with pytest.raises(APIError) as info:
        core_stream(call, calls=calls).first()
    assert info.value.status == 418 and calls == [(err, "rid-1")]
    assert call.cancelled.is_set()


@pytest.mark.parametrize("items", [[], [ValueError("boom")]])
def test_first_without_events_or_with_a_non_rpc_failure_is_a_500(items):
    call = FakeStreamCall(items)
    with pytest.raises(APIError) as info:
        core_stream(call).first()
    assert info.value.status == 500 and info.value.code is None and info.value.message == "internal error"
    assert not isinstance(info.value, ClientClosed)
    assert call.cancelled.is_set()


def test_first_with_the_client_gone_is_499_and_cancels():
    environ, conn = closed_client_environ()
    call = SlowCall([5.0, "a"])
    t0 = time.monotonic()
    try:
        with pytest.raises(ClientClosed) as info:
            core_stream(call, environ).first()
    finally:
        conn.close()
    assert info.value.status == 499 and time.monotonic() - t0 < 2
    assert call.cancelled.is_set()


def test_drain_with_the_client_gone_is_the_same_499_and_cancels():
    client, conn = tcp_pair()
    call = FakeStreamCall(["a"], block_at_end=True)
    cs = core_stream(call, {"gunicorn.socket": conn})
    first = cs.first()
    client.close()
    got = []
    try:
        with pytest.raises(ClientClosed) as info:
            cs.drain(first, got.append)
    finally:
        conn.close()
    assert info.value.envelope()["error"]["code"] == "client_closed_request"
    assert got == ["a"] and call.cancelled.is_set()


def test_drain_raises_the_mapped_error_of_a_failure_after_events():
    calls = []
    err = Failed(grpc.StatusCode.DEADLINE_EXCEEDED)
    cs = core_stream(FakeStreamCall(["a", "b", err]), calls=calls)
    got = []
    with pytest.raises(APIError) as info:
        cs.drain(cs.first(), got.append)
    assert info.value.status == 418 and got == ["a", "b"] and calls == [(err, "rid-1")]


def body_chunks(resp):
    return list(iter(resp.response))


def test_sse_response_headers_and_body():
    cs = core_stream(FakeStreamCall(["a", "b"]))
    resp = cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == sse.CONTENT_TYPE
    assert resp.headers["Cache-Control"] == "no-cache" and resp.headers["X-Accel-Buffering"] == "no"
    assert b"".join(body_chunks(resp)) == b"<a><b><fin>" + sse.DONE


@pytest.mark.parametrize("hand_off", [None, lambda ev: ev != "a"])
def test_drain_and_sse_read_every_event_with_or_without_a_hand_off(hand_off):
    cs = core_stream(FakeStreamCall(["a", "b", "c", "d"]), hand_off=hand_off)
    got = []
    cs.drain(cs.first(), got.append)
    assert got == ["a", "b", "c", "d"]
    cs = core_stream(FakeStreamCall(["a", "b", "c", Failed(grpc.StatusCode.INTERNAL)]), hand_off=hand_off)
    raw = b"".join(body_chunks(cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)))
    assert raw.startswith(b"<a><b><c>data: {") and raw.endswith(sse.DONE)


def test_a_handed_off_stream_blocked_in_grpc_is_cancelled_when_its_client_leaves():
    environ, conn = closed_client_environ()
    call = FakeStreamCall(["a", "b"], block_at_end=True)  # then waits (a paused engine) until cancelled
    cs = core_stream(call, environ={"gunicorn.socket": None}, hand_off=lambda ev: ev != "a")
    cs.environ = environ  # the client leaves after its request was taken
    body = cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)
    t0 = time.monotonic()
    chunks = body_chunks(body)  # ends: the watchdog cancelled the call the thread waited in
    assert call.cancelled.is_set() and time.monotonic() - t0 < 5
    assert b"".join(chunks).startswith(b"<a><b>") and WATCHDOG.watched() == 0
    conn.close()


def test_sse_error_after_first_byte_is_an_error_frame_then_done():
    calls = []
    err = Failed(grpc.StatusCode.INTERNAL)
    cs = core_stream(FakeStreamCall(["a", "b", err]), calls=calls)
    raw = b"".join(body_chunks(cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)))
    envelope = error_envelope("mapped", "x_error", "p", "c")
    assert raw == b"<a><b>" + sse.frame(envelope) + sse.DONE
    assert calls == [(err, "rid-1")]


def test_sse_non_rpc_failure_is_a_generic_500_frame():
    cs = core_stream(FakeStreamCall(["a", ValueError("secret")]))
    raw = b"".join(body_chunks(cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)))
    assert raw == b"<a>" + sse.frame(error_envelope("internal error", "server_error")) + sse.DONE


def test_sse_custom_on_error():
    cs = core_stream(FakeStreamCall(["a", Failed(grpc.StatusCode.INTERNAL)]))
    resp = cs.sse_response(cs.first(), on_event, finish, keepalive_s=10,
                           on_error=lambda e: f"[{e.status}]".encode())
    assert b"".join(body_chunks(resp)) == b"<a>[418]"


def test_sse_coalesces_queued_events_up_to_the_cap():
    n = 2 * MAX_EVENTS_PER_WRITE + 5
    call = FakeStreamCall(range(n + 1))
    cs = core_stream(call)
    first = cs.first()
    assert cs._pump.join(2)  # everything is queued before the body starts
    chunks = body_chunks(cs.sse_response(first, on_event, finish, keepalive_s=10))
    assert [c.count(b"<") for c in chunks] == [1, MAX_EVENTS_PER_WRITE, MAX_EVENTS_PER_WRITE, 5 + 1]
    assert chunks[-1].endswith(b"<fin>" + sse.DONE)
    assert b"".join(chunks) == b"".join(on_event(i) for i in range(n + 1)) + finish()


def test_sse_keepalive_while_the_core_is_quiet():
    cs = core_stream(SlowCall(["a", 0.3, "b"]))
    chunks = body_chunks(cs.sse_response(cs.first(), on_event, finish, keepalive_s=0.05))
    assert chunks[0] == b"<a>" and chunks[-1] == b"<b><fin>" + sse.DONE
    assert len(chunks[1:-1]) >= 2 and all(c == sse.KEEPALIVE for c in chunks[1:-1])


def test_sse_client_gone_mid_stream_ends_without_done_and_cancels():
    client, conn = tcp_pair()
    call = FakeStreamCall(["a"], block_at_end=True)
    cs = core_stream(call, {"gunicorn.socket": conn})
    resp = cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)
    body = iter(resp.response)
    assert next(body) == b"<a>"
    client.close()
    try:
        rest = list(body)
    finally:
        conn.close()
    assert rest == [] and call.cancelled.is_set()


def test_closing_an_unstarted_sse_body_cancels_the_call():
    call = FakeStreamCall(["a"], block_at_end=True)
    cs = core_stream(call)
    resp = cs.sse_response(cs.first(), on_event, finish, keepalive_s=10)
    assert not call.cancelled.is_set()
    resp.close()
    assert call.cancelled.is_set()


class ThreadRecordingCall(FakeStreamCall):
    def __iter__(self):
        self.reader = threading.current_thread()
        return super().__iter__()


def test_without_a_pump_the_request_thread_reads_the_call():
    call = ThreadRecordingCall(["a", "b", "c"])
    cs = CoreStream(call, environ={}, request_id="rid-1", pump=False)
    first = cs.first()
    got = []
    cs.drain(first, got.append)
    assert got == ["a", "b", "c"] and call.reader is threading.current_thread()


class WaitsForCancel(FakeStreamCall):
    """Yields its items, then waits for cancel() (`woke`: whether cancel came, not the timeout)."""

    def __iter__(self):
        yield from self.items
        self.woke = self.cancelled.wait(60)
        raise Cancelled()


def test_without_a_pump_the_watchdog_cancels_the_call_of_a_client_that_left():
    environ, conn = closed_client_environ()
    call = WaitsForCancel(["started"])
    cs = CoreStream(call, environ=environ, request_id="rid-2", map_error=mapped([]), pump=False)
    assert cs.first() == "started"
    with pytest.raises(ClientClosed):
        cs.drain("started", lambda event: None)
    assert call.woke  # the watchdog's cancel ended the wait inside the call
    conn.close()
