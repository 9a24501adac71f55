"""Plumbing between a server-streaming gRPC call and a WSGI worker thread.

`EventPump` drains the call on a daemon thread into a queue, so the request thread can
wait with a timeout (keep-alive frames, disconnect checks) instead of blocking inside
grpc. `client_gone(environ)` tells whether the HTTP client has closed its socket.
"""
from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time

import grpc

log = logging.getLogger("genapi.shim")

END = object()  # the stream finished (after its last event or its error)


class EventPump:
    """Reads `call` on a daemon thread. `get()` returns an event, the RpcError that
    ended the call, or END; it raises queue.Empty when nothing arrived in time."""

    def __init__(self, call):
        self._call = call
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="grpc-pump", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._call:
                self._queue.put(event)
        except grpc.RpcError as e:
            self._queue.put(e)
        except Exception as e:  # never let the thread die silently
            log.exception("reading the core stream failed")
            self._queue.put(e)
        finally:
            self._queue.put(END)

    def get(self, timeout: float):
        return self._queue.get(timeout=timeout)

    def cancel(self) -> None:
        """Cancels the call (no-op once it has finished); the pump thread then ends."""
        try:
            self._call.cancel()
        except Exception:  # pragma: no cover - defensive
            log.debug("cancel failed", exc_info=True)

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()


_POLL_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)


def socket_closed_by_peer(sock) -> bool:
    """True when the peer has closed or reset `sock`; False when open or unknown.

    Never consumes data: a readable socket is peeked (a pipelined request keeps the
    connection "alive")."""
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN | _POLL_GONE)
        events = poller.poll(0)
    except (OSError, ValueError):
        return False
    if not events:
        return False
    mask = events[0][1]
    if mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except ValueError:  # TLS sockets refuse flags: unknown, assume open
        return False
    except OSError:  # reset
        return True


def send_immediately(environ: dict) -> None:
    """Disables Nagle's algorithm on this request's socket: SSE frames are small writes,
    and Nagle would hold each one back until the previous one is acknowledged."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (unix socket)
            pass


def client_gone(environ: dict) -> bool:
    """Whether the HTTP client of this WSGI request went away (gunicorn only)."""
    sock = environ.get("gunicorn.socket")
    return sock is not None and socket_closed_by_peer(sock)


class DisconnectWatch:
    """Rate-limited `client_gone` for loops that also handle a flow of events."""

    def __init__(self, environ: dict, interval: float):
        self._environ = environ
        self._interval = interval
        self._next = time.monotonic() + interval

    def gone(self, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self._interval
        return client_gone(self._environ)
