"""geopush's APNs client: aioapns 4.0 with its connection bugs fixed.

What differs from stock aioapns (each is a bug or gap in 4.0):

- received DATA is acknowledged (``acknowledge_received_data``), so error bodies no
  longer fill the 65,535-byte receive window and stall the connection;
- responses are matched by stream, bodies are buffered per stream and parsed at
  ``StreamEnded``, and a response to a send that was cancelled (timeout) is dropped:
  the cancelled stream is reset (RST_STREAM CANCEL) and its slot freed, instead of
  ``InvalidStateError`` killing the connection for everyone else;
- one JWT provider is shared by every connection of the pool and keeps a token 40
  minutes (Apple: refresh at most every 20, at least every 60);
- ``apns-expiration`` is an absolute unix time, not a TTL;
- the stream limit starts at 1 (Apple's rule until the first success) and follows the
  server's SETTINGS; outbound DATA waits for flow-control credit;
- waiting for a free stream is an awaited queue (no 10 ms polling), a send makes one
  attempt (retrying is the caller's business) and failures surface as
  ``ApnsTransportError``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, cast

import msgspec
from aioapns.common import NotificationRequest, NotificationResult
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsKeyConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
    JWTAuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectError
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes
from hpack import Encoder, NeverIndexedHeaderTuple

logger = logging.getLogger(__name__)

__all__ = ["ApnsClient", "ApnsResponse", "ApnsTransportError"]

TOKEN_TTL_S = 40 * 60


@dataclass(frozen=True)
class ApnsResponse:
    status: int
    reason: str | None
    timestamp_ms: int | None
    apns_id: str


class ApnsTransportError(Exception):
    """The push may not have reached APNs (refused, lost, timed out): retryable."""


class _SharedJwtProvider(JWTAuthorizationHeaderProvider):
    TOKEN_TTL = TOKEN_TTL_S

    def __init__(self, key: str, key_id: str, team_id: str) -> None:
        super().__init__(key, key_id, team_id)
        self.external: str | None = None   # set from a TokenSource before each send

    def get_header(self) -> str:
        if self.external is not None:
            return self.external
        header: str = super().get_header()  # type: ignore[no-untyped-call]
        return header


class TokenSource(Protocol):
    """Where the provider token comes from when several processes must share one."""

    async def header(self) -> str: ...


class _Request(NotificationRequest):
    """A request with an absolute ``apns-expiration`` and any ``apns-push-type``."""

    __slots__ = ("expiration", "push_type_name")

    def __init__(
        self, token: str, payload: dict[str, Any], apns_id: str, *, priority: int,
        collapse_id: str | None, push_type: str, expiration: int | None,
    ) -> None:
        super().__init__(
            token, payload, apns_id, priority=priority, collapse_key=collapse_id,
        )
        self.expiration = expiration
        self.push_type_name = push_type


class _Stream:
    __slots__ = ("body", "future", "headers")

    def __init__(self, future: asyncio.Future[NotificationResult]) -> None:
        self.future = future
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()


class _StreamSlots:
    """Concurrent-stream budget of one connection, resizable by SETTINGS."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._error: Exception | None = None

    @property
    def is_busy(self) -> bool:
        return self.in_use >= self.limit

    @property
    def load(self) -> int:
        return self.in_use + len(self._waiters)

    async def acquire(self) -> None:
        while self._error is None and (self.in_use >= self.limit or self._waiters):
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self.in_use < self.limit:
                break
        if self._error is not None:
            raise self._error
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def fail(self, error: Exception) -> None:
        self._error = error
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _wake(self) -> None:
        free = self.limit - self.in_use
        for waiter in self._waiters:
            if free <= 0:
                break
            if not waiter.done():
                waiter.set_result(None)
                free -= 1


class _PlainEncoder(Encoder):
    """HPACK without Huffman coding. hpack's Huffman coder is a Python loop per
    character and was the largest single cost of a push (profiled: 14% of the sender);
    on a connection to Apple the few extra header bytes cost nothing."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        encoded: bytes = super().encode(headers, huffman=False)
        return encoded


class GeopushApnsProtocol(APNsTLSClientProtocol):
    """One HTTP/2 connection to APNs. Subclass to set ``APNS_SERVER``/``APNS_PORT``."""

    APNS_SERVER = "api.push.apple.com"
    APNS_PORT = 443
    INACTIVITY_TIME = 60

    def __init__(
        self, apns_topic: str, loop: asyncio.AbstractEventLoop | None = None,
        on_connection_lost: Any = None, auth_provider: AuthorizationHeaderProvider | None = None,
    ) -> None:
        super().__init__(apns_topic, loop, on_connection_lost, auth_provider)
        self.conn.encoder = _PlainEncoder()
        self.slots = _StreamSlots(1)  # Apple: one stream until the first success
        self.streams: dict[int, _Stream] = {}
        self.closing = False
        self.lost = False
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self._window = asyncio.Event()

    @property
    def is_busy(self) -> bool:
        return self.closing or self.lost or self.slots.is_busy

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        await self.slots.acquire()
        if self.closing or self.lost or self.transport is None:
            self.slots.release()
            raise ConnectionClosed("connection is closing")
        try:
            stream_id = self.conn.get_next_available_stream_id()
        except H2Error as exc:
            self.slots.release()
            self.close()
            raise ConnectionClosed(str(exc)) from exc
        stream = _Stream(self.loop.create_future())
        self.streams[stream_id] = stream
        try:
            self.conn.send_headers(stream_id, self._headers(request))
            await self._send_body(stream_id, msgspec.json.encode(request.message))
            self.flush()
            return await stream.future
        except H2Error as exc:
            raise ConnectionClosed(str(exc)) from exc
        finally:
            if self.streams.get(stream_id) is stream:  # cancelled or failed mid-way
                del self.streams[stream_id]
                self.slots.release()
                if not self.lost:
                    try:
                        self.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
                        self.flush()
                    except H2Error:
                        pass

    def _headers(self, request: NotificationRequest) -> list[Any]:
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            # Unique per push: never indexed, so they don't evict the headers that repeat
            # (authorization, topic, collapse id and expiration of a fan-out) from the
            # HPACK dynamic table.
            NeverIndexedHeaderTuple(":path", f"/3/device/{request.device_token}"),
            (":authority", self.APNS_SERVER),
            NeverIndexedHeaderTuple("apns-id", request.notification_id),
            ("apns-topic", request.apns_topic or self.apns_topic),
        ]
        expiration: int | None
        push_type: str | None
        if isinstance(request, _Request):
            expiration, push_type = request.expiration, request.push_type_name
        else:  # a stock aioapns request: its TTL is relative to now
            ttl = request.time_to_live
            expiration = None if ttl is None else int(time.time()) + ttl
            push_type = None if request.push_type is None else request.push_type.value
        if expiration is not None:
            headers.append(("apns-expiration", str(int(expiration))))
        if request.priority is not None:
            headers.append(("apns-priority", str(request.priority)))
        if request.collapse_key is not None:
            headers.append(("apns-collapse-id", request.collapse_key))
        if push_type is not None:
            headers.append(("apns-push-type", push_type))
        if self.auth_provider is not None:
            headers.append(("authorization", self.auth_provider.get_header()))
        return headers

    async def _send_body(self, stream_id: int, data: bytes) -> None:
        while True:
            if stream_id not in self.streams:  # reset by the server while we waited
                raise ConnectionClosed(f"stream {stream_id} reset")
            window = self.conn.local_flow_control_window(stream_id)
            size = min(window, len(data), self.conn.max_outbound_frame_size)
            if size < len(data) and size <= 0:
                self.flush()
                self._window.clear()
                await self._window.wait()
                if self.lost:
                    raise ConnectionClosed("connection lost")
                continue
            chunk, data = data[:size], data[size:]
            self.conn.send_data(stream_id, chunk, end_stream=not data)
            if not data:
                return

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            logger.warning("APNs connection protocol error: %s", exc)
            self.flush()
            self.close()
            return
        for event in events:
            self._on_event(event)
        if not self.lost:
            self.flush()

    def _on_event(self, event: Event) -> None:
        stream_id = getattr(event, "stream_id", None) or 0
        if isinstance(event, ResponseReceived):
            stream = self.streams.get(stream_id)
            if stream is not None and event.headers is not None:
                stream.headers = dict(event.headers)
        elif isinstance(event, DataReceived):
            # the fix for aioapns' stall: give the window back
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
            stream = self.streams.get(stream_id)
            if stream is not None and event.data:
                stream.body += event.data
        elif isinstance(event, StreamEnded | StreamReset):
            self._finish(stream_id, reset=isinstance(event, StreamReset))
        elif isinstance(event, RemoteSettingsChanged):
            changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.slots.set_limit(changed.new_value)
            self._window.set()
        elif isinstance(event, WindowUpdated):
            self._window.set()
        elif isinstance(event, ConnectionTerminated):
            self.on_connection_terminated(event)

    def _finish(self, stream_id: int, *, reset: bool = False) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.slots.release()
        self._window.set()  # a sender waiting for credit on this stream must look again
        if not stream.future.done():
            if reset:
                stream.future.set_exception(ConnectionClosed(f"stream {stream_id} reset"))
            else:
                stream.future.set_result(_result(stream))
        if self.closing and not self.streams:
            self.close()

    def on_connection_terminated(self, event: ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        logger.warning(
            "APNs sent GOAWAY: code=%s, data=%r, last_stream_id=%s",
            event.error_code, event.additional_data, last,
        )
        self.closing = True
        for stream_id in [s for s in self.streams if s > last]:
            stream = self.streams.pop(stream_id)
            self.slots.release()
            if not stream.future.done():
                stream.future.set_exception(ConnectionClosed("GOAWAY before processing"))
        if not self.streams:
            self.close()

    def flush(self) -> None:
        if self.transport is not None and not self.lost:
            self.refresh_inactivity_timer()
            data = self.conn.data_to_send()
            if data:
                self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        super().close()

    def connection_lost(self, exc: Exception | None) -> None:
        logger.debug("APNs connection %s lost: %s", self, exc)
        self.lost = self.closing = True
        if self.inactivity_timer is not None:
            self.inactivity_timer.cancel()
        if self.on_connection_lost is not None:
            self.on_connection_lost(self)
        error = ConnectionClosed(f"connection lost: {exc}")
        for stream in self.streams.values():
            if not stream.future.done():
                stream.future.set_exception(error)
        self.streams.clear()
        self.slots.fail(error)
        self._window.set()
        if not self.closed.done():
            self.closed.set_result(None)


def _result(stream: _Stream) -> NotificationResult:
    status = stream.headers.get(b":status", b"0").decode()
    apns_id = stream.headers.get(b"apns-id", b"").decode()
    reason: str | None = None
    timestamp: int | None = None
    if stream.body:
        try:
            body = json.loads(stream.body)
        except ValueError:
            body = None
        if isinstance(body, dict):
            reason = body.get("reason")
            timestamp = body.get("timestamp")
    return NotificationResult(apns_id, status, description=reason, timestamp=timestamp)


class GeopushApnsPool(APNsKeyConnectionPool):
    """aioapns' key pool with one shared JWT provider and awaited stream slots."""

    def __init__(self, *, protocol_class: type[GeopushApnsProtocol], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.protocol_class = protocol_class
        self.auth_provider = _SharedJwtProvider(self.key, self.key_id, self.team_id)

    async def create_connection(self) -> APNsBaseClientProtocol:
        factory = partial(
            self.protocol_class, str(self.apns_topic), self.loop,
            cast(Any, self.discard_connection), self.auth_provider,
        )
        _, protocol = await self.loop.create_connection(
            factory, host=self.protocol_class.APNS_SERVER,
            port=self.protocol_class.APNS_PORT, ssl=self.ssl_context,
        )
        return protocol

    def discard_connection(self, connection: APNsBaseClientProtocol) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def _live(self) -> list[GeopushApnsProtocol]:
        return [
            c for c in self.connections
            if isinstance(c, GeopushApnsProtocol) and not (c.closing or c.lost)
        ]

    async def acquire(self) -> APNsBaseClientProtocol:
        for connection in self._live():
            if not connection.is_busy:
                return connection
        async with self._lock:
            live = self._live()
            for connection in live:
                if not connection.is_busy:
                    return connection
            if len(live) < self.max_connections:
                try:
                    created = await self.create_connection()
                except (OSError, ssl.SSLError) as exc:
                    raise ApnsConnectError(str(exc)) from exc
                self.connections.append(created)
                logger.info("APNs connection opened (total: %d)", len(self.connections))
                return created
        # every connection is at its stream limit: queue on the least loaded one
        return min(live, key=lambda c: c.slots.load)

    async def send_notification(self, request: NotificationRequest) -> NotificationResult:
        connection = await self.acquire()
        return await connection.send_notification(request)


class ApnsClient:
    """Sends pushes over a small pool of HTTP/2 connections; connects lazily."""

    def __init__(
        self, *, key_pem: str, key_id: str, team_id: str, topic: str,
        host: str = "api.push.apple.com", port: int = 443,
        ssl_context: ssl.SSLContext | None = None, max_connections: int = 4,
        request_timeout: float = 10.0, token_source: TokenSource | None = None,
    ) -> None:
        self._token_source = token_source
        protocol_class = type(
            "GeopushApnsProtocolFor", (GeopushApnsProtocol,),
            {"APNS_SERVER": host, "APNS_PORT": port},
        )
        self._pool = GeopushApnsPool(
            protocol_class=protocol_class, key=key_pem, key_id=key_id, team_id=team_id,
            topic=topic, max_connections=max_connections, ssl_context=ssl_context,
        )
        self._timeout = request_timeout

    async def send(
        self, token: str, payload: dict[str, Any], *, collapse_id: str | None,
        expiration: int | None, priority: int = 10, push_type: str = "alert",
        apns_id: str | None = None,
    ) -> ApnsResponse:
        request = _Request(
            token, payload, apns_id or str(uuid.uuid4()), priority=priority,
            collapse_id=collapse_id, push_type=push_type, expiration=expiration,
        )
        if self._token_source is not None:
            self._pool.auth_provider.external = await self._token_source.header()
        try:
            result = await asyncio.wait_for(self._pool.send_notification(request), self._timeout)
        except TimeoutError:
            raise ApnsTransportError(f"no APNs response within {self._timeout} s") from None
        except (ConnectionClosed, ApnsConnectError, OSError) as exc:
            raise ApnsTransportError(f"APNs connection failed: {exc}") from exc
        return ApnsResponse(
            status=int(result.status or 0), reason=result.description,
            timestamp_ms=result.timestamp,
            apns_id=result.notification_id or request.notification_id,
        )

    async def close(self) -> None:
        connections = [c for c in self._pool.connections if isinstance(c, GeopushApnsProtocol)]
        for connection in connections:
            connection.close()
        if connections:
            _, pending = await asyncio.wait([c.closed for c in connections], timeout=2)
            for connection in connections:
                if not connection.closed.done() and connection.transport is not None:
                    connection.transport.abort()
            if pending:
                await asyncio.wait(pending, timeout=1)
