"""workers.gateways.http2 against a hostile or broken HTTP/2 server over a real socket
(a TLS-terminating proxy, a misconfigured endpoint): every bad SETTINGS, oversized
header block, endless CONTINUATION, oversized body, silent peer or wrong ALPN is a
connection (or stream) error the request sees as a retryable StreamError, never a
hang; and the client splits its own large header blocks at the peer's frame size.

The server is a few lines of raw frames, so it can send what no real library would."""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hpack import Decoder

from server.dev.devkeys import ensure_tls
from workers.gateways.http2 import (
    ACK,
    CONTINUATION,
    DATA,
    ENABLE_PUSH,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    INITIAL_WINDOW_SIZE,
    MAX_FRAME_SIZE,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Http2Pool,
    Response,
    StreamError,
    frame,
    request,
)

STATUS_200 = b"\x88"   # :status 200, static table index 8


@dataclass
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


@dataclass
class Peer:
    """One client connection as the server sees it."""

    writer: asyncio.StreamWriter
    frames: asyncio.Queue[Frame] = field(default_factory=asyncio.Queue)
    decoder: Decoder = field(default_factory=Decoder)
    preface: bytes = b""

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    async def next(self, ftype: int) -> Frame:
        """The next frame of this type the client sent (others are skipped)."""
        while True:
            got = await self.frames.get()
            if got.type == ftype:
                return got

    async def request(self) -> tuple[int, list[tuple[bytes, bytes]], list[Frame]]:
        """The next request's stream id, decoded headers and the frames that carried
        the block (HEADERS and its CONTINUATIONs)."""
        first = await self.next(HEADERS)
        frames = [first]
        while not frames[-1].flags & END_HEADERS:
            frames.append(await self.next(CONTINUATION))
        block = b"".join(f.payload for f in frames)
        return first.stream_id, self.decoder.decode(block, raw=True), frames


class HostileServer:
    """Accepts HTTP/2 connections and hands each to the test as a ``Peer``; answers
    nothing by itself, not even SETTINGS or PING."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> HostileServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0,
                                                  ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        peer = Peer(writer)
        try:
            peer.preface = await reader.readexactly(len(PREFACE))
            await self.peers.put(peer)
            while True:
                head = await reader.readexactly(9)
                length_type, flags, stream_id = struct.unpack(">IBI", head)
                payload = await reader.readexactly(length_type >> 8)
                await peer.frames.put(Frame(length_type & 0xFF, flags, stream_id, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            await peer.frames.put(Frame(-1, 0, 0, b""))   # the client closed
        finally:
            writer.close()


def settings_frame(*pairs: tuple[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


@pytest.fixture
async def server() -> AsyncIterator[HostileServer]:
    s = await HostileServer().start()
    yield s
    await s.stop()


def pool_for(server: HostileServer, **options: float) -> Http2Pool:
    return Http2Pool("127.0.0.1", server.port, ssl_context=None, max_connections=1,
                     initial_stream_limit=100, name="test", **options)  # type: ignore[arg-type]


async def _goaway_code(peer: Peer) -> int:
    goaway = await peer.next(GOAWAY)
    return int(struct.unpack(">II", goaway.payload[:8])[1])


async def answered(pool: Http2Pool, server: HostileServer, peer: Peer | None = None) -> Peer:
    """A request the server answers 200, on ``peer``'s connection or a new one."""
    pending = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=60))
    if peer is None:
        peer = await server.peers.get()
    stream_id, _, _ = await peer.request()
    peer.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, STATUS_200))
    assert (await pending).status == 200
    return peer


async def connection_error(server: HostileServer, answer: Callable[[int], bytes], code: int,
                           match: str, body: bytes = b"{}") -> None:
    """A request, then ``answer(its stream id)`` from the server: the client must end
    the connection with GOAWAY ``code``, and the request fail as a StreamError."""
    pool = pool_for(server)
    try:
        pending = asyncio.create_task(request(pool, b"POST", b"/", body=body, seconds=30))
        peer = await server.peers.get()
        stream_id, _, _ = await peer.request()
        peer.send(answer(stream_id))
        assert await _goaway_code(peer) == code
        with pytest.raises(StreamError, match=match):
            await pending
    finally:
        await pool.close()


@pytest.mark.parametrize(("settings", "code", "named"), [
    ([(MAX_FRAME_SIZE, 0)], PROTOCOL_ERROR, "MAX_FRAME_SIZE 0"),
    ([(MAX_FRAME_SIZE, 16_383)], PROTOCOL_ERROR, "MAX_FRAME_SIZE"),
    ([(MAX_FRAME_SIZE, 2**24)], PROTOCOL_ERROR, "MAX_FRAME_SIZE"),
    ([(INITIAL_WINDOW_SIZE, 2**31)], FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE"),
    ([(ENABLE_PUSH, 1)], PROTOCOL_ERROR, "ENABLE_PUSH"),
])
async def test_bad_settings_are_a_connection_error(
    server: HostileServer, settings: list[tuple[int, int]], code: int, named: str
) -> None:
    # A body bigger than the window, so a zero frame size would have spun forever.
    await connection_error(server, lambda _: settings_frame(*settings), code, named,
                           body=b"x" * 70_000)


@pytest.mark.parametrize(("raw", "code"), [
    (frame(SETTINGS, 0, 0, b"\0\4\0\0"), FRAME_SIZE_ERROR),             # not 6-byte units
    (frame(SETTINGS, ACK, 0, b"\0" * 6), FRAME_SIZE_ERROR),             # ACK with a body
    (frame(PING, 0, 0, b"1234"), FRAME_SIZE_ERROR),                     # short PING
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)), FLOW_CONTROL_ERROR),
    (frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), PROTOCOL_ERROR),
    (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR),                          # DATA on stream 0
    (frame(HEADERS, END_HEADERS, 2, STATUS_200), PROTOCOL_ERROR),       # a server stream
    (struct.pack(">IBI", 20_000 << 8 | DATA, 0, 1) + b"x" * 20_000, FRAME_SIZE_ERROR),
])
async def test_malformed_frames_are_a_connection_error(
    server: HostileServer, raw: bytes, code: int
) -> None:
    await connection_error(server, lambda _: raw, code, "protocol error")


@pytest.mark.parametrize(("chunk", "count"), [
    (b"\x00" * 16_384, 5),       # a block past 64 KiB in big frames
    (b"", 40),                   # endless empty CONTINUATION frames
])
async def test_header_blocks_and_continuations_are_capped(
    server: HostileServer, chunk: bytes, count: int
) -> None:
    def answer(stream_id: int) -> bytes:
        return frame(HEADERS, 0, stream_id, STATUS_200) + b"".join(
            frame(CONTINUATION, 0, stream_id, chunk) for _ in range(count))

    await connection_error(server, answer, PROTOCOL_ERROR, "header block too large")


async def test_response_bodies_are_capped_and_the_connection_carries_on(
    server: HostileServer,
) -> None:
    pool = pool_for(server, max_body=20_000)
    try:
        first = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=30))
        peer = await server.peers.get()
        stream_id, _, _ = await peer.request()
        peer.send(frame(HEADERS, END_HEADERS, stream_id, STATUS_200),
                  *(frame(DATA, 0, stream_id, b"x" * 16_384) for _ in range(2)))
        reset = await peer.next(RST_STREAM)
        assert reset.stream_id == stream_id
        with pytest.raises(StreamError, match="body over 20000 bytes"):
            await first
        await answered(pool, server, peer)
        assert server.connections == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("peer_frame_size", [None, 20_000])
async def test_large_header_blocks_go_out_in_continuation_frames(
    server: HostileServer, peer_frame_size: int | None
) -> None:
    pool = pool_for(server)
    big = b"v" * 50_000
    try:
        first = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=30))
        peer = await server.peers.get()
        stream_id, _, _ = await peer.request()
        if peer_frame_size is not None:   # read by the client before the answer
            peer.send(settings_frame((MAX_FRAME_SIZE, peer_frame_size)))
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, STATUS_200))
        assert (await first).status == 200
        limit = peer_frame_size or 16_384
        pending = asyncio.create_task(request(pool, b"POST", b"/big", sensitive=(
            (b"x-big", big),), body=b"{}", seconds=30))
        stream_id, headers, frames = await peer.request()
        assert dict(headers)[b"x-big"] == big and dict(headers)[b":path"] == b"/big"
        assert [f.type for f in frames] == [HEADERS] + [CONTINUATION] * (len(frames) - 1)
        assert len(frames) > 1 and all(len(f.payload) <= limit for f in frames)
        assert max(len(f.payload) for f in frames) == limit
        ends = [bool(f.flags & END_HEADERS) for f in frames]
        assert ends == [False] * (len(frames) - 1) + [True]
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, STATUS_200))
        assert (await pending).status == 200
    finally:
        await pool.close()


async def test_a_peer_that_does_not_answer_ping_is_dropped_and_its_streams_fail(
    server: HostileServer,
) -> None:
    pool = pool_for(server, read_idle_timeout=0.05, ping_timeout=0.1)
    try:
        pending = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=60))
        peer = await server.peers.get()
        await peer.request()
        ping = await peer.next(PING)            # nothing read for a while: a PING...
        assert not ping.flags & ACK and len(ping.payload) == 8
        with pytest.raises(StreamError, match="no PING answer"):   # ...unanswered
            await pending
        await answered(pool, server)            # on a new connection
        assert server.connections == 2
    finally:
        await pool.close()


async def test_a_peer_that_answers_ping_keeps_its_connection(server: HostileServer) -> None:
    pool = pool_for(server, read_idle_timeout=0.05, ping_timeout=5)
    try:
        pending = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=60))
        peer = await server.peers.get()
        stream_id, _, _ = await peer.request()
        for _ in range(3):                      # a slow answer, but a live peer
            ping = await peer.next(PING)
            peer.send(frame(PING, ACK, 0, ping.payload))
        peer.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, STATUS_200))
        assert (await pending).status == 200
        assert server.connections == 1
    finally:
        await pool.close()


def _tls_server_context(certs: Path, alpn: list[str]) -> ssl.SSLContext:
    tls = ensure_tls(certs)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    context.set_alpn_protocols(alpn)
    return context


def _tls_client_context(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ensure_tls(certs).ca_cert))
    context.set_alpn_protocols(["h2"])
    return context


@pytest.mark.parametrize(("alpn", "ok"), [(["http/1.1"], False), (["h2"], True)])
async def test_alpn_must_choose_h2_over_tls(tmp_path: Path, alpn: list[str], ok: bool) -> None:
    server = await HostileServer(_tls_server_context(tmp_path, alpn)).start()
    pool = Http2Pool("127.0.0.1", server.port, ssl_context=_tls_client_context(tmp_path),
                     max_connections=1, name="test")
    try:
        pending = asyncio.create_task(request(pool, b"POST", b"/", body=b"{}", seconds=30))
        if ok:
            peer = await server.peers.get()
            assert peer.preface == PREFACE
            stream_id, _, _ = await peer.request()
            peer.send(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, STATUS_200))
            response: Response = await pending
            assert response.status == 200
        else:
            with pytest.raises(StreamError, match=r"ALPN .*, not 'h2'"):
                await pending
            assert server.peers.empty()       # not a byte of HTTP/2 was written
    finally:
        await pool.close()
        await server.stop()

