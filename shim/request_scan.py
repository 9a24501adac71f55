"""When has a whole HTTP/1.1 request arrived? The shim's worker (shim/worker.py) buffers
each request in its event loop and hands it to a request thread only when this says so,
so a client that sends slowly holds a socket and a small buffer, never a thread.

`RequestScan.feed(data)` returns True when a thread should take the request:
  * the head and the whole body are here (Content-Length bytes, or chunks up to the last
    chunk and its trailer section), or the request has no body. An HTTP/1.1 request with
    `Expect: 100-continue` sets `expects_continue`: the worker answers `100 Continue` and
    keeps gathering the body (any other expectation is handed over, gunicorn answers 417);
  * the bytes cannot be a valid request (bare LF line ends, a bad chunk size, a chunk not
    ended by CRLF, conflicting framing headers): gunicorn's parser, on the thread, then
    refuses it at once with a 400 instead of waiting for bytes that will not come;
  * `limit` bytes are buffered (a large body: the thread reads the rest, under the read
    deadline of shim/gunicorn_http.py).
This is only a gate: gunicorn's parser still parses and validates everything.
"""
from __future__ import annotations

import re

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:([^\r\n]*)", re.I)
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:([^\r\n]*)", re.I)
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:([^\r\n]*)", re.I)
_HEX = frozenset(b"0123456789abcdefABCDEF")
MAX_CHUNK_SIZE_DIGITS = 16  # 64 bits; more is malformed (shim/gunicorn_http.py refuses it too)
MAX_CHUNK_SIZE_LINE = 1024  # a size line with extensions; longer: hand over (gunicorn limits it)

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _READY = range(6)


class RequestScan:
    """The bytes of one request so far (`buf`) and whether a thread should take it."""

    __slots__ = ("buf", "limit", "expects_continue", "_state", "_pos", "_need")

    def __init__(self, limit: int):
        self.buf = bytearray()
        self.limit = limit
        self.expects_continue = False  # the client waits for `100 Continue` before its body
        self._state = _HEAD
        self._pos = 0  # head: where the search for its end resumes; body: the next unread byte
        self._need = 0  # length: the offset where the body ends; chunk data: the chunk's size

    def feed(self, data: bytes) -> bool:
        self.buf += data
        if self._state != _READY and (self._scan() or len(self.buf) >= self.limit):
            self._state = _READY
        return self._state == _READY

    # ---- internals -----------------------------------------------------------------------
    def _scan(self) -> bool:
        if self._state == _HEAD and not self._scan_head():
            return False
        if self._state == _READY:
            return True
        if self._state == _LENGTH:
            return len(self.buf) >= self._need
        return self._scan_chunks()

    def _scan_head(self) -> bool:
        buf = self.buf
        end = buf.find(b"\r\n\r\n", self._pos)
        if end < 0:
            if buf.count(b"\n") != buf.count(b"\r\n"):
                self._state = _READY  # bare LF: the parser refuses it
                return True
            self._pos = max(0, len(buf) - 3)
            return False
        head = bytes(buf[:end + 2])  # ends with the last header line's CRLF
        if head.count(b"\n") != head.count(b"\r\n"):
            self._state = _READY
            return True
        self._pos = end + 4
        lengths = _CONTENT_LENGTH.findall(head)
        codings = _TRANSFER_ENCODING.findall(head)
        if expect := _EXPECT.findall(head):
            if len(expect) > 1 or expect[0].strip(b" \t").lower() != b"100-continue":
                self._state = _READY  # gunicorn answers 417
                return True
            # (HTTP/1.0 ignores the expectation, as gunicorn does)
            self.expects_continue = head.lstrip(b"\r\n").split(b"\r\n", 1)[0].endswith(b" HTTP/1.1")
        if len(lengths) + len(codings) > 1:
            self._state = _READY  # framing the parser decides on (or refuses)
        elif codings:
            if codings[0].strip(b" \t").lower() == b"chunked":
                self._state = _CHUNK_SIZE
            else:
                self._state = _READY  # unsupported coding: 400
        elif lengths:
            value = lengths[0].strip(b" \t")
            if value.isdigit():
                self._state, self._need = _LENGTH, self._pos + int(value)
            else:
                self._state = _READY  # bad Content-Length: 400
        else:
            self._state = _READY  # no body
        return True

    def _scan_chunks(self) -> bool:
        buf = self.buf
        while True:
            if self._state == _CHUNK_SIZE:
                nl = buf.find(b"\n", self._pos)
                if nl < 0:
                    return len(buf) - self._pos > MAX_CHUNK_SIZE_LINE
                if nl == self._pos or buf[nl - 1] != 0x0D:
                    return True  # bare LF
                digits = bytes(buf[self._pos:nl - 1]).split(b";", 1)[0].rstrip(b" \t")
                if not digits or len(digits.lstrip(b"0")) > MAX_CHUNK_SIZE_DIGITS or not _HEX.issuperset(digits):
                    return True  # bad or oversized chunk size
                size = int(digits, 16)
                self._pos = nl + 1
                self._state, self._need = (_CHUNK_DATA, size) if size else (_TRAILER, 0)
            elif self._state == _CHUNK_DATA:
                end = self._pos + self._need
                tail = bytes(buf[end:end + 2])
                if not b"\r\n".startswith(tail):
                    return True  # chunk not ended by CRLF
                if len(tail) < 2:
                    return False
                self._pos = end + 2
                self._state = _CHUNK_SIZE
            else:  # trailer section: CRLF alone, or trailer fields up to CRLF CRLF
                if buf[self._pos:self._pos + 2] == b"\r\n" or buf.find(b"\r\n\r\n", self._pos) >= 0:
                    return True
                rest = buf[self._pos:]
                return rest.count(b"\n") != rest.count(b"\r\n")  # bare LF
