"""gunicorn's HTTP/1.1 parser with the shim's bounds; used by shim/worker.py. Written
against gunicorn 27 (`SocketUnreader.chunk`, `ChunkedReader.parse_chunk_size/parse_chunked`,
`Body._read_reader`, `Message.set_body_reader`); tests/unit/test_shim_front.py drives each
piece.

* `DeadlineUnreader`: a request's head and body must arrive by its read deadline,
  `read_timeout_s` after it starts (the connection opens, or a kept-alive one is readable
  again) plus one second per MIN_UPLOAD_RATE bytes received
  (an honest large upload on a slow link keeps going; a trickle does not). Every recv is
  bounded by what is left of it; the socket keeps `read_timeout_s` as its timeout
  otherwise, so a send to a client that stopped reading fails after that long instead of
  holding the thread.
* `StrictChunkedReader`: a chunk-size line ended by a bare LF, or a size over 64 bits, is
  refused at once (stock gunicorn waited for a CRLF, or for 2^96 bytes, holding the
  thread); so is a chunk whose data is followed by anything but CRLF.
* `ShimRequest`: a body that fails to read (bad framing, timeout, client gone) marks the
  request `Connection: close`: where the next request would start is unknown. When the
  worker's front already answered `100 Continue`, gunicorn does not send a second one.
* `ShimParser`: a head that times out is answered 408 and the connection closed.
"""
from __future__ import annotations

import socket
import time

from gunicorn import util
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData, UnsupportedTransferCoding
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import SocketUnreader

from shim.gunicorn_errors import error_response
from shim.request_scan import MAX_CHUNK_SIZE_DIGITS

MIN_UPLOAD_RATE = 64 * 1024  # bytes per second that each extend the read deadline by a second


class RequestTimeout(TimeoutError):
    """The request's head or body did not arrive by its read deadline."""


def read_deadline(started: float, received: int, read_timeout_s: float) -> float:
    """When a request that started at `started` (monotonic) must be in."""
    return started + read_timeout_s + received / MIN_UPLOAD_RATE


def timeout_response() -> bytes:
    return error_response(408, "Request Timeout", "The request was not received in time.", code="request_timeout")


class DeadlineUnreader(SocketUnreader):
    def __init__(self, sock, read_timeout_s: float):
        super().__init__(sock)
        self.read_timeout_s = read_timeout_s
        self.started = time.monotonic()
        self.received = 0
        self.continue_sent = False  # the front answered `Expect: 100-continue` already
        self._begun = False

    def begin(self, started: float | None = None, received: int = 0) -> None:
        """A request starts: it began at `started`, `received` bytes are in."""
        self.started = time.monotonic() if started is None else started
        self.received = received
        self._begun = True

    def arm(self) -> None:
        """Called as the parser starts a request on its thread: the socket gets its
        timeout (a thread first makes it blocking), the deadline its start if not given."""
        if not self._begun:
            self.begin()
        self._begun = False
        self.sock.settimeout(self.read_timeout_s)

    def chunk(self, size_hint=None):
        left = read_deadline(self.started, self.received, self.read_timeout_s) - time.monotonic()
        if left <= 0:
            raise RequestTimeout("request not received in time")
        sock = self.sock
        current = sock.gettimeout() or self.read_timeout_s  # a caller may have set a shorter one
        sock.settimeout(min(left, current))
        try:
            data = super().chunk(size_hint)
        except socket.timeout:  # (RequestTimeout is a TimeoutError too: callers catching that still do)
            raise RequestTimeout("request not received in time") from None
        finally:
            try:
                sock.settimeout(current)
            except OSError:
                pass
        self.received += len(data)
        return data


def _check_size_line(line) -> None:
    """Refuses a chunk-size line (complete or not) that can never become valid."""
    if b"\n" in line:
        raise InvalidChunkSize(b"bare LF in chunk size line")
    digits = bytes(line).split(b";", 1)[0].strip(b" \t").lstrip(b"0")
    if len(digits) > MAX_CHUNK_SIZE_DIGITS:
        raise InvalidChunkSize(b"chunk size over 64 bits")


class StrictChunkedReader(ChunkedReader):
    def parse_chunk_size(self, unreader, data=None):
        buf = bytearray(data) if data else bytearray()
        while (idx := buf.find(b"\r\n")) < 0:
            _check_size_line(buf)
            if len(buf) > self.limit_chunk_size_line:
                raise InvalidChunkSize(b"line over %d bytes with no terminator" % self.limit_chunk_size_line)
            self.read_into(unreader, buf)
        _check_size_line(buf[:idx])
        return super().parse_chunk_size(unreader, bytes(buf))

    def parse_chunked(self, unreader):
        # gunicorn 27's parse_chunked, except that the CRLF after a chunk's data is not
        # waited for when the first byte there is already something else.
        (size, rest) = self.parse_chunk_size(unreader)
        while size > 0:
            while size > len(rest):
                size -= len(rest)
                yield rest
                rest = unreader.read(None, read_ahead=size)
                if not rest:
                    raise NoMoreData()
            yield rest[:size]
            rest = rest[size:]
            while len(rest) < 2 and rest in (b"", b"\r"):
                new_data = unreader.read()
                if not new_data:
                    break
                rest += new_data
            if rest[:2] != b"\r\n":
                raise ChunkMissingTerminator(rest[:2])
            (size, rest) = self.parse_chunk_size(unreader, data=rest[2:])


class ShimBody(Body):
    def __init__(self, reader, req):
        super().__init__(reader)
        self._req = req

    def _read_reader(self, size):
        try:
            return super()._read_reader(size)
        except Exception:
            self._req.force_close()  # the response says Connection: close
            raise


class ShimRequest(Request):
    def set_body_reader(self):
        # gunicorn takes `gzip, chunked` (or `identity, chunked`) as chunked and ignores the
        # other coding; none is decoded here, so every Transfer-Encoding but `chunked` alone
        # is refused (400 through shim.gunicorn_errors, the connection closed).
        for name, value in self.headers:
            if name == "TRANSFER-ENCODING" and any(c.strip(" \t").lower() != "chunked" for c in value.split(",")):
                self.must_close = True
                raise UnsupportedTransferCoding(value)
        if getattr(self.unreader, "continue_sent", False):
            self.unreader.continue_sent = False
            self._expected_100_continue = False
        super().set_body_reader()
        reader = self.body.reader
        if type(reader) is ChunkedReader:
            reader = StrictChunkedReader(self, self.unreader)
        self.body = ShimBody(reader, self)


class ShimParser(RequestParser):
    mesg_class = ShimRequest

    def __init__(self, cfg, sock, source_addr, read_timeout_s: float):
        super().__init__(cfg, sock, source_addr)
        self.unreader = DeadlineUnreader(sock, read_timeout_s)

    def __next__(self):
        self.unreader.arm()
        try:
            return super().__next__()
        except RequestTimeout:
            try:
                util.write_nonblock(self.unreader.sock, timeout_response())
            except OSError:
                pass
            raise StopIteration from None

    next = __next__
