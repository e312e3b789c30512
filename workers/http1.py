"""A lean HTTP/1.1 keep-alive client for FCM's ``messages:send``.

Why not aiohttp's client here: it was the FCM sender's largest cost per push
(``ClientSession._request`` and what it calls: a third of the sender's CPU; profile in
docs/BENCHMARKS.md), for a request that is always the same POST to the same URL with
a small JSON body and a small JSON answer. This module writes the request as one
pre-built byte string and parses the answer with a small, strict parser:

- one request at a time per connection (no pipelining), connections kept alive and
  reused, up to ``max_connections``; idle ones are closed after ``idle_timeout``;
- responses with ``Content-Length``, ``Transfer-Encoding: chunked`` (trailers
  skipped) or read until close; 1xx interim responses are skipped;
- a connection is reused only after a complete response that didn't say
  ``Connection: close``; a request that was cancelled or failed closes its
  connection (half a response must never be read as the next one's);
- limits: header section 64 KiB, body 1 MiB; anything malformed is a
  ``ProtocolError`` and the connection is dropped.

aiohttp still carries google-auth's token requests (rare; see ``fcm_client``).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
from typing import cast

from workers.waiting import wait_in_line

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 we can read."""


class ConnectionFailed(Exception):
    """The connection was lost or refused before a complete response."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers          # lower-case names; repeated ones joined by ", "
        self.body = body


class ResponseParser:
    """Incremental parser of one response at a time. ``feed`` returns the finished
    response (or None for more), keeping any bytes after it."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._head: tuple[int, dict[str, str], str, int] | None = None  # status, headers, mode, n
        self._body = bytearray()
        self.keep_alive = True

    def feed(self, data: bytes) -> Response | None:
        self.buffer += data
        if self._head is None and not self._parse_head():
            return None
        return self._parse_body(eof=False)

    def feed_eof(self) -> Response | None:
        """The server closed: a body read until close is complete now."""
        if self._head is not None and self._head[2] == "close":
            return self._parse_body(eof=True)
        return None

    def _parse_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 and len(self.buffer) <= MAX_HEADER_BYTES:
            return False
        if end < 0 or end > MAX_HEADER_BYTES:
            raise ProtocolError("response header section too large")
        head = self.buffer[:end + 2].decode("latin-1")   # every line ends in CRLF
        del self.buffer[:end + 4]
        status_line = _STATUS_LINE.match(head)
        if status_line is None:
            raise ProtocolError(f"bad status line {head.partition(chr(13))[0][:80]!r}")
        status = int(status_line[2])
        headers = _header_fields(head, status_line.end())
        connection = headers.get("connection", "").lower()
        self.keep_alive = (
            "close" not in connection
            and (status_line[1] == "1" or "keep-alive" in connection)
        )
        if 100 <= status < 200:
            return self._parse_head() if self.buffer else False  # interim: skip it
        mode, size = _framing(status, headers)
        if mode == "close":
            self.keep_alive = False
        self._head = (status, headers, mode, size)
        return True

    def _parse_body(self, *, eof: bool) -> Response | None:
        assert self._head is not None
        status, headers, mode, size = self._head
        if mode == "length":
            if len(self.buffer) < size:
                return None
            body = bytes(self.buffer[:size])
            del self.buffer[:size]
        elif mode == "chunked":
            if not self._parse_chunks():
                return None
            body = bytes(self._body)
            self._body.clear()
        else:
            if len(self.buffer) > MAX_BODY_BYTES:
                raise ProtocolError("response body too large")
            if not eof:
                return None
            body = bytes(self.buffer)
            self.buffer.clear()
        self._head = None
        return Response(status, headers, body)

    def _parse_chunks(self) -> bool:
        """Moves complete chunks from the buffer to the body; True at the last one
        (and its trailers) read."""
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise ProtocolError("chunk size line too long")
                return False
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}") from None
            if size < 0 or size_text.startswith((b"-", b"+", b"0x", b"0X")):
                raise ProtocolError(f"bad chunk size {size_text[:20]!r}")
            if size == 0:
                return self._skip_trailers(line_end + 2)
            if len(self._body) + size > MAX_BODY_BYTES:
                raise ProtocolError("response body too large")
            end = line_end + 2 + size
            if len(buffer) < end + 2:
                return False
            if buffer[end:end + 2] != b"\r\n":
                raise ProtocolError("chunk not followed by CRLF")
            self._body += buffer[line_end + 2:end]
            del buffer[:end + 2]

    def _skip_trailers(self, start: int) -> bool:
        """After the last chunk: skip trailer lines up to the empty one."""
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n", start)
            if line_end < 0:
                if len(buffer) > MAX_HEADER_BYTES:
                    raise ProtocolError("chunked trailers too large")
                return False
            if line_end == start:
                del buffer[:line_end + 2]
                return True
            start = line_end + 2


# RFC 9112: HTTP-version SP status-code [SP reason-phrase]; a field is token ":" OWS
# value OWS.
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\r\n")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_fields(head: str, start: int) -> dict[str, str]:
    """The field lines of ``head`` (each ending in CRLF) from ``start`` on: lower-case
    names, repeated fields joined by ", "."""
    headers: dict[str, str] = {}
    if start == len(head):
        return headers
    for line in head[start:-2].split("\r\n"):
        name, sep, value = line.partition(":")
        # letters, digits and "-" are every name one sees; the regex is for the rest
        if not sep or not ((name.isascii() and name.replace("-", "").isalnum())
                           or _TOKEN.fullmatch(name)):
            raise ProtocolError(f"bad header line {line[:80]!r}")
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


def _framing(status: int, headers: dict[str, str]) -> tuple[str, int]:
    """How the body ends (RFC 9112 §6.3): ("length", n), ("chunked", -1) or
    ("close", -1)."""
    if status in (204, 304):
        return "length", 0
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return "chunked", -1
    if "content-length" in headers:
        value = headers["content-length"]
        if not value.isdigit():
            raise ProtocolError(f"bad Content-Length {value[:20]!r}")
        if int(value) > MAX_BODY_BYTES:
            raise ProtocolError("response body too large")
        return "length", int(value)
    return "close", -1


class Http1Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.waiter: asyncio.Future[Response] | None = None
        self.lost = False
        self.last_used = self.loop.time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            try:
                response = self.parser.feed_eof()
            except ProtocolError as error:
                waiter.set_exception(error)
                return
            if response is not None:
                waiter.set_result(response)
            else:
                waiter.set_exception(ConnectionFailed(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for: the stream is out of step; drop the connection.
            self.close()
            return
        try:
            response = self.parser.feed(data)
        except ProtocolError as error:
            self.waiter = None
            waiter.set_exception(error)
            self.close()
            return
        if response is not None:
            self.waiter = None
            if self.parser.buffer:       # more than one response: out of step
                self.parser.keep_alive = False
            waiter.set_result(response)

    @property
    def reusable(self) -> bool:
        return not self.lost and self.parser.keep_alive and self.waiter is None

    async def request(self, data: bytes, deadline: float) -> Response:
        """Send one request; TimeoutError at ``deadline`` (loop time)."""
        if self.transport is None:
            raise ConnectionFailed("connection is closed")
        waiter: asyncio.Future[Response] = self.loop.create_future()
        self.waiter = waiter
        self.transport.write(data)
        # A timer handle rather than asyncio.timeout(): cheaper, and the
        # connection is closed either way, since its answer may still come.
        timer = self.loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.last_used = self.loop.time()
            if self.waiter is waiter:    # timed out or cancelled: out of step now
                self.waiter = None
                self.close()

    def close(self) -> None:
        self.parser.keep_alive = False
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[Response]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Http1Pool:
    """Keep-alive connections to one origin, at most ``max_connections`` at a time."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
                 max_connections: int = 100, idle_timeout: float = 30.0,
                 request_timeout: float = 10.0) -> None:
        self.request_timeout = request_timeout
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._max = max(1, max_connections)
        self._idle_timeout = idle_timeout
        self.idle: collections.deque[Http1Connection] = collections.deque()
        self.open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.connects = 0

    async def request(self, data: bytes) -> Response:
        """One request on a kept-alive (or new) connection, answered within
        ``request_timeout`` seconds (waiting for a connection included) or TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        connection = self._idle_connection(loop.time())
        if connection is None:
            async with asyncio.timeout_at(deadline):
                connection = await self._acquire()
        try:
            response = await connection.request(data, deadline)
        except BaseException:
            connection.close()
            self._release(connection)
            raise
        self._release(connection)
        return response

    def _idle_connection(self, now: float) -> Http1Connection | None:
        while self.idle:
            connection = self.idle.pop()          # most recently used first
            if connection.reusable and now - connection.last_used < self._idle_timeout:
                return connection
            connection.close()
            self.open -= 1
        return None

    async def _acquire(self) -> Http1Connection:
        while True:
            connection = self._idle_connection(asyncio.get_running_loop().time())
            if connection is not None:
                return connection
            if self.open < self._max:
                self.open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            await wait_in_line(self._waiters, self._wake)

    async def _connect(self) -> Http1Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                Http1Connection, host=self.host, port=self.port, ssl=self._ssl,
            )
        except OSError as exc:   # ssl.SSLError included
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self.connects += 1
        return connection

    def _release(self, connection: Http1Connection) -> None:
        if connection.reusable:
            self.idle.append(connection)
        else:
            connection.close()
            self.open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        while self.idle:
            self.idle.pop().close()
            self.open -= 1
        await asyncio.sleep(0)
