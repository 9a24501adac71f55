"""Plumbing between a server-streaming gRPC call and a WSGI worker thread.

`EventPump` drains the call on a daemon thread into a queue, so the request thread can
wait with a timeout (keep-alive frames, disconnect checks) instead of blocking inside
grpc; an endpoint can have it hand the call over to the request thread once tokens flow
(`hand_off`), when events come often enough that waiting on grpc is no longer a problem
and the hand-over per event would be the main cost. `client_gone(environ)` tells whether
the HTTP client has closed its socket.

`CoreStream` is what a streaming endpoint uses on top of them: it awaits the first event
(the HTTP status is decided before the first byte), then either drains the call into an
accumulator (non-streaming JSON) or returns the SSE response. An endpoint supplies only
its own parts: the RpcError -> APIError mapping, event -> SSE bytes, the bytes at END,
and the accumulator. A client that goes away before the response is decided always gets
the same 499 (`ClientClosed`); one that goes away mid-stream cancels the call.
"""
from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import socket
import struct
import termios
import threading
import time
from typing import Any, Callable, Iterator

import grpc
from flask import Response

from shim import observe, ratelimit, sse
from shim.errors import GENERIC_MESSAGES, APIError, from_grpc_error

log = logging.getLogger("genapi.shim")

END = object()  # the stream finished (after its last event or its error)
HANDOFF = object()  # the pump stopped reading: the request thread reads the call itself now

POLL_S = 0.25  # how often a waiting request checks for a vanished client
MAX_EVENTS_PER_WRITE = 64  # events already queued are coalesced into one write


class EventPump:
    """Reads `call` on a daemon thread. `get()` returns an event, the RpcError that
    ended the call, or END; it raises queue.Empty when nothing arrived in time.

    `hand_off(event)`, when given, is asked after each event: once it is true the pump
    stops reading, `get()` returns HANDOFF after that event, and the request thread reads
    the rest itself with `direct()`. The pump is for the wait before the first token
    (keep-alive frames, a client leaving while the request queues); once tokens flow, one
    thread handing each event to another costs more CPU than the event itself
    (bench/frontend.py)."""

    def __init__(self, call, record=None, hand_off: Callable[[Any], bool] | None = None, thread: bool = True):
        self._call = call
        self._events = iter(call)  # one iterator, read by the pump, then (after HANDOFF) by direct()
        self._record = record  # shim.observe.RequestRecord: usage and first-token time
        self._hand_off = hand_off
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = None  # thread=False: no pump, direct() from the start
        if thread:
            self._thread = threading.Thread(target=self._run, name="grpc-pump", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        handed_off = False
        try:
            for event in self._events:
                if self._record is not None:
                    self._record.on_event(event)
                self._queue.put(event)
                if self._hand_off is not None and self._hand_off(event):
                    handed_off = True
                    self._queue.put(HANDOFF)
                    return
        except grpc.RpcError as e:
            self._queue.put(e)
        except Exception as e:  # never let the thread die silently
            log.exception("reading the core stream failed")
            self._queue.put(e)
        finally:
            if not handed_off:
                self._queue.put(END)

    def direct(self, environ: dict | None = None) -> Iterator[Any]:
        """After HANDOFF, on the request thread: the rest of the call's events, then the
        RpcError that ended it (if one did), then END. While it is read, the worker's
        watchdog cancels the call if the client of `environ` goes away (the thread may
        wait inside grpc for a long time: a paused or overloaded engine)."""
        if environ is not None:
            WATCHDOG.watch(self, environ)
        try:
            for event in self._events:
                if self._record is not None:
                    self._record.on_event(event)
                yield event
        except grpc.RpcError as e:
            yield e
        except Exception as e:
            log.exception("reading the core stream failed")
            yield e
        finally:
            WATCHDOG.unwatch(self)
        yield END

    def get(self, timeout: float):
        return self._queue.get(timeout=timeout)

    @property
    def call(self):
        return self._call

    def cancel(self) -> None:
        """Cancels the call (no-op once it has finished); the pump thread then ends."""
        WATCHDOG.unwatch(self)
        try:
            self._call.cancel()
        except Exception:  # pragma: no cover - defensive
            log.debug("cancel failed", exc_info=True)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()


class Watchdog:
    """One daemon thread per process that, every POLL_S, cancels the watched calls whose
    HTTP client went away: for request threads that read their call themselves (after a
    hand-off) and so cannot look at their socket while grpc holds them."""

    def __init__(self, interval_s: float = POLL_S):
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._watched: dict[EventPump, dict] = {}
        self._pid = 0  # the process whose thread runs (none survives a fork)

    def watch(self, pump: "EventPump", environ: dict) -> None:
        with self._lock:
            self._watched[pump] = environ
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="disconnect-watchdog", daemon=True).start()

    def unwatch(self, pump: "EventPump") -> None:
        with self._lock:
            self._watched.pop(pump, None)

    def watched(self) -> int:
        with self._lock:
            return len(self._watched)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            with self._lock:
                watched = list(self._watched.items())
            for pump, environ in watched:
                try:
                    if client_gone(environ):
                        self.unwatch(pump)
                        pump.cancel()
                except Exception:  # pragma: no cover - never let the watchdog die
                    log.debug("watchdog check failed", exc_info=True)


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


WATCHDOG = Watchdog()


def client_behind(environ: dict) -> bool:
    """Whether the client of this WSGI request is behind its stream: a quarter or more of
    the socket's send buffer (SO_SNDBUF as the kernel reports it; it grows the buffer with
    what the connection carries, up to net.ipv4.tcp_wmem's maximum) holds bytes the client
    has not acknowledged (Linux TIOCOUTQ). False where that cannot be read."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return False
    try:
        unsent = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
        return unsent * 4 >= sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    except (OSError, ValueError, AttributeError):
        return False


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


# ---------------------------------------------------------------------------------------
# CoreStream: one server-streaming core call served as JSON or SSE.

class ClientClosed(APIError):
    """The HTTP client closed the connection before the response was decided: the one
    499 response of the shim (the Flask APIError handler renders it)."""

    def __init__(self):
        super().__init__(499, "The client closed the connection.", "invalid_request_error", None,
                         "client_closed_request")


def internal_error() -> APIError:
    """The generic 500 (no details leak to the client)."""
    return APIError(500, GENERIC_MESSAGES[500], "server_error")


def error_frames(err: APIError) -> bytes:
    """The default end of a failed stream: one `data: {"error": ...}` frame, then `data: [DONE]`."""
    return sse.frame(err.envelope()) + sse.DONE


# map_error(err, request_id=...) -> APIError; from_grpc_error (optionally partial()-ed) fits.
ErrorMapper = Callable[..., APIError]


class CoreStream:
    """A server-streaming core call served to one HTTP request.

    `call` is the grpc call (iterable of events, with cancel()); `environ` the WSGI
    environ (its `gunicorn.socket` is watched for a vanished client); `map_error` turns
    the RpcError that ended the call into an APIError, called as
    `map_error(err, request_id=request_id)`. `pump=False` reads the call on the request
    thread from the start (no thread per request; the watchdog cancels it when the client
    leaves): for a caller that sends nothing before the end (non-streamed JSON).

    Usage: `first = cs.first()`, then `cs.drain(first, acc.add)` (non-streaming) or
    `return cs.sse_response(first, on_event, finish, keepalive_s)`. Every path that does
    not hand the call to an SSE body cancels it (a no-op once it completed).
    """

    def __init__(self, call, *, environ: dict, request_id: str | None, map_error: ErrorMapper = from_grpc_error,
                 poll_s: float = POLL_S, hand_off: Callable[[Any], bool] | None = None, pump: bool = True):
        self.request_id = request_id
        self.environ = environ
        self.poll_s = poll_s
        self._map_error = map_error
        self._pump = EventPump(call, observe.current_record(), hand_off, thread=pump)
        # After the pump's HANDOFF (or without a pump): pump.direct()
        self._direct: Iterator[Any] | None = None if pump else self._pump.direct(environ)
        self._watch = DisconnectWatch(environ, poll_s)

    def cancel(self) -> None:
        """Cancels the call (no-op once it has finished)."""
        self._pump.cancel()

    def _error(self, item: BaseException) -> APIError:
        if isinstance(item, grpc.RpcError):
            return self._map_error(item, request_id=self.request_id)
        return internal_error()

    def _next(self):
        """The next event or END; raises ClientClosed, or the APIError of a failed call."""
        while True:
            if self._direct is not None:
                item = next(self._direct)
            else:
                try:
                    item = self._pump.get(timeout=self.poll_s)
                except queue.Empty:
                    if self._watch.gone(force=True):
                        raise ClientClosed() from None
                    continue
                if item is HANDOFF:
                    self._direct = self._pump.direct(self.environ)
                    continue
            if self._watch.gone(force=isinstance(item, BaseException)):  # (a watchdog's cancel)
                raise ClientClosed()
            if isinstance(item, BaseException):
                raise self._error(item)
            return item

    def first(self):
        """Waits for the first event and returns it.

        Raises (after cancelling the call) ClientClosed (499) when the client went away,
        the mapped APIError when the call failed, a 500 APIError when it ended without
        any event or failed with something other than an RpcError."""
        try:
            item = self._next()
            if item is END:
                log.error("core ended the stream without events (request_id=%s)", self.request_id)
                raise internal_error()
            ratelimit.remember_call(self._pump.call)  # x-ratelimit-* (sent before the first event)
            return item
        except ClientClosed:
            self.cancel()
            log.info("client disconnected before the first event (request_id=%s)", self.request_id)
            raise
        except BaseException:
            self.cancel()
            raise

    def drain(self, first, add: Callable[[Any], Any]) -> None:
        """Non-streaming: calls `add(event)` for `first` and every later event until the
        call completes. Raises ClientClosed (499) when the client went away, the mapped
        APIError (or a 500) when the call failed; the call is cancelled on any exit."""
        item = first
        try:
            while item is not END:
                add(item)
                item = self._next()
        except ClientClosed:
            log.info("client disconnected during generation (request_id=%s)", self.request_id)
            raise
        finally:
            self.cancel()  # no-op when the call completed

    def sse_response(self, first, on_event: Callable[[Any], bytes], finish: Callable[[], bytes],
                     keepalive_s: float, on_error: Callable[[APIError], bytes] = error_frames,
                     merge: Callable[[list], list] | None = None) -> Response:
        """Streaming: the 200 `text/event-stream` Response for this call.

        Its body writes `on_event(event)` for `first` and every later event (events
        already queued are written together, up to MAX_EVENTS_PER_WRITE per write, and passed
        through `merge(events) -> events` first when given, e.g. genapi.deltas.coalesce:
        several tokens in one SSE event when the client fell behind), a keep-alive
        comment after `keepalive_s` without a write (while the pump reads: with `hand_off`,
        until the event it hands off after), and ends with `finish()` when the
        call completes, or with `on_error(api_error)` when it fails (default: an error
        frame, then `data: [DONE]`). A client gone mid-stream ends the body without
        more bytes; closing the body (gunicorn does, also on a failed write) cancels the
        call even when it never started iterating."""
        send_immediately(self.environ)
        events = self._sse_events(first, on_event, finish, on_error, keepalive_s, merge)
        return Response(SSEBody(events, self._pump), status=200, content_type=sse.CONTENT_TYPE, headers=sse.HEADERS)

    def _sse_events(self, first, on_event, finish, on_error, keepalive_s: float, merge=None) -> Iterator[bytes]:
        pump, watch = self._pump, self._watch
        poll = max(0.01, min(self.poll_s, keepalive_s))
        yield on_event(first)
        last_write = time.monotonic()
        while True:
            if self._direct is not None:  # tokens flow: read on this thread, one event at a time
                item = next(self._direct)
            else:
                try:
                    item = pump.get(timeout=poll)
                except queue.Empty:
                    item = None
                if item is HANDOFF:
                    self._direct = pump.direct(self.environ)
                    continue
            if watch.gone(force=item is None or isinstance(item, BaseException)):
                log.info("client disconnected mid-stream (request_id=%s)", self.request_id)
                pump.cancel()
                return
            if item is None:
                if time.monotonic() - last_write >= keepalive_s:
                    yield sse.KEEPALIVE
                    last_write = time.monotonic()
                continue

            batch: list = []  # the events already queued, up to MAX_EVENTS_PER_WRITE
            while item is not END and not isinstance(item, BaseException):
                batch.append(item)
                if len(batch) == MAX_EVENTS_PER_WRITE:
                    item = None  # write now; the rest is picked up by the next get()
                    break
                if self._direct is not None:
                    # Read on this thread: events waiting in grpc cannot be counted, but a
                    # client that has not taken what was already written cannot use the
                    # next event before the ones after it either, so read those first and
                    # send them merged (one chunk's work instead of one per token).
                    if merge is None or not client_behind(self.environ):
                        item = None
                        break
                    item = next(self._direct)
                    continue
                try:
                    item = pump.get(timeout=0)
                except queue.Empty:
                    item = None
                    break
                if item is HANDOFF:
                    self._direct = pump.direct(self.environ)
                    item = None
                    break
            if merge is not None and len(batch) > 1:
                batch = merge(batch)
            out = [on_event(ev) for ev in batch]
            if item is END:
                out.append(finish())
            elif item is not None:
                if not isinstance(item, grpc.RpcError):
                    log.error("core stream failed (request_id=%s): %r", self.request_id, item)
                out.append(on_error(self._error(item)))
            data = b"".join(out)
            if item is not None:
                yield data
                return
            if data:
                yield data
                last_write = time.monotonic()


class SSEBody:
    """A streaming response body; closing it (gunicorn does, also on a failed write)
    cancels the gRPC call even when the generator never started."""

    def __init__(self, events: Iterator[bytes], pump: EventPump):
        self._events = events
        self._pump = pump

    def __iter__(self):
        return self._events

    def close(self) -> None:
        try:
            self._events.close()
        finally:
            self._pump.cancel()
