"""A minimal HTTP/2 client for tests, on the ``h2`` library: cleartext with prior
knowledge (h2c, RFC 9113 §3.3), as ``h2load http://…`` and geopush's client speak to a
plain-TCP endpoint.

It keeps within the server's SETTINGS_MAX_CONCURRENT_STREAMS (a request waits for a
free stream), sends request bodies as the server's windows allow, and returns
flow-control credit for response bodies unless ``auto_credit=False`` (then the test
grants it with ``credit``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.settings import SettingCodes


@dataclass
class H2Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Stream:
    done: asyncio.Future[H2Response]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    headers_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    data_arrived: asyncio.Event = field(default_factory=asyncio.Event)


class H2Client(asyncio.Protocol):
    def __init__(self, *, initial_window_size: int | None = None,
                 auto_credit: bool = True) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.initial_window_size = initial_window_size
        self.auto_credit = auto_credit
        self.transport: asyncio.Transport | None = None
        self.authority = ""
        self.streams: dict[int, _Stream] = {}
        self.server_settings: dict[int, int] = {}  # from the server's SETTINGS frames
        self.settings_received = asyncio.Event()
        self.terminated: ConnectionTerminated | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.open_streams = 0
        self.peak_streams = 0
        self._changed = asyncio.Event()  # a stream ended, a window or the settings grew
        self._pings: dict[bytes, asyncio.Future[None]] = {}

    @classmethod
    async def connect(cls, host: str, port: int, **options: Any) -> H2Client:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: cls(**options), host, port)
        client.authority = f"{host}:{port}"
        await asyncio.wait_for(client.settings_received.wait(), 5)
        return client

    async def close(self) -> None:
        if self.transport is not None:
            self.h2.close_connection()
            self.flush()
            self.transport.close()
        await asyncio.wait_for(asyncio.shield(self.closed), 5)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.h2.initiate_connection()
        if self.initial_window_size is not None:
            self.h2.update_settings(
                {SettingCodes.INITIAL_WINDOW_SIZE: self.initial_window_size}
            )
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for stream in self.streams.values():
            if not stream.done.done():
                stream.done.set_exception(ConnectionError("connection lost"))
        self._changed.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, ResponseReceived) and stream is not None:
                headers = {k.decode(): v.decode() for k, v in event.headers}
                stream.status = int(headers.pop(":status"))
                stream.headers = headers
                stream.headers_arrived.set()
            elif isinstance(event, DataReceived) and stream is not None:
                assert event.data is not None
                stream.body += event.data
                stream.data_arrived.set()
                if self.auto_credit:
                    self.h2.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            elif isinstance(event, StreamEnded) and stream is not None:
                self._finish(stream, H2Response(stream.status, stream.headers,
                                                bytes(stream.body)))
            elif isinstance(event, StreamReset) and stream is not None:
                self._finish(stream, ConnectionResetError(f"stream reset: {event.error_code}"))
            elif isinstance(event, RemoteSettingsChanged):
                for code, change in event.changed_settings.items():
                    self.server_settings[int(code)] = change.new_value
                self.settings_received.set()
                self._changed.set()
            elif isinstance(event, WindowUpdated):
                self._changed.set()
            else:
                self._connection_event(event)
        self.flush()

    def _connection_event(self, event: object) -> None:
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
        elif isinstance(event, PingAckReceived):
            waiter = self._pings.pop(bytes(event.ping_data or b""), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def ping(self) -> None:
        """A PING round trip: whatever the server sent before its ACK has arrived."""
        data = len(self._pings).to_bytes(8, "big")
        self._pings[data] = asyncio.get_running_loop().create_future()
        self.h2.ping(data)
        self.flush()
        await asyncio.wait_for(self._pings[data], 5)

    def _finish(self, stream: _Stream, outcome: H2Response | Exception) -> None:
        if stream.done.done():
            return
        self.open_streams -= 1
        self._changed.set()
        if isinstance(outcome, Exception):
            stream.done.set_exception(outcome)
        else:
            stream.done.set_result(outcome)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    async def _changes(self) -> None:
        self._changed.clear()
        await asyncio.wait_for(self._changed.wait(), 5)

    # requests
    async def open(self, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes = b"") -> int:
        """Sends a request (waiting for a free stream and for window); its stream id."""
        while self.open_streams >= self.h2.remote_settings.max_concurrent_streams:
            await self._changes()
        if self.transport is None:
            raise ConnectionError("connection closed")
        stream_id = self.h2.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", self.authority),
                  (":path", path), *(headers or {}).items()]
        loop = asyncio.get_running_loop()
        self.streams[stream_id] = _Stream(loop.create_future())
        self.open_streams += 1
        self.peak_streams = max(self.peak_streams, self.open_streams)
        self.h2.send_headers(stream_id, [(k.encode(), v.encode()) for k, v in fields],
                             end_stream=not body)
        while body:
            window = min(self.h2.local_flow_control_window(stream_id),
                         self.h2.max_outbound_frame_size)
            if window <= 0:
                self.flush()
                await self._changes()
                continue
            chunk, body = body[:window], body[window:]
            self.h2.send_data(stream_id, chunk, end_stream=not body)
        self.flush()
        return stream_id

    async def response(self, stream_id: int) -> H2Response:
        return await asyncio.wait_for(self.streams[stream_id].done, 5)

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      body: bytes = b"") -> H2Response:
        return await self.response(await self.open(method, path, headers, body))

    def credit(self, stream_id: int, size: int) -> None:
        """Grants the server ``size`` more bytes on the stream (and the connection)."""
        self.h2.increment_flow_control_window(size, stream_id=stream_id)
        self.h2.increment_flow_control_window(size)
        self.flush()
