"""The shim's gunicorn worker: gthread's ThreadWorker with a buffering front.

Stock gthread hands every accepted connection to its thread pool at once: a client that
sends its request slowly holds a thread while it does, and once every thread is busy new
requests wait, without bound, in the pool's queue (the core's admission control never
sees them, so they never get its 429). Here the worker's event loop reads each request
itself, without a thread, and decides:

* the request is all here (shim/request_scan.py: head and body, or malformed so the
  parser can refuse it at once, or FRONT_REQUEST_BYTES buffered, or the worker's front
  holds FRONT_BUDGET_BYTES in all) -> a request thread takes it, with the bytes already
  read (shim/gunicorn_http.py parses them; anything still to come is read under the
  request's read deadline);
* every request thread is busy -> 429 `server_overloaded` with Retry-After at once, in the
  OpenAI error envelope, and the connection closes;
* the request has not all arrived `read_timeout_s` after it started (the connection opened,
  or a kept-alive one became readable; plus a second per 64 KiB received) -> 408 and close;
  a new connection that sends nothing is closed then.

`Expect: 100-continue` is answered by the front, which then gathers the body the same way.
A connection closed after its answer is half-closed and drained for LINGER_S in the event
loop (gthread did that on the loop itself, blocking it up to 2 s per client that does not
close its side). The pool's threads are all started with the worker (see get_thread_pool).

So a slow client holds a socket and a buffer of at most FRONT_REQUEST_BYTES, never a
thread, until slow clients hold FRONT_BUDGET_BYTES of the worker's memory; and a refusal
costs the event loop a few microseconds.

Drain (SIGTERM, or a first SIGINT; the same as the core's): the worker keeps listening for
`drain_grace_s`, and the front answers every new request (`/health` included) 503
`server_shutting_down` with Retry-After, while the requests already on a thread (streams
included) run to their end; it stops as soon as none is left. At the end of the grace
period the core calls still open are cancelled (their clients get 503, or an error frame
mid-stream) and it stops. gthread alone would stop listening at once and hold the
requests in flight without answering anyone else. A second SIGINT quits at once. Connections that are not
plain HTTP/1.1 (TLS, cleartext HTTP/2) take gthread's stock path. Written against
gunicorn 27's ThreadWorker and TConn (pinned in pyproject.toml; tests/unit/test_shim_front.py
checks the methods overridden here still exist with the same parameters).
"""
from __future__ import annotations

import errno
import selectors
import signal
import socket
import threading
import time
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

from shim import grpc_client
from shim.errors import DEFAULT_RETRY_AFTER_S, SHUTTING_DOWN_MESSAGE
from shim.gunicorn_errors import error_response
from shim.gunicorn_http import ShimParser, read_deadline, timeout_response
from shim.request_scan import RequestScan

# A body larger than FRONT_REQUEST_BYTES (a file upload) is read on its thread, past
# those first bytes; so is the request that takes the worker's front beyond its budget.
# Slow clients hold no thread before they have sent that much.
FRONT_REQUEST_BYTES = 8 * 1024 * 1024
FRONT_BUDGET_BYTES = 64 * 1024 * 1024  # per worker: request bytes the front holds in all
RECV_BYTES = 64 * 1024
SWEEP_S = 0.1  # how often deadlines are checked while requests are arriving
LINGER_S = 1.0  # after a refusal: how long the client's unread bytes are drained before closing
LINGER_BYTES = 1024 * 1024
RETRY_AFTER_S = 1


def overloaded_response() -> bytes:
    return error_response(429, "Too Many Requests",
                          "The server is at capacity (every request thread is busy); please retry shortly.",
                          type="rate_limit_error", code="server_overloaded",
                          headers={"Retry-After": str(RETRY_AFTER_S)})


def shutting_down_response() -> bytes:
    return error_response(503, "Service Unavailable", SHUTTING_DOWN_MESSAGE, type="server_error",
                          code="server_shutting_down", headers={"Retry-After": str(DEFAULT_RETRY_AFTER_S)})


class ShimConn(TConn):
    """A client connection; between requests its bytes are gathered by the event loop."""

    def __init__(self, cfg, sock, client, server, read_timeout_s: float):
        super().__init__(cfg, sock, client, server)  # non-blocking
        self.read_timeout_s = read_timeout_s
        self.scan: RequestScan | None = None
        self.started = 0.0  # when the request being read began (accepted, or readable again)
        self.deadline = 0.0
        self.registered = False  # in the worker's poller
        self.continue_sent = False  # `100 Continue` answered for the request being read
        self.linger_until = 0.0
        self.lingered = 0

    def init(self):
        if self.initialized:
            return
        self.initialized = True
        self.sock.setblocking(True)
        self.parser = ShimParser(self.cfg, self.sock, self.client, self.read_timeout_s)


class ShimWorker(ThreadWorker):
    """gunicorn `worker_class = "shim.worker.ShimWorker"` (shim/gunicorn_conf.py)."""

    def init_process(self):
        from genapi.config import load_config

        cfg = load_config()
        self.read_timeout_s = cfg.read_timeout_s
        self.drain_grace_s = cfg.drain_grace_s
        self.drain_until: float | None = None  # set by SIGTERM: the end of the grace period
        self.front = not self.cfg.is_ssl and getattr(self.cfg, "http2_cleartext", "off") == "off"
        self.busy = 0  # connections handed to the thread pool and not finished
        self.reading: dict[ShimConn, None] = {}  # requests arriving (insertion-ordered set)
        self.front_bytes = 0  # the bytes of those requests buffered so far
        self.lingering: dict[ShimConn, None] = {}  # refused, draining before the close
        self._next_sweep = 0.0
        super().init_process()  # runs the worker

    # ---- drain ---------------------------------------------------------------------------
    def init_signals(self):
        super().init_signals()
        if self.front:
            signal.signal(signal.SIGINT, self.handle_int)
        signal.signal(signal.SIGHUP, self.handle_hup)
        signal.siginterrupt(signal.SIGHUP, False)

    def handle_hup(self, sig, frame):
        """SIGHUP (the master forwards its own, see gunicorn_conf.on_starting): re-read the
        API keys in place; no restart, requests in flight run on."""
        from shim.auth import reload_keys

        app = getattr(self, "wsgi", None)
        if app is None or not hasattr(app, "extensions"):
            return
        try:
            reload_keys(app)
        except Exception:  # never let a reload take the worker down
            self.log.exception("genapi: SIGHUP: key reload failed")

    def handle_exit(self, sig, frame):
        """SIGTERM (from the master, or sent to this process): drain, then stop."""
        if not self.front:
            return super().handle_exit(sig, frame)
        if self.drain_until is None:
            self.drain_until = time.monotonic() + self.drain_grace_s

    def handle_int(self, sig, frame):
        """SIGINT (Ctrl-C reaches every process of the group): drains like SIGTERM; a second
        one quits at once."""
        if self.drain_until is None:
            return self.handle_exit(sig, frame)
        return self.handle_quit(sig, frame)

    def _drain_step(self) -> None:
        """In the event loop while draining: stops once no request is in flight, or the
        grace period is over (the core calls still open are cancelled first)."""
        if self.busy and time.monotonic() < self.drain_until:
            return
        if self.busy:
            self.log.warning("genapi: grace period over: cancelling %d request(s) still in flight", self.busy)
            grpc_client.shut_down()
        else:
            self.log.info("genapi: drained: no request in flight")
        for conn in list(self.reading):  # half-arrived requests are new ones: 503 too
            self._leave_front(conn)
            self._refuse(conn, shutting_down_response())
        self.alive = False  # gthread's stop follows: kept-alive connections closed, then exit

    # ---- the thread pool -------------------------------------------------------------
    def get_thread_pool(self):
        """The pool with all its threads started: starting one (which the executor does on
        demand, in the event loop, waiting for the new thread to run) takes milliseconds under
        load, and a burst would otherwise pay it once per thread before any refusal."""
        pool = super().get_thread_pool()
        go = threading.Event()
        for _ in range(self.cfg.threads):
            pool.submit(go.wait)  # each finds every earlier thread busy, so starts another
        go.set()
        return pool

    def enqueue_req(self, conn):
        self.busy += 1
        super().enqueue_req(conn)

    def finish_request(self, conn, fs):
        self.busy -= 1
        if not self.front:
            return super().finish_request(conn, fs)
        keepalive = not fs.cancelled() and fs.exception() is None and fs.result() is True
        if not keepalive:
            # gthread would close gracefully right here, on the event loop, waiting up to
            # 2 s for a client that does not close its side: the loop lingers instead.
            self._close_gracefully(conn)
        elif self.alive and conn.parser.unreader.buf.getvalue():
            # A pipelined request came with the last one: it goes through the front too.
            leftover = conn.parser.unreader.take_buffered()
            conn.sock.setblocking(False)
            self._watch(conn, leftover)
        else:
            super().finish_request(conn, fs)  # back to the poller, kept alive

    def handle_request(self, req, conn):
        try:
            return super().handle_request(req, conn)
        except TimeoutError:  # a send the client did not read for read_timeout_s
            peer = conn.client[0] if isinstance(conn.client, tuple) else conn.client
            self.log.info("closing the connection of %s: it stopped reading the response", peer)
            raise OSError(errno.EPIPE, "client stopped reading") from None  # handle(): a quiet close

    # ---- the front: gathering requests in the event loop -----------------------------
    def accept(self, listener):
        if not self.front:
            return super().accept(listener)
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._watch(ShimConn(self.cfg, sock, addr, listener.getsockname(), self.read_timeout_s))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection sends its next request."""
        if not self.front:
            return super().on_client_socket_readable(conn, client)
        self.keepalived_conns.remove(conn)
        self.poller.unregister(client)
        self._watch(conn)

    def _watch(self, conn: ShimConn, data: bytes = b"") -> None:
        conn.scan = RequestScan(FRONT_REQUEST_BYTES)
        conn.started = time.monotonic()
        conn.deadline = conn.started + self.read_timeout_s
        conn.registered = False
        conn.continue_sent = False
        self.reading[conn] = None
        if data and self._fed(conn, data):
            return
        if self._recv(conn):  # often the request is here already
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_request_bytes, conn))
        conn.registered = True

    def _on_request_bytes(self, conn: ShimConn, _sock) -> None:
        self._recv(conn)

    def _recv(self, conn: ShimConn) -> bool:
        """Reads what is there; True when the connection left the front."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the client left before sending a whole request
            self._leave_front(conn)
            self._close(conn)
            return True
        return self._fed(conn, data)

    def _fed(self, conn: ShimConn, data: bytes) -> bool:
        self.front_bytes += len(data)
        if conn.scan.feed(data) or self.front_bytes > FRONT_BUDGET_BYTES:
            self._dispatch(conn)
            return True
        if conn.scan.expects_continue and not conn.continue_sent:
            conn.continue_sent = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass
        conn.deadline = read_deadline(conn.started, len(conn.scan.buf), self.read_timeout_s)
        return False

    def _leave_front(self, conn: ShimConn) -> None:
        """The request is no longer gathered here (handed over, refused or closed)."""
        if conn in self.reading:
            del self.reading[conn]
            self.front_bytes -= len(conn.scan.buf)
        self._unregister(conn)

    def _dispatch(self, conn: ShimConn) -> None:
        self._leave_front(conn)
        data, conn.scan = bytes(conn.scan.buf), None
        if self.drain_until is not None:
            self._refuse(conn, shutting_down_response())
            return
        if self.busy >= self.cfg.threads:
            self._refuse(conn, overloaded_response())
            return
        conn.init()
        conn.parser.unreader.unread(data)
        conn.parser.unreader.begin(conn.started, len(data))
        conn.parser.unreader.continue_sent = conn.continue_sent
        conn.data_ready = True
        self.enqueue_req(conn)

    # ---- refusals and closes -----------------------------------------------------------
    def _refuse(self, conn: ShimConn, response: bytes) -> None:
        try:
            conn.sock.setblocking(False)
            conn.sock.send(response)
        except OSError:
            pass
        self._close_gracefully(conn)

    def _close_gracefully(self, conn: ShimConn) -> None:
        """Half-closes, then drains what the client still sends for a moment, so that the
        close does not reset the connection before the client has read the answer."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_linger_bytes, conn))
        except (OSError, ValueError):  # already closed, or the client is gone
            self._close(conn)
            return
        conn.registered = True
        conn.linger_until, conn.lingered = time.monotonic() + LINGER_S, 0
        self.lingering[conn] = None

    def _on_linger_bytes(self, conn: ShimConn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.lingered += len(data)
        if not data or conn.lingered > LINGER_BYTES:
            self.lingering.pop(conn, None)
            self._close(conn)

    def _unregister(self, conn: ShimConn) -> None:
        if conn.registered:
            conn.registered = False
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, conn: ShimConn) -> None:
        self._unregister(conn)
        self.nr_conns -= 1
        conn.close()

    # ---- deadlines ------------------------------------------------------------------------
    def wait_for_and_dispatch_events(self, timeout):
        draining = self.alive and self.drain_until is not None
        if self.reading or self.lingering or draining:
            timeout = min(timeout, SWEEP_S)
        super().wait_for_and_dispatch_events(timeout)
        if draining:
            self._drain_step()

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        if now < self._next_sweep or not (self.reading or self.lingering):
            return
        self._next_sweep = now + SWEEP_S
        for conn in [c for c in self.reading if c.deadline <= now or not (self.alive or c.scan.buf)]:
            self._leave_front(conn)
            if conn.scan.buf:
                self._refuse(conn, timeout_response())
            else:  # nothing sent (or the worker is stopping): close quietly
                self._close(conn)
        for conn in [c for c in self.lingering if c.linger_until <= now]:
            self.lingering.pop(conn)
            self._close(conn)
