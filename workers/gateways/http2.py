"""geopush's HTTP/2 client for APNs and FCM: the frames a push needs, nothing else.

Why our own client rather than aioapns or h2: docs/adr/0001-own-http2-client.md.

The API is one request: ``Http2Pool.start(method, path, headers, sensitive, body,
deadline, done)``; ``done`` is called once with the ``Response`` or the exception
that stands for it (``StreamError`` when the stream or its connection failed,
``TimeoutError`` at the deadline, ``OSError`` when connecting failed). ``request``
is the same as a coroutine. HPACK stays inside:

- ``headers`` are the fields a fan-out repeats (topic, priority, authorization, ...):
  added to the dynamic table once, then sent as one-byte indexes. Indexing
  ``authorization`` is safe here although RFC 7541 §7.1.3 suggests not to: the attack
  needs chosen headers in the same compression context and a guess of the whole
  value, and the JWT carries ~256 bits of signature;
- ``sensitive`` fields (per-request values) and ``:path`` (it carries the APNs device
  token) are literals that never enter the table;
- responses are decoded with ``hpack.Decoder`` (every block, in order, so the table
  stays in step even for streams we gave up on); a block made only of one-byte
  indexes, which cannot change the table, is decoded once and remembered until a
  block that may change the table arrives.

What it does for a peer that is slow, broken or hostile (a TLS-terminating proxy, a
misconfigured endpoint): flow control both ways; SETTINGS validated (RFC 9113 §6.5.2:
a bad MAX_FRAME_SIZE, INITIAL_WINDOW_SIZE or ENABLE_PUSH is a connection error, never
a hang); frame sizes checked; header blocks and CONTINUATION frames capped; response
bodies capped (the stream is reset); HEADERS split into CONTINUATION frames at the
peer's frame size; PING sent when nothing was read for ``read_idle_timeout`` and the
connection closed when it is not answered within ``ping_timeout`` (its streams fail
as retryable); ALPN must have chosen ``h2`` over TLS. One deadline sweep per
connection, not a timer per request; GOAWAY fails only the streams past the last one
processed.

``Http2Pool`` keeps a few connections to one origin (TLS with ALPN ``h2``, or
cleartext with prior knowledge, RFC 9113 §3.3): opened lazily, a new one once every
open one carries ``spread_streams`` requests, the least loaded one once all are open.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any, cast

from hpack import Decoder
from hpack.exceptions import HPACKDecodingError, HPACKError
from hpack.hpack import decode_integer

from workers.gateways.waiting import Done, in_task, result_of, wait_in_line

logger = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# frame types
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# flags
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
# settings
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
# error codes
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0x0, 0x1, 0x3, 0x6
CANCEL, COMPRESSION_ERROR = 0x8, 0x9

DEFAULT_WINDOW = 65_535
MAX_WINDOW = MAX_STREAM_ID = 2**31 - 1
MIN_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT = 2**14, 2**24 - 1
# What we accept (our SETTINGS_MAX_FRAME_SIZE stays the default).
RECEIVE_FRAME_SIZE = MIN_FRAME_SIZE
# Credit is given back once this much of a window has been consumed.
CREDIT_THRESHOLD = 32_768
# A response header block (HEADERS and its CONTINUATIONs), compressed and decoded,
# and the CONTINUATION frames it may take: far above what APNs or FCM send, far
# below what would let a peer make us buffer or decode without end.
MAX_HEADER_BLOCK = 64 * 1024
MAX_CONTINUATIONS = 32
# A response body: APNs and FCM answer with a few hundred bytes.
MAX_RESPONSE_BODY = 64 * 1024

Fields = tuple[tuple[bytes, bytes], ...]

# The bytes of a header block made only of one-byte indexed fields (RFC 7541 §6.1:
# 1xxxxxxx, index 1-126; 0xFF would start a longer index).
_ONE_BYTE_INDEXES = bytes(range(0x81, 0xFF))
_STATUS_200 = b"\x88"   # static table 8, ":status: 200"
_STATIC_ENTRIES = 61
_METHODS = {b"GET": b"\x82", b"POST": b"\x83"}   # static table 2 and 3

_HEADER = struct.Struct(">IBI")   # (length << 8 | type), flags, stream id
_U32 = struct.Struct(">I")
_SETTING = struct.Struct(">HI")


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(len(payload) << 8 | ftype, flags, stream_id) + payload


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer with an N-bit prefix; ``first`` carries the pattern bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    return _integer(len(value), 7, 0) + value   # H = 0: no Huffman


def never_indexed(name: bytes, value: bytes) -> bytes:
    """Literal header field never indexed, new name (RFC 7541 §6.2.3)."""
    return b"\x10" + _string(name) + _string(value)


def _request_head(method: bytes, tls: bool, path: bytes) -> bytes:
    """:method and :scheme (static table when it has them), :path as a literal without
    indexing (static name 4, §6.2.2)."""
    return (_METHODS.get(method) or b"\x02" + _string(method)) + (
        b"\x87" if tls else b"\x86") + b"\x04" + _string(path)


class HeaderEncoder:
    """HPACK encoder state for one connection: the dynamic table as the peer's
    decoder will hold it, modelled exactly (FIFO, 32 octets overhead per entry)."""

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self.size = 0
        self.newest = 0                      # sequence number of the newest entry
        self.entries: collections.deque[tuple[tuple[bytes, bytes], int, int]] = (
            collections.deque())             # (field, size, seq), oldest first
        self.seq_of: dict[tuple[bytes, bytes], int] = {}
        self.generation = 0                  # bumped whenever an index may change
        self._size_update: int | None = None

    def resize(self, max_size: int) -> None:
        """The peer changed SETTINGS_HEADER_TABLE_SIZE: shrink (never grow past 4096)
        and tell its decoder at the start of the next header block."""
        max_size = min(max_size, 4096)
        if max_size != self.max_size:
            self.max_size = max_size
            self._evict(0)
            self._size_update = max_size
            self.generation += 1

    def prefix(self) -> bytes:
        if self._size_update is None:
            return b""
        update, self._size_update = _integer(self._size_update, 5, 0x20), None
        return update

    def field(self, name: bytes, value: bytes) -> bytes:
        """An indexed field when the table has it, else a literal that adds it."""
        key = (name, value)
        seq = self.seq_of.get(key)
        if seq is not None:
            return _integer(62 + self.newest - seq, 7, 0x80)
        size = len(name) + len(value) + 32
        if size > self.max_size:
            return b"\x00" + _string(name) + _string(value)  # too big to index
        self._evict(size)
        self.newest += 1
        self.entries.append((key, size, self.newest))
        self.seq_of[key] = self.newest
        self.size += size
        self.generation += 1
        return b"\x40" + _string(name) + _string(value)

    def _evict(self, room: int) -> None:
        while self.entries and self.size + room > self.max_size:
            key, size, seq = self.entries.popleft()
            if self.seq_of.get(key) == seq:
                del self.seq_of[key]
            self.size -= size
            self.generation += 1


class StreamError(Exception):
    """The request on this stream failed before a response (reset, GOAWAY, lost,
    refused connection): retryable."""


class ConnectionFault(Exception):
    """The peer broke the protocol: the connection ends with GOAWAY ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Response:
    """A response: ``status``, ``headers`` and ``body``. The headers of a 200 whose block
    neither reads nor writes the HPACK table (``_self_contained``) are decoded only
    when asked for: a gateway's answer to a push carries one unique header (APNs'
    apns-id, Huffman-coded), whose decoding was the client's largest cost per push,
    and a sender that knows the id it sent has no use for it."""

    __slots__ = ("_block", "_headers", "body", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes] | None, body: bytes,
                 block: bytes = b"") -> None:
        self.status = status
        self._headers = headers
        self._block = block
        self.body = body

    @property
    def headers(self) -> dict[bytes, bytes]:
        if self._headers is None:
            # The block is self-contained: a decoder with an empty table reads it as
            # the connection's would have.
            decoded = cast(list[tuple[bytes, bytes]],
                           Decoder(max_header_list_size=MAX_HEADER_BLOCK).decode(
                               self._block, raw=True))
            self._headers = dict(decoded)
        return self._headers


def _hpack_int(block: memoryview, i: int, prefix_bits: int) -> tuple[int, int]:
    """The HPACK integer (RFC 7541 §5.1) at ``block[i]``: (value, index after it), or
    (-1, -1) when the block ends inside it or it is absurdly long."""
    try:
        value, used = decode_integer(block[i:], prefix_bits)
    except HPACKDecodingError:
        return -1, -1
    return value, i + used


def _skip_string(block: memoryview, i: int) -> int:
    """The index after the string literal (§5.2) at ``block[i]``, or -1."""
    if i >= len(block):
        return -1
    length, i = _hpack_int(block, i, 7)
    if i < 0 or i + length > len(block):
        return -1
    return i + length


def _self_contained(block: bytes, i: int, table_off: bool) -> bool:
    """Whether the header block's representations from ``block[i]`` on neither read nor
    write the dynamic table: static-table indexes (§6.1) and literals not indexed or
    never indexed (§6.2.2, §6.2.3) with a static or literal name; with ``table_off``
    (the peer's table has size 0: ours is, and it has said so) literals with
    incremental indexing too, since an entry larger than the table leaves it empty
    (§4.4). No table size update. Such a block can be decoded later, or not at all,
    without the connection's decoder losing step with the peer's encoder."""
    view = memoryview(block)
    end = len(view)
    while i < end:
        first = view[i]
        if first & 0x80:                       # indexed field
            index, i = _hpack_int(view, i, 7)
            if not 0 < index <= _STATIC_ENTRIES:
                return False
            continue
        if first & 0xC0 == 0x40 and table_off:   # incremental indexing, into nothing
            index, i = _hpack_int(view, i, 6)
        elif first & 0xE0:                     # incremental indexing, or a size update
            return False
        else:
            index, i = _hpack_int(view, i, 4)
        if i < 0 or index > _STATIC_ENTRIES:
            return False
        if index == 0:
            i = _skip_string(view, i)          # the name
            if i < 0:
                return False
        i = _skip_string(view, i)              # the value
        if i < 0:
            return False
    return True


class _Stream:
    __slots__ = ("body", "deadline", "done", "headers", "pending", "received",
                 "send_window")

    def __init__(self, done: Done[Response], deadline: float, send_window: int) -> None:
        self.done = done           # called once: the response, or why there is none
        self.deadline = deadline   # loop time
        # Decoded, or a 200's self-contained block left to decode on demand (Response).
        self.headers: list[tuple[bytes, bytes]] | bytes = []
        self.body = bytearray()
        self.send_window = send_window
        self.pending = b""         # request body waiting for flow-control credit
        self.received = 0          # DATA consumed since the last stream WINDOW_UPDATE


class StreamSlots:
    """The peer's concurrent-stream limit for one connection, resizable by SETTINGS;
    waiting for a free slot is an awaited queue."""

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

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is queued for it."""
        if self._error is None and self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        while self._error is None and (self.in_use >= self.limit or self._waiters):
            await wait_in_line(self._waiters, self._wake)
            if self.in_use < self.limit:
                break
        if self._error is not None:
            raise self._error
        self.in_use += 1

    def release(self) -> None:
        self.in_use -= 1
        if self._waiters:
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


class Http2Connection(asyncio.Protocol):
    """One client connection. ``start`` sends a request when a stream is free;
    everything else is the protocol's own housekeeping."""

    def __init__(self, *, authority: bytes = b"localhost", tls: bool = True,
                 initial_stream_limit: int = 1, idle_timeout: float = 60.0,
                 response_table_size: int = 0, read_idle_timeout: float = 15.0,
                 ping_timeout: float = 5.0, max_body: int = MAX_RESPONSE_BODY) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.authority = authority
        self.tls = tls
        self.encoder = HeaderEncoder()
        # The peer resizes its table to ours once it applies our SETTINGS.
        self.decoder = Decoder(max_header_list_size=MAX_HEADER_BLOCK)
        self._response_table_size = response_table_size
        self.slots = StreamSlots(initial_stream_limit)
        self.streams: dict[int, _Stream] = {}
        self.next_stream_id = 1
        self.send_window = DEFAULT_WINDOW          # connection-level, peer's credit
        self.initial_send_window = DEFAULT_WINDOW  # peer's SETTINGS_INITIAL_WINDOW_SIZE
        self.max_frame_size = MIN_FRAME_SIZE       # peer's SETTINGS_MAX_FRAME_SIZE
        self.receive_window = DEFAULT_WINDOW       # ours, as the peer sees it
        self.received = 0                          # DATA consumed since the last credit
        self.max_body = max_body
        self.blocked: collections.deque[int] = collections.deque()
        self.closing = False
        self.lost = False
        self.refused: str | None = None            # why the connection was not usable
        self.goaway_reason: str | None = None
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.last_used = self.last_read = self.loop.time()
        self._idle_timeout = idle_timeout
        self._read_idle_timeout = read_idle_timeout
        self._ping_timeout = ping_timeout
        self._ping: bytes | None = None            # our PING awaiting its ACK
        self._pings_sent = 0
        self._timers: list[asyncio.TimerHandle] = []
        self._ping_timer: asyncio.TimerHandle | None = None
        self._sweep: asyncio.TimerHandle | None = None    # for streams past their deadline
        self._sweep_at = 0.0
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # A header block being received: stream id, bytes so far, END_STREAM, frames.
        self._header_block: tuple[int, bytearray, bool, int] | None = None
        self._encoded: dict[Fields, bytes] = {}    # fields already in the table
        # Response header blocks made only of table indexes (the usual answer once the
        # peer has indexed its repeated headers), decoded once while the table stands.
        self._decoded: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._encoded_generation = -1
        self._handlers: dict[int, Callable[[int, int, bytes], None]] = {
            DATA: self._on_data, HEADERS: self._on_headers, CONTINUATION: self._on_continuation,
            SETTINGS: self._on_settings, WINDOW_UPDATE: self._on_window_update,
            RST_STREAM: self._on_rst_stream, PING: self._on_ping, GOAWAY: self._on_goaway,
            PUSH_PROMISE: self._on_push_promise,
        }

    # ---- asyncio.Protocol ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            protocol = ssl_object.selected_alpn_protocol()
            if protocol != "h2":
                # An HTTP/1.1 endpoint (or a proxy that does not offer h2) would read
                # our preface as garbage: refuse before writing anything.
                self.refused = f"the server chose ALPN {protocol!r}, not 'h2'"
                self.closing = True
                self.transport.abort()
                return
        # No push. The responses' dynamic table: none for APNs, whose answers are a
        # status and a unique apns-id, nothing worth indexing, so neither side keeps a
        # table; FCM's answers repeat several headers (content-type, vary, ...), which
        # a table turns from Huffman-coded literals, decoded in Python, into indexes.
        settings = (_SETTING.pack(ENABLE_PUSH, 0)
                    + _SETTING.pack(HEADER_TABLE_SIZE, self._response_table_size)
                    + _SETTING.pack(MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK))
        self.transport.write(PREFACE + frame(SETTINGS, 0, 0, settings))
        self._timers.append(self.loop.call_later(self._idle_timeout, self._check_idle))
        self._timers.append(
            self.loop.call_later(self._read_idle_timeout, self._check_read_idle))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        self.transport = None
        for timer in (*self._timers, self._sweep, self._ping_timer):
            if timer is not None:
                timer.cancel()
        self._timers.clear()
        self._sweep = self._ping_timer = None
        reason = self.refused or self.goaway_reason or f"connection lost: {exc}"
        error = StreamError(reason)
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            self._call_done(stream, error)
        self.blocked.clear()
        self.slots.fail(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        buffer = self._buffer
        buffer += data
        pos = 0
        size = len(buffer)
        try:
            while size - pos >= 9:
                length_type, flags, stream_id = _HEADER.unpack_from(buffer, pos)
                length = length_type >> 8
                if length > RECEIVE_FRAME_SIZE:
                    raise ConnectionFault(FRAME_SIZE_ERROR, f"a frame of {length} bytes")
                end = pos + 9 + length
                if end > size:
                    break
                payload = bytes(buffer[pos + 9:end])
                pos = end
                self._frame(length_type & 0xFF, flags, stream_id & MAX_STREAM_ID, payload)
                if self.transport is None:
                    return
        except ConnectionFault as exc:
            self._protocol_error(exc.code, exc)
            return
        except HPACKError as exc:
            self._protocol_error(COMPRESSION_ERROR, exc)
            return
        except (ValueError, IndexError, struct.error) as exc:
            self._protocol_error(PROTOCOL_ERROR, exc)
            return
        finally:
            del buffer[:pos]
        self._flush()

    # ---- requests -------------------------------------------------------------------

    @property
    def is_busy(self) -> bool:
        return self.closing or self.slots.is_busy

    def start(self, method: bytes, path: bytes, headers: Fields, sensitive: Fields,
              body: bytes, deadline: float, done: Done[Response]) -> bool:
        """Send a request now if a stream is free (else False, and nothing was sent):
        ``done`` is called once, from the connection's own callbacks, with the
        response or the exception that stands for it (TimeoutError at ``deadline``,
        loop time; the sweep may be up to 1/8 of the time that was left late, 1 s at
        most)."""
        if self.closing or self.transport is None or not self.slots.try_acquire():
            return False
        self._open(method, path, headers, sensitive, body, deadline, done)
        return True

    def _open(self, method: bytes, path: bytes, headers: Fields, sensitive: Fields,
              body: bytes, deadline: float, done: Done[Response]) -> None:
        """Write a request's frames on a new stream (its slot taken). The header block
        is encoded right before it is written: blocks must reach the peer in the order
        they were encoded."""
        try:
            block = self._encode(method, path, headers, sensitive)
        except ValueError:   # a header name the caller got wrong: no stream, no slot
            self.slots.release()
            raise
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        if self.next_stream_id > MAX_STREAM_ID:
            self.closing = True       # no ids left: the pool opens a new connection
        stream = _Stream(done, deadline, self.initial_send_window)
        self.streams[stream_id] = stream
        now = self.last_used = self.loop.time()
        if self._sweep is None or deadline < self._sweep_at:
            self._schedule_sweep(now, deadline)
        if not body:
            self._write(self._header_frames(stream_id, block, END_STREAM))
            return
        n = len(body)
        if (not self.blocked and n <= self.send_window and n <= stream.send_window
                and n <= self.max_frame_size):
            self.send_window -= n
            stream.send_window -= n
            self._write(self._header_frames(stream_id, block, 0)
                        + frame(DATA, END_STREAM, stream_id, body))
        else:
            self._write(self._header_frames(stream_id, block, 0))
            stream.pending = body
            self.blocked.append(stream_id)
            self._send_blocked()

    def _header_frames(self, stream_id: int, block: bytes, end_stream: int) -> bytes:
        """HEADERS, and CONTINUATION frames when the block exceeds the peer's frame
        size; written together, so that nothing comes between them."""
        size = self.max_frame_size
        if len(block) <= size:
            return frame(HEADERS, END_HEADERS | end_stream, stream_id, block)
        frames = [frame(HEADERS, end_stream, stream_id, block[:size])]
        for offset in range(size, len(block), size):
            last = offset + size >= len(block)
            frames.append(frame(CONTINUATION, END_HEADERS if last else 0, stream_id,
                                block[offset:offset + size]))
        return b"".join(frames)

    def _end(self, stream_id: int, stream: _Stream, code: int = CANCEL) -> bool:
        """A stream given up (timed out, or its response refused) while still open is
        reset, so that its late response is dropped; False if it had ended already."""
        if self.streams.get(stream_id) is not stream:
            return False
        del self.streams[stream_id]
        self.slots.release()
        if stream.pending and stream_id in self.blocked:
            self.blocked.remove(stream_id)
        if self.transport is not None:
            self._write(frame(RST_STREAM, 0, stream_id, _U32.pack(code)))
        return True

    def _schedule_sweep(self, now: float, deadline: float) -> None:
        """The next deadline sweep, at most 1/8 of the time left late (5 ms to 1 s): one
        timer for the connection rather than one per request."""
        at = now + min(1.0, max(0.005, (deadline - now) / 8))
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep = self.loop.call_at(at, self._expire)
        self._sweep_at = at

    def _expire(self) -> None:
        """Streams past their deadline end with TimeoutError (and are reset)."""
        self._sweep = None
        now = self.loop.time()
        expired = [(sid, s) for sid, s in self.streams.items() if s.deadline <= now]
        for stream_id, stream in expired:
            if self._end(stream_id, stream):
                self._call_done(stream, TimeoutError())
        if self.streams:
            self._schedule_sweep(now, min(s.deadline for s in self.streams.values()))

    def _call_done(self, stream: _Stream, result: Response | Exception) -> None:
        try:
            stream.done(result)
        except Exception:   # a caller's bug must not break the connection's parsing
            logger.exception("an HTTP/2 request's callback failed")

    def _encode(self, method: bytes, path: bytes, headers: Fields, sensitive: Fields) -> bytes:
        encoder = self.encoder
        if self._encoded_generation != encoder.generation:
            self._encoded.clear()
            self._encoded_generation = encoder.generation
        middle = self._encoded.get(headers)
        if middle is None:
            for name, _ in headers:
                if not name or name.startswith(b":") or name != name.lower():
                    raise ValueError(f"not a request header name: {name!r}")
            before = encoder.generation
            middle = encoder.field(b":authority", self.authority) + b"".join(
                [encoder.field(name, value) for name, value in headers])
            if encoder.generation == before:
                # All indexed: the same bytes until the table changes.
                if len(self._encoded) >= 64:
                    self._encoded.clear()
                self._encoded[headers] = middle
            else:
                self._encoded.clear()
                self._encoded_generation = encoder.generation
        tail = b"".join([never_indexed(name, value) for name, value in sensitive])
        return encoder.prefix() + _request_head(method, self.tls, path) + middle + tail

    def close(self) -> None:
        """Stop taking requests; close once the streams in flight have finished."""
        self.closing = True
        if not self.streams and self.transport is not None:
            self._goaway(NO_ERROR)

    # ---- frames ---------------------------------------------------------------------

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is not None and ftype != CONTINUATION:
            raise ConnectionFault(PROTOCOL_ERROR, "frame inside a header block")
        handler = self._handlers.get(ftype)
        if handler is not None:   # PRIORITY and unknown types are ignored (RFC 9113 §5.5)
            handler(flags, stream_id, payload)

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_block is None or self._header_block[0] != stream_id:
            raise ConnectionFault(PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, block, end_stream, frames = self._header_block
        block.extend(payload)
        if len(block) > MAX_HEADER_BLOCK or frames >= MAX_CONTINUATIONS:
            raise ConnectionFault(PROTOCOL_ERROR, "response header block too large")
        self._header_block = (stream_id, block, end_stream, frames + 1)
        if flags & END_HEADERS:
            self._header_block = None
            self._on_header_block(stream_id, bytes(block), end_stream)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFault(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFault(FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        code = _U32.unpack(payload)[0]
        self._fail(stream_id, StreamError(f"stream reset by the server (code {code})"))

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFault(FRAME_SIZE_ERROR, "PING of the wrong size")
        if not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif payload == self._ping:
            self._ping = None
            if self._ping_timer is not None:
                self._ping_timer.cancel()
                self._ping_timer = None

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionFault(PROTOCOL_ERROR, "PUSH_PROMISE although push is disabled")

    def _check_stream_id(self, stream_id: int, what: str) -> None:
        # Only streams we opened: odd, and not past the last one.
        if stream_id == 0 or stream_id % 2 == 0 or stream_id >= self.next_stream_id:
            raise ConnectionFault(PROTOCOL_ERROR, f"{what} on stream {stream_id}")

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> tuple[int, int]:
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload or payload[0] >= end:
                raise ConnectionFault(PROTOCOL_ERROR, "padding longer than the frame")
            start, end = 1, end - payload[0]
        return start, end

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id not in self.streams:
            self._check_stream_id(stream_id, "HEADERS")
        start, end = self._unpad(flags, payload) if flags & PADDED else (0, len(payload))
        if flags & PRIORITY_FLAG:
            start += 5
            if start > end:
                raise ConnectionFault(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
        block = payload[start:end]
        if flags & END_HEADERS:
            self._on_header_block(stream_id, block, bool(flags & END_STREAM))
        else:
            self._header_block = (stream_id, bytearray(block), bool(flags & END_STREAM), 0)

    def _on_header_block(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if (stream is not None and not stream.headers and block[:1] == _STATUS_200
                and _self_contained(block, 1, self.decoder.header_table.maxsize == 0)):
            # A 200 that leaves the table as it is: nothing to decode now.
            stream.headers = block
            if end_stream:
                self._finish(stream_id, stream)
            return
        headers = self._decoded.get(block)
        if headers is None:
            # Decoded whatever the stream's state: the table must follow the peer's.
            headers = cast(list[tuple[bytes, bytes]], self.decoder.decode(block, raw=True))
            if block.translate(None, _ONE_BYTE_INDEXES):
                # Not only indexes: the table may have changed, and with it what the
                # blocks remembered mean.
                self._decoded.clear()
            else:
                if len(self._decoded) >= 64:
                    self._decoded.clear()
                self._decoded[block] = headers
        if stream is None:
            return
        if not stream.headers:
            # RFC 9113 §8.3: pseudo-headers first, and :status is a response's only one.
            name, status = headers[0] if headers else (b"", b"")
            if name != b":status" or not (len(status) == 3 and status.isdigit()):
                if self._end(stream_id, stream, PROTOCOL_ERROR):
                    self._call_done(stream, StreamError(f"malformed response: :status {status!r}"))
                return
            if status[:1] != b"1":       # a 1xx interim response precedes the real one
                stream.headers = headers
        if end_stream:
            self._finish(stream_id, stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id not in self.streams:   # (a stream of ours is valid by construction)
            self._check_stream_id(stream_id, "DATA")
        length = len(payload)   # flow control counts the padding too
        self.receive_window -= length
        if self.receive_window < 0:
            raise ConnectionFault(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        self.received += length
        if self.received >= CREDIT_THRESHOLD:
            self._write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.received)))
            self.receive_window += self.received
            self.received = 0
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if flags & PADDED:
            start, end = self._unpad(flags, payload)
            payload = payload[start:end]
        stream.body += payload
        if len(stream.body) > self.max_body:
            if self._end(stream_id, stream):
                self._call_done(stream, StreamError(
                    f"response body over {self.max_body} bytes: stream reset"))
            return
        if flags & END_STREAM:
            self._finish(stream_id, stream)
            return
        stream.received += length
        if stream.received >= CREDIT_THRESHOLD:
            self._write(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(stream.received)))
            stream.received = 0

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFault(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFault(FRAME_SIZE_ERROR, "SETTINGS of a size not a multiple of 6")
        for offset in range(0, len(payload), 6):
            self._apply_setting(*_SETTING.unpack_from(payload, offset))
        self._write(frame(SETTINGS, ACK, 0))
        self._send_blocked()

    def _apply_setting(self, code: int, value: int) -> None:
        if code == MAX_CONCURRENT_STREAMS:
            self.slots.set_limit(value)
        elif code == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise ConnectionFault(FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
            delta = value - self.initial_send_window
            self.initial_send_window = value
            for stream in self.streams.values():
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise ConnectionFault(FLOW_CONTROL_ERROR, "a stream window overflowed")
        elif code == MAX_FRAME_SIZE:
            if not MIN_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                raise ConnectionFault(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
            self.max_frame_size = value
        elif code == ENABLE_PUSH:
            if value != 0:
                raise ConnectionFault(PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        elif code == HEADER_TABLE_SIZE:
            self.encoder.resize(value)

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & MAX_STREAM_ID
        if stream_id == 0:
            if increment == 0:
                raise ConnectionFault(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ConnectionFault(FLOW_CONTROL_ERROR, "the connection window overflowed")
        else:
            stream = self.streams.get(stream_id)
            if stream is None:
                return
            stream.send_window += increment
            if increment == 0 or stream.send_window > MAX_WINDOW:
                code = PROTOCOL_ERROR if increment == 0 else FLOW_CONTROL_ERROR
                if self._end(stream_id, stream, code):
                    self._call_done(stream, StreamError(f"bad WINDOW_UPDATE ({increment})"))
                return
        if self.blocked:
            self._send_blocked()

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFault(FRAME_SIZE_ERROR, "GOAWAY too short")
        last_stream_id = _U32.unpack_from(payload, 0)[0] & MAX_STREAM_ID
        code = _U32.unpack_from(payload, 4)[0]
        debug = payload[8:200].decode("utf-8", "replace")
        logger.warning("%s sent GOAWAY: code=%s last_stream_id=%s data=%s",
                       self._peer(), code, last_stream_id, debug)
        self.goaway_reason = f"GOAWAY {debug or code}"
        self.closing = True
        for stream_id in [s for s in self.streams if s > last_stream_id]:
            self._fail(stream_id, StreamError(f"{self.goaway_reason} before processing"))
        if not self.streams and self.transport is not None:
            self.transport.close()

    # ---- helpers --------------------------------------------------------------------

    def _send_blocked(self) -> None:
        """Send waiting request bodies, in order, as far as the windows allow."""
        while self.blocked and self.send_window > 0:
            stream_id = self.blocked[0]
            stream = self.streams.get(stream_id)
            if stream is None or not stream.pending:
                self.blocked.popleft()
                continue
            size = min(len(stream.pending), self.send_window, stream.send_window,
                       self.max_frame_size)
            if size <= 0:
                # This stream waits for its own credit; the others may go meanwhile.
                self.blocked.rotate(-1)
                if all(self._stream_window(s) <= 0 for s in self.blocked):
                    return
                continue
            chunk, stream.pending = stream.pending[:size], stream.pending[size:]
            self.send_window -= size
            stream.send_window -= size
            self._write(frame(DATA, 0 if stream.pending else END_STREAM, stream_id, chunk))
            if not stream.pending:
                self.blocked.popleft()

    def _stream_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        return 1 if stream is None else stream.send_window

    def _finish(self, stream_id: int, stream: _Stream) -> None:
        del self.streams[stream_id]
        self.slots.release()
        if isinstance(stream.headers, bytes):
            self._call_done(stream, Response(200, None, bytes(stream.body), stream.headers))
        elif not stream.headers:   # only interim (1xx) responses, then the stream ended
            self._call_done(stream, StreamError("the stream ended without a response"))
        else:
            headers = dict(stream.headers)
            self._call_done(stream, Response(int(headers[b":status"]), headers,
                                          bytes(stream.body)))
        if self.closing and not self.streams and self.transport is not None:
            self._goaway(NO_ERROR)

    def _fail(self, stream_id: int, error: Exception) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        self.slots.release()
        self._call_done(stream, error)

    def _protocol_error(self, code: int, exc: Exception) -> None:
        logger.warning("HTTP/2 protocol error from %s: %s", self._peer(), exc)
        self.goaway_reason = f"HTTP/2 protocol error from the server: {exc}"
        self._goaway(code)

    def _goaway(self, code: int) -> None:
        self.closing = True
        if self.transport is not None:
            # Last stream id: the last one the *peer* opened; with push off, none (0).
            self._write(frame(GOAWAY, 0, 0, _U32.pack(0) + _U32.pack(code)))
            self._flush()
            self.transport.close()

    def _check_idle(self) -> None:
        """Close a connection nobody used for ``idle_timeout`` (the gateway would, too)."""
        if self.transport is None:
            return
        idle = self.loop.time() - self.last_used
        if idle >= self._idle_timeout and not self.streams:
            self.close()
        else:
            delay = max(1.0, self._idle_timeout - idle)
            self._timers[0] = self.loop.call_later(delay, self._check_idle)

    def _check_read_idle(self) -> None:
        """Nothing read for ``read_idle_timeout``: PING, and expect the ACK within
        ``ping_timeout`` (a connection silently dropped by a middlebox would otherwise
        hold its streams until their deadlines, and new ones forever)."""
        if self.transport is None:
            return
        idle = self.loop.time() - self.last_read
        if idle >= self._read_idle_timeout and self._ping is None:
            self._pings_sent += 1
            self._ping = _U32.pack(0) + _U32.pack(self._pings_sent & 0xFFFFFFFF)
            self._write(frame(PING, 0, 0, self._ping))
            self._ping_timer = self.loop.call_later(self._ping_timeout, self._ping_unanswered)
            idle = 0.0
        delay = max(0.001, self._read_idle_timeout - idle)
        self._timers[1] = self.loop.call_later(delay, self._check_read_idle)

    def _ping_unanswered(self) -> None:
        self._ping_timer = None
        if self.transport is None or self._ping is None:
            return
        logger.warning("%s did not answer a PING within %s s: closing the connection",
                       self._peer(), self._ping_timeout)
        self.goaway_reason = f"no PING answer within {self._ping_timeout} s"
        self.closing = True
        self.transport.abort()

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            if self.transport is not None:
                self.transport.write(data)

    def _peer(self) -> object:
        return None if self.transport is None else self.transport.get_extra_info("peername")


class Http2Pool:
    """HTTP/2 connections to one origin, opened lazily up to ``max_connections``.

    A request goes to an open connection with a free stream below ``spread_streams``
    (so that load spreads over several connections, and so over the gateway's front
    ends), else to a new connection while there is room, else to the least loaded one,
    where it waits for a stream. ``ssl_context`` None is cleartext HTTP/2 with prior
    knowledge; a context must offer ALPN ``h2``."""

    def __init__(
        self, host: str, port: int, *, ssl_context: ssl.SSLContext | None,
        max_connections: int, initial_stream_limit: int = 1, spread_streams: int = 100,
        response_table_size: int = 0, name: str = "HTTP/2", authority: str | None = None,
        read_idle_timeout: float = 15.0, ping_timeout: float = 5.0,
        max_body: int = MAX_RESPONSE_BODY,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.connections: list[Http2Connection] = []
        self._ssl = ssl_context
        default_port = 443 if ssl_context is not None else 80
        if authority is None:
            authority = host if port == default_port else f"{host}:{port}"
        self._options: dict[str, Any] = {
            "authority": authority.encode(), "tls": ssl_context is not None,
            "initial_stream_limit": initial_stream_limit,
            "response_table_size": response_table_size,
            "read_idle_timeout": read_idle_timeout, "ping_timeout": ping_timeout,
            "max_body": max_body,
        }
        self._max_connections = max(1, max_connections)
        self._spread_streams = spread_streams
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def deadline(self, seconds: float) -> float:
        """The loop time ``seconds`` from now, for ``start``. The loop is looked up once:
        on Python 3.11 ``asyncio.get_running_loop`` makes a getpid system call, and
        this runs once a push."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time() + seconds

    def start(self, method: bytes, path: bytes, headers: Fields, sensitive: Fields,
              body: bytes, deadline: float, done: Done[Response]) -> None:
        """One request: ``done`` gets the response, or TimeoutError at ``deadline``
        (loop time; connecting and waiting for a stream included), StreamError when the
        stream or its connection failed, OSError when connecting failed. On an open
        connection with a free stream it costs no task (the usual case under load)."""
        connection = self._free_connection()
        if connection is not None and connection.start(method, path, headers, sensitive,
                                                       body, deadline, done):
            return
        self.in_task(self._start_when_free(method, path, headers, sensitive, body, deadline,
                                           done), done)

    def in_task(self, work: Coroutine[Any, Any, None], done: Done[Any]) -> None:
        """Run ``work`` (which hands ``done`` on when it succeeds) in a task the pool
        cancels on close; ``done`` gets whatever it raises."""
        in_task(work, self._tasks, done, StreamError, f"cancelled: the {self.name} pool "
                "is closing")

    async def _start_when_free(self, method: bytes, path: bytes, headers: Fields,
                               sensitive: Fields, body: bytes, deadline: float,
                               done: Done[Response]) -> None:
        acquired: Http2Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                connection = await self._acquire()
                await connection.slots.acquire()
                acquired = connection
        except BaseException:
            if acquired is not None:
                acquired.slots.release()
            raise
        if acquired.closing or acquired.transport is None:
            acquired.slots.release()
            raise StreamError(acquired.goaway_reason or "connection is closing")
        acquired._open(method, path, headers, sensitive, body, deadline, done)

    def _free_connection(self) -> Http2Connection | None:
        """A connection with a free stream, without waiting: the least loaded once the
        pool is full, else one below ``spread_streams``."""
        live = [c for c in self.connections if not c.closing]
        if len(live) >= self._max_connections:
            best = min(live, key=_in_use)
            return None if best.is_busy else best
        for connection in live:
            if not connection.is_busy and connection.slots.in_use < self._spread_streams:
                return connection
        return None

    async def _acquire(self) -> Http2Connection:
        async with self._lock:
            connection = self._free_connection()
            if connection is not None:
                return connection
            live = [c for c in self.connections if not c.closing]
            if len(live) < self._max_connections:
                connection = await self._connect()
                self.connections.append(connection)
                logger.info("%s connection opened (total: %d)", self.name,
                            len(self.connections))
                return connection
        # every connection is at its stream limit: queue on the least loaded one
        return min(live, key=lambda c: c.slots.load)

    async def _connect(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        options = self._options
        _, connection = await loop.create_connection(
            lambda: Http2Connection(**options), host=self.host, port=self.port, ssl=self._ssl)
        if connection.refused is not None:
            raise StreamError(f"{self.name} connection refused: {connection.refused}")
        connection.closed.add_done_callback(lambda _: self._discard(connection))
        return connection

    def _discard(self, connection: Http2Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    async def close(self) -> None:
        """GOAWAY on every connection once its streams have finished (2 s at most),
        then abort what is left; requests still waiting for a connection or a stream
        are cancelled."""
        for task in list(self._tasks):
            task.cancel()
        connections = list(self.connections)
        for connection in connections:
            connection.close()
        if connections:
            _, pending = await asyncio.wait([c.closed for c in connections], timeout=2)
            for connection in connections:
                if not connection.closed.done() and connection.transport is not None:
                    connection.transport.abort()
            if pending:
                await asyncio.wait(pending, timeout=1)


async def request(pool: Http2Pool, method: bytes, path: bytes, headers: Fields = (),
                  sensitive: Fields = (), body: bytes = b"", *, seconds: float) -> Response:
    """``Http2Pool.start`` as a coroutine, with ``seconds`` to answer."""
    deadline = asyncio.get_running_loop().time() + seconds
    return await result_of(functools.partial(pool.start, method, path, headers, sensitive,
                                             body, deadline))


def _in_use(connection: Http2Connection) -> int:
    return connection.slots.in_use
