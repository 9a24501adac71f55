"""shim.streaming: the gRPC pump thread and client-disconnect detection."""
from __future__ import annotations

import queue
import socket
import threading
import time

import grpc
import pytest

from shim.streaming import END, DisconnectWatch, EventPump, client_gone, socket_closed_by_peer


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
