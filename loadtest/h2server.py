"""The server side of an HTTP/2 connection for the fake gateways, on the ``h2`` library.

``H2ServerConnection`` is an ``asyncio.Protocol`` that does what every fake needs and
nothing gateway-specific: the connection preface and SETTINGS (with a stream limit),
requests collected into headers and body, flow-control credit returned for what was
received, responses whose bodies go out as the peer's windows allow, timers per stream
(cancelled when the stream is reset or the connection ends), RST_STREAM handling,
abort, GOAWAY and a ``closed`` future. A gateway subclasses it and answers requests in
``request_received``.

``sniffing_factory`` puts HTTP/1.1 and HTTP/2 with prior knowledge (h2c, RFC 9113
§3.3) on one listening port: a connection that opens with the HTTP/2 client preface
goes to one protocol, anything else to the other.

``remember_huffman_strings`` makes hpack remember the Huffman-coded strings it
decoded. Only the benchmark's fake processes turn it on (it patches hpack for the
whole process, so never in a process that runs geopush's own client): the benchmarks'
ceiling is h2load, and nghttp2 never indexes ``authorization``, so every h2load
request carries its ~200-byte token as a Huffman-coded literal that hpack would
decode again in pure Python (its cost: docs/BENCHMARKS.md). geopush's client indexes
it (one byte); without this, the fakes would be slower for the load generator than
for the sender, and the ceiling lower than the fake can do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes

logger = logging.getLogger(__name__)

__all__ = [
    "PREFACE",
    "H2Request",
    "H2ServerConnection",
    "close_connections",
    "sniffing_factory",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def remember_huffman_strings(size: int = 4096) -> Callable[[], None]:
    """Let hpack's decoder look up the Huffman-coded strings it has seen (up to
    ``size``, then it starts over) instead of decoding them again; returns what
    undoes it."""
    import hpack.hpack

    module: Any = hpack.hpack           # the name it calls, not an exported one
    decode = module.decode_huffman
    if getattr(decode, "remembers", False):
        return lambda: None
    seen: dict[bytes, bytes] = {}

    def decode_huffman(data: bytes | bytearray | memoryview | None) -> bytes:
        if not data:
            return b""
        key = bytes(data)
        text = seen.get(key)
        if text is None:
            text = decode(key)          # raises on an invalid string, as before
            if len(seen) >= size:
                seen.clear()
            seen[key] = text
        return text

    decode_huffman.remembers = True     # type: ignore[attr-defined]
    module.decode_huffman = decode_huffman

    def undo() -> None:
        module.decode_huffman = decode

    return undo


Headers = list[tuple[bytes, bytes]]


def arrived_after(items: Sequence[Any], since: float | None) -> Sequence[Any]:
    """The control API's ``?since=<unix seconds>``: deliveries that arrived after it
    (newest are last, so this reads back only as far as it must), so a load test can
    poll a long run's deliveries without reading them all each time."""
    if since is None:
        return items
    start = len(items)
    while start > 0 and items[start - 1].arrived_at > since:
        start -= 1
    return items[start:]


@dataclass
class H2Request:
    """One request: header names and values decoded (pseudo-headers included)."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    too_large: bool = False  # the body passed max_body_size; what came is dropped


class H2ServerConnection(asyncio.Protocol):
    """One client connection: h2 framing, flow control, timers per stream.

    Subclasses implement ``request_received`` (and may extend ``connection_made``,
    ``connection_lost`` and ``stream_reset``). ``connections`` is the gateway's set of
    open connections, kept up to date here."""

    def __init__(
        self, connections: set[Any], *, max_concurrent_streams: int,
        max_body_size: int | None = None,
    ) -> None:
        self.connections = connections
        self.max_concurrent_streams = max_concurrent_streams
        self.max_body_size = max_body_size
        # What is received is checked (a faithful peer for the clients under test);
        # what is sent is the fakes' own fixed headers, not checked again (it costs
        # the fake throughput: docs/BENCHMARKS.md)
        self.h2 = H2Connection(H2Configuration(
            client_side=False, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, H2Request] = {}
        self.outbound: dict[int, bytes] = {}  # bodies waiting for window
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.closed = asyncio.get_running_loop().create_future()

    # to implement
    def request_received(self, stream_id: int, request: H2Request) -> None:
        """A whole request arrived (or its body passed ``max_body_size``)."""
        raise NotImplementedError

    def stream_reset(self, stream_id: int) -> None:
        """The client reset a stream; its request, body and timer are forgotten."""

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.connections.add(self)
        self.h2.initiate_connection()
        self.h2.update_settings(
            {SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams}
        )
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            logger.warning("HTTP/2 protocol error from client: %s", exc)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                self.requests[event.stream_id] = H2Request(headers)
            elif isinstance(event, DataReceived):
                self._body_received(event)
            elif isinstance(event, StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    self.request_received(event.stream_id, request)
            elif isinstance(event, StreamReset):
                self.stream_reset(event.stream_id)
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._drain()
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    def _body_received(self, event: DataReceived) -> None:
        sid = event.stream_id
        assert sid is not None and event.data is not None
        self.h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
        request = self.requests.get(sid)
        if request is None:
            return  # answered already (too large) or reset
        request.body += event.data
        if self.max_body_size is not None and len(request.body) > self.max_body_size:
            # answer now and drop the rest of it as it comes
            del self.requests[sid]
            request.too_large = True
            request.body.clear()
            self.request_received(sid, request)

    # responses
    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def respond(self, stream_id: int, headers: Headers, body: bytes = b"") -> None:
        """Sends ``headers`` (``:status`` first) and ``body``; the caller flushes."""
        if self.transport is None:
            return
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except (StreamClosedError, ProtocolError):
            return  # the client reset the stream meanwhile
        if body:
            self.outbound[stream_id] = body
            self._drain()

    def later(self, stream_id: int, delay: float, callback: Callable[[], None]) -> None:
        """Runs ``callback`` (then flushes) after ``delay`` seconds, unless the stream
        or the connection ends first."""
        def run() -> None:
            self.timers.pop(stream_id, None)
            callback()
            self.flush()

        self.timers[stream_id] = asyncio.get_running_loop().call_later(delay, run)

    def abort(self) -> None:
        """Drops the connection without a GOAWAY, like a reset TCP connection."""
        if self.transport is not None:
            self.transport.abort()

    def goaway(self, debug_data: bytes = b"") -> None:
        """Sends GOAWAY (NO_ERROR) and closes the connection once it is written."""
        if self.transport is None:
            return
        self.h2.close_connection(ErrorCodes.NO_ERROR, debug_data or None)
        self.flush()
        self.transport.close()

    def _drain(self) -> None:
        """Send waiting bodies as far as the peer's flow-control windows allow.

        A body goes out whole once the window has room for it (a body bigger than the
        peer's stream window goes out piecewise, the only way it can progress)."""
        whole_limit = self.h2.remote_settings.initial_window_size
        for stream_id in list(self.outbound):
            body = self.outbound[stream_id]
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (StreamClosedError, ProtocolError):
                del self.outbound[stream_id]
                continue
            if window < len(body) <= whole_limit:
                continue
            while body and window > 0:
                size = min(window, len(body), self.h2.max_outbound_frame_size)
                chunk, body = body[:size], body[size:]
                self.h2.send_data(stream_id, chunk, end_stream=not body)
                window -= size
            if body:
                self.outbound[stream_id] = body
            else:
                del self.outbound[stream_id]

    def _forget(self, stream_id: int) -> None:
        self.requests.pop(stream_id, None)
        self.outbound.pop(stream_id, None)
        timer = self.timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()


async def close_connections(
    connections: Collection[H2ServerConnection], *, goaway: bool = False
) -> None:
    """Closes every connection (after a GOAWAY if ``goaway``), waits up to 2 s for them
    to end and aborts the ones that do not."""
    connections = list(connections)
    for connection in connections:
        if goaway:
            connection.goaway()
        elif connection.transport is not None:
            connection.transport.close()
    if not connections:
        return
    _, pending = await asyncio.wait([c.closed for c in connections], timeout=2)
    for connection in connections:
        if connection.transport is not None and not connection.closed.done():
            connection.transport.abort()
    if pending:
        await asyncio.wait(pending, timeout=1)


class _Sniffer(asyncio.Protocol):
    """Reads a connection's first bytes, then hands it to the protocol they call for."""

    def __init__(
        self, http1: Callable[[], asyncio.BaseProtocol],
        http2: Callable[[], asyncio.BaseProtocol], undecided: set[_Sniffer],
    ) -> None:
        self.http1 = http1
        self.http2 = http2
        self.undecided = undecided
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.undecided.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.undecided.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        seen = min(len(self.buffer), len(PREFACE))
        if self.buffer[:seen] != PREFACE[:seen]:
            self._hand_over(self.http1())
        elif seen == len(PREFACE):
            self._hand_over(self.http2())

    def eof_received(self) -> bool | None:
        # the client stopped before it could be told apart: a (partial) preface or
        # nothing; either way there is no request to answer
        return None

    def _hand_over(self, protocol: asyncio.BaseProtocol) -> None:
        transport, self.transport = self.transport, None
        self.undecided.discard(self)
        assert transport is not None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if isinstance(protocol, asyncio.Protocol) and not transport.is_closing():
            protocol.data_received(self.buffer)
        self.buffer = b""

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def sniffing_factory(
    http1: Callable[[], asyncio.BaseProtocol], http2: Callable[[], asyncio.BaseProtocol],
    undecided: set[Any],
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for a listening socket that serves HTTP/1.1 with ``http1``'s
    protocols and h2c (prior knowledge) with ``http2``'s. Connections still being told
    apart are kept in ``undecided`` (each has ``close()``), for a clean shutdown."""
    return lambda: _Sniffer(http1, http2, undecided)
