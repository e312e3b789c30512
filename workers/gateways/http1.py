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
import functools
import re
import ssl
from collections.abc import Callable
from typing import cast

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


Answer = Response | BaseException
"""What a request ends with: the response, or the error that ended it (``TimeoutError``,
``ConnectionFailed``, ``ProtocolError``)."""


class Http1Connection(asyncio.Protocol):
    """One connection, one request at a time. ``start`` writes a request and the
    answer is handed to the request's ``finish`` from ``data_received`` (or
    ``connection_lost``, or the pool's deadline sweep): no task or future per request."""

    def __init__(self, pool: Http1Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.request: Request | None = None     # the one in flight
        self.lost = False
        self.last_used = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if self.request is not None:
            try:
                response = self.parser.feed_eof()
            except ProtocolError as error:
                self._answer(error)
                return
            self._answer(response if response is not None
                         else ConnectionFailed(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        if self.request is None:
            # Bytes nobody asked for: the stream is out of step; drop the connection.
            self.close()
            return
        try:
            response = self.parser.feed(data)
        except ProtocolError as error:
            self.close()
            self._answer(error)
            return
        if response is not None:
            if self.parser.buffer:       # more than one response: out of step
                self.parser.keep_alive = False
            self._answer(response)

    @property
    def reusable(self) -> bool:
        return not self.lost and self.parser.keep_alive and self.request is None

    def start(self, request: Request) -> None:
        if self.transport is None:
            self.request = request
            self._answer(ConnectionFailed("connection is closed"))
            return
        self.request = request
        request.connection = self
        self.transport.write(request.data)

    def abandon(self) -> None:
        """The request in flight is given up (timed out, cancelled): its answer may
        still come, so the connection is out of step and is closed."""
        self.close()
        self.request = None

    def _answer(self, answer: Answer) -> None:
        request, self.request = self.request, None
        if answer.__class__ is not Response:
            self.close()      # an error mid-request: half an answer may follow
        self.pool._answered(self, request, answer)

    def close(self) -> None:
        self.parser.keep_alive = False
        if self.transport is not None:
            self.transport.close()


class Request:
    """A request given to the pool: waiting for a connection, connecting, or in flight
    on ``connection``; ``finish`` is called exactly once (unless it is cancelled)."""

    __slots__ = ("connecting", "connection", "data", "deadline", "finish")

    def __init__(self, data: bytes, deadline: float, finish: Callable[[Answer], None]) -> None:
        self.data = data
        self.deadline = deadline
        self.finish: Callable[[Answer], None] | None = finish
        self.connection: Http1Connection | None = None
        self.connecting: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self.finish is None

    def settle(self, answer: Answer) -> None:
        finish, self.finish = self.finish, None
        if finish is not None:
            finish(answer)


class Http1Pool:
    """Keep-alive connections to one origin, at most ``max_connections`` at a time.

    ``start(data, finish)`` is the fast path: it writes the request on an idle
    connection (or queues it) and returns; ``finish`` gets the answer from the
    protocol's callback. ``request`` is the same as a coroutine. Every request must be
    answered within ``request_timeout`` seconds, waiting for a connection included;
    one timer sweeps the requests in flight and queued for expired deadlines, so a
    timeout fires up to ``request_timeout / 8`` late (at most 1 s)."""

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
        self.busy: set[Http1Connection] = set()
        self.queue: collections.deque[Request] = collections.deque()   # done ones skipped
        self.connecting: set[Request] = set()
        self.open = 0
        self.connects = 0
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        self._closed = False

    def start(self, data: bytes, finish: Callable[[Answer], None]) -> Request:
        """Send ``data`` as soon as a connection is free; ``finish`` gets the answer."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        request = Request(data, now + self.request_timeout, finish)
        if self._closed:
            request.settle(ConnectionFailed("the pool is closed"))
            return request
        connection = self._idle_connection(now)
        if connection is not None:
            self.busy.add(connection)
            connection.start(request)
        elif self.open < self._max:
            self._connect_for(request)
        else:
            self.queue.append(request)
        self._schedule_sweep(loop, now)
        return request

    async def request(self, data: bytes) -> Response:
        """One request on a kept-alive (or new) connection, answered within
        ``request_timeout`` seconds (waiting for a connection included) or TimeoutError."""
        answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        request = self.start(data, functools.partial(_settle_future, answer))
        try:
            return await answer
        except asyncio.CancelledError:
            self.cancel(request)
            raise

    def cancel(self, request: Request) -> None:
        """Give a request up; its ``finish`` is not called."""
        if request.done:
            return
        request.finish = None
        if request.connection is not None:
            connection, request.connection = request.connection, None
            if connection.request is request:
                connection.abandon()
                self._release(connection)
        elif request.connecting is not None:
            request.connecting.cancel()
        # else queued: skipped when its turn comes

    def _idle_connection(self, now: float) -> Http1Connection | None:
        while self.idle:
            connection = self.idle.pop()          # most recently used first
            if connection.reusable and now - connection.last_used < self._idle_timeout:
                return connection
            connection.close()
            self.open -= 1
        return None

    def _connect_for(self, request: Request) -> None:
        self.open += 1
        self.connecting.add(request)
        request.connecting = asyncio.get_running_loop().create_task(self._connect(request))

    async def _connect(self, request: Request) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                functools.partial(Http1Connection, self), host=self.host, port=self.port,
                ssl=self._ssl,
            )
        except OSError as exc:   # ssl.SSLError included
            self._not_connected(request)
            request.settle(ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {exc}"))
            return
        except asyncio.CancelledError:     # the request timed out or was cancelled
            self._not_connected(request)
            raise
        self._done_connecting(request)
        self.connects += 1
        connection.last_used = loop.time()
        if request.done or self._closed:
            # timed out or cancelled meanwhile: the connection is kept (or closed with
            # the pool, whose closing ended the request)
            self._release(connection)
            request.settle(ConnectionFailed("the pool is closed"))
        else:
            self.busy.add(connection)
            connection.start(request)

    def _done_connecting(self, request: Request) -> None:
        self.connecting.discard(request)
        request.connecting = None

    def _not_connected(self, request: Request) -> None:
        self.open -= 1
        self._done_connecting(request)
        self._serve_queue()

    def _end(self, request: Request, error: Exception) -> None:
        """End a request that is queued, connecting or in flight with ``error``."""
        finish = request.finish
        self.cancel(request)
        if finish is not None:
            finish(error)

    def _answered(self, connection: Http1Connection, request: Request | None,
                  answer: Answer) -> None:
        """From the connection: its request is answered."""
        connection.last_used = asyncio.get_running_loop().time()
        self._release(connection)
        if request is not None:
            request.connection = None
            request.settle(answer)

    def _release(self, connection: Http1Connection) -> None:
        self.busy.discard(connection)
        if self._closed or not connection.reusable:
            connection.close()
            self.open -= 1
            self._serve_queue()
            return
        request = self._next_queued()
        if request is None:
            self.idle.append(connection)
        else:
            self.busy.add(connection)
            connection.start(request)

    def _serve_queue(self) -> None:
        """A connection closed: the first queued request gets a new one."""
        if self.open < self._max and not self._closed:
            request = self._next_queued()
            if request is not None:
                self._connect_for(request)

    def _next_queued(self) -> Request | None:
        while self.queue:
            request = self.queue.popleft()
            if not request.done:
                return request
        return None

    def _schedule_sweep(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        at = now + min(1.0, max(0.005, self.request_timeout / 8))
        if self._sweep is None or at < self._sweep_at:
            if self._sweep is not None:
                self._sweep.cancel()
            self._sweep = loop.call_at(at, self._expire)
            self._sweep_at = at

    def _expire(self) -> None:
        """The deadline sweep: requests past their deadline end with TimeoutError. It
        runs while requests are in flight, connecting or queued."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        if any(request.done for request in self.queue):
            self.queue = collections.deque(r for r in self.queue if not r.done)
        expired = [r for r in self.queue if r.deadline <= now]
        expired += [r for r in self.connecting if r.deadline <= now]
        expired += [c.request for c in self.busy
                    if c.request is not None and c.request.deadline <= now]
        for request in expired:
            self._end(request, TimeoutError())
        if self.busy or self.queue or self.connecting:
            self._schedule_sweep(loop, now)

    async def close(self) -> None:
        """Closes every connection; requests in flight or queued end with
        ``ConnectionFailed``."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self.queue:
            self.queue.popleft().settle(ConnectionFailed("the pool is closed"))
        for request in list(self.connecting):
            self._end(request, ConnectionFailed("the pool is closed"))
        for connection in list(self.busy):
            connection.close()
        while self.idle:
            self.idle.pop().close()
            self.open -= 1
        await asyncio.sleep(0)


def _settle_future(future: asyncio.Future[Response], answer: Answer) -> None:
    if future.done():
        return
    if isinstance(answer, BaseException):
        future.set_exception(answer)
    else:
        future.set_result(answer)
