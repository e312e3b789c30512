"""workers.gateways.http2 against h2's server side in memory: the peer is a real, strict
HTTP/2 implementation, so HPACK, flow control, SETTINGS, GOAWAY, RST_STREAM,
CONTINUATION and padding are checked frame by frame. (Against a hostile server over a
real socket: tests/integration/test_http2_hostile.py; against the fake APNs over TLS:
tests/integration/test_apns_client.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2.settings import SettingCodes
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.gateways.http2 import (
    CONTINUATION,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    PADDED,
    Fields,
    HeaderEncoder,
    Http2Connection,
    Response,
    StreamError,
    _integer,
    _request_head,
    _self_contained,
    frame,
)
from workers.gateways.waiting import Done, result_of

PATH = b"/3/device/" + b"ab" * 32
HEAD = _request_head(b"POST", True, PATH)
FIELDS = ((b"apns-topic", b"org.example"), (b"authorization", b"bearer " + b"j" * 200))


def _deadline(seconds: float = 10.0) -> float:
    return asyncio.get_running_loop().time() + seconds


class Wire:
    """The client's transport: collects what it writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class Peer:
    """An h2 server wired to one Http2Connection."""

    def __init__(self, response_table_size: int = 0, max_body: int = 65_536,
                 **local_settings: int) -> None:
        self.client = Http2Connection(authority=b"api.example", initial_stream_limit=100,
                                      response_table_size=response_table_size,
                                      max_body=max_body)
        self.wire = Wire()
        self.client.connection_made(self.wire)  # type: ignore[arg-type]
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        if local_settings:
            self.h2.update_settings(
                {getattr(SettingCodes, k): v for k, v in local_settings.items()})
        self.requests: dict[int, dict[str, Any]] = {}
        self.events: list[h2.events.Event] = []

    async def exchange(self) -> list[h2.events.Event]:
        """Let the client flush, hand its bytes to the server, and the server's back."""
        for _ in range(3):   # requests run, then their writes are flushed
            await asyncio.sleep(0)
        events = self.h2.receive_data(bytes(self.wire.data))
        self.wire.data.clear()
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests[event.stream_id] = {"headers": list(event.headers), "body": b""}
            elif isinstance(event, h2.events.DataReceived):
                self.requests[event.stream_id]["body"] += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.events += events
        self.to_client(self.h2.data_to_send())
        await asyncio.sleep(0)
        return events

    def to_client(self, data: bytes) -> None:
        if data:
            self.client.data_received(data)

    def respond(self, stream_id: int, status: int, body: bytes = b"",
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b":status", str(status).encode()), *(extra or [])]
        self.h2.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.to_client(self.h2.data_to_send())


async def send(client: Http2Connection, headers: Fields = FIELDS, sensitive: Fields = (),
                  body: bytes = b"{}", deadline: float | None = None) -> Response:
    """One request on a connection, awaited; StreamError when no stream is free."""
    def start(done: Done[Response]) -> None:
        if not client.start(b"POST", PATH, headers, sensitive, body,
                            deadline or _deadline(), done):
            done(StreamError("no free stream"))
    return await result_of(start)


async def _start(peer: Peer, fields: Any = FIELDS, body: bytes = b"{}",
                 deadline: float | None = None) -> asyncio.Task[Response]:
    task = asyncio.create_task(send(peer.client, fields, body=body, deadline=deadline))
    await peer.exchange()
    return task


async def test_round_trip_and_repeated_headers_go_out_indexed() -> None:
    peer = Peer()
    await peer.exchange()
    sizes = []
    for n in range(5):
        before = len(peer.wire.data)
        apns_id = ((b"apns-id", f"id-{n}".encode()),)
        task = asyncio.create_task(
            send(peer.client, FIELDS, apns_id, b'{"n":%d}' % n))
        for _ in range(3):   # the request, then its flush
            await asyncio.sleep(0)
        sizes.append(len(peer.wire.data) - before)
        await peer.exchange()
        [stream_id] = [s for s in peer.requests if "done" not in peer.requests[s]]
        request = peer.requests[stream_id]
        request["done"] = True
        headers = dict(request["headers"])
        assert headers[b":path"] == b"/3/device/" + b"ab" * 32
        assert headers[b":method"] == b"POST" and headers[b":scheme"] == b"https"
        assert headers[b":authority"] == b"api.example"
        assert headers[b"authorization"] == FIELDS[1][1]
        assert headers[b"apns-id"] == f"id-{n}".encode()
        assert request["body"] == b'{"n":%d}' % n
        peer.respond(stream_id, 200, extra=[(b"apns-id", f"id-{n}".encode())])
        response = await task
        assert response.status == 200 and response.headers[b"apns-id"] == f"id-{n}".encode()
    assert sizes[1] < sizes[0] - 200   # the JWT went out once, then as an index
    # and the peer keeps no table for its answers (SETTINGS_HEADER_TABLE_SIZE 0)
    assert not peer.client.decoder.header_table.dynamic_entries


async def test_receive_window_is_credited_back_for_large_and_many_bodies() -> None:
    peer = Peer(max_body=200_000)
    await peer.exchange()
    body = b"E" * 100_000   # more than the 65,535-byte stream and connection windows
    task = await _start(peer)
    [stream_id] = peer.requests
    peer.h2.send_headers(stream_id, [(b":status", b"500")])
    sent = 0
    while sent < len(body):
        window = min(peer.h2.local_flow_control_window(stream_id), 16_384)
        assert window > 0, f"client stopped crediting after {sent} bytes"
        chunk = body[sent:sent + window]
        sent += len(chunk)
        peer.h2.send_data(stream_id, chunk, end_stream=sent == len(body))
        peer.to_client(peer.h2.data_to_send())
        await peer.exchange()
    response = await task
    assert (response.status, response.body) == (500, body)


async def test_request_body_waits_for_the_peers_window() -> None:
    peer = Peer(INITIAL_WINDOW_SIZE=100)
    await peer.exchange()
    await peer.exchange()   # settings ACKed both ways
    body = bytes(range(256)) * 10
    task = await _start(peer, body=body)
    [stream_id] = peer.requests
    for _ in range(40):
        if peer.requests[stream_id]["body"] == body:
            break
        peer.h2.increment_flow_control_window(100, stream_id)
        peer.to_client(peer.h2.data_to_send())
        await peer.exchange()
    assert peer.requests[stream_id]["body"] == body
    assert any(isinstance(e, h2.events.StreamEnded) for e in peer.events)
    peer.respond(stream_id, 200)
    assert (await task).status == 200


async def test_smaller_header_table_is_announced_and_honoured() -> None:
    peer = Peer(HEADER_TABLE_SIZE=0)
    await peer.exchange()
    for n in range(3):
        task = await _start(peer)   # h2 rejects a block without the size update
        stream_id = max(peer.requests)
        assert dict(peer.requests[stream_id]["headers"])[b"apns-topic"] == b"org.example"
        peer.respond(stream_id, 200)
        assert (await task).status == 200, n
    assert peer.client.encoder.size == 0


async def test_goaway_fails_only_the_streams_past_the_last_one() -> None:
    peer = Peer()
    await peer.exchange()
    tasks = [await _start(peer) for _ in range(3)]
    first, second, _third = sorted(peer.requests)
    peer.respond(first, 200)
    # A graceful GOAWAY: `second` was processed, its answer follows the GOAWAY.
    peer.h2.send_headers(second, [(b":status", b"200")], end_stream=True)
    answer = peer.h2.data_to_send()
    peer.h2.close_connection(last_stream_id=second, additional_data=b'{"reason":"Shutdown"}')
    peer.to_client(peer.h2.data_to_send())
    assert not peer.wire.closed   # streams up to `second` still get their answers
    peer.to_client(answer)
    assert (await tasks[0]).status == 200
    assert (await tasks[1]).status == 200
    with pytest.raises(StreamError, match="Shutdown"):
        await tasks[2]
    assert peer.client.closing and peer.wire.closed
    with pytest.raises(StreamError):
        await send(peer.client)


async def test_reset_and_timed_out_streams_leave_the_others_alone() -> None:
    peer = Peer()
    await peer.exchange()
    tasks = [await _start(peer, deadline=_deadline(0.05 if n == 1 else 10)) for n in range(3)]
    a, b, c = sorted(peer.requests)
    peer.h2.reset_stream(a)
    peer.to_client(peer.h2.data_to_send())
    with pytest.raises(StreamError, match="reset"):
        await tasks[0]
    with pytest.raises(TimeoutError):       # the client gives up on b, and resets it
        await tasks[1]
    await peer.exchange()
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == b for e in peer.events)
    # its late answer (a header block the table must still follow) is dropped
    peer.respond(c, 200, extra=[(b"x-late", b"1")])
    assert (await tasks[2]).status == 200
    task = await _start(peer)
    peer.respond(max(peer.requests), 200, extra=[(b"x-late", b"1")])
    response = await task
    assert response.headers[b"x-late"] == b"1"
    assert peer.client.slots.in_use == 0 and not peer.client.streams


async def test_continuation_padding_and_ping() -> None:
    peer = Peer()
    await peer.exchange()
    task = await _start(peer)
    [stream_id] = peer.requests
    block = Encoder().encode([(b":status", b"410"), (b"apns-id", b"x" * 50)])
    padded = bytes([3]) + block[:10] + b"\0\0\0"
    peer.to_client(frame(HEADERS, PADDED, stream_id, padded)
                   + frame(CONTINUATION, END_HEADERS, stream_id, block[10:])
                   + frame(0x0, END_STREAM | PADDED, stream_id, bytes([2]) + b"{}" + b"\0\0"))
    response = await task
    assert (response.status, response.body) == (410, b"{}")
    peer.h2.ping(b"12345678")
    peer.to_client(peer.h2.data_to_send())
    events = await peer.exchange()
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678"
               for e in events)


async def test_a_protocol_violation_closes_the_connection() -> None:
    peer = Peer()
    await peer.exchange()
    task = await _start(peer)
    peer.to_client(frame(0x5, END_HEADERS, 1, b"\0\0\0\2"))   # PUSH_PROMISE
    assert peer.wire.closed and peer.client.closing
    peer.client.connection_lost(None)     # what the transport does once closed
    with pytest.raises(StreamError):
        await task


names = st.sampled_from([b"apns-topic", b"apns-expiration", b"apns-collapse-id",
                         b"authorization", b"x-long"])
values = st.binary(min_size=0, max_size=300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.tuples(names, values), max_size=8), min_size=1, max_size=30),
       st.lists(st.sampled_from([4096, 1024, 256, 0, 4096]), max_size=3))
def test_header_encoder_stays_in_step_with_a_real_decoder(
    blocks: list[list[tuple[bytes, bytes]]], resizes: list[int]
) -> None:
    encoder = HeaderEncoder()
    decoder = Decoder()
    for n, fields in enumerate(blocks):
        if resizes and n % 7 == 3:
            size = resizes.pop()
            encoder.resize(size)
            decoder.max_allowed_table_size = min(size, 4096)
        block = encoder.prefix() + HEAD + b"".join(encoder.field(k, v) for k, v in fields)
        decoded = decoder.decode(block, raw=True)
        assert decoded[3:] == fields
        assert encoder.size <= encoder.max_size
        table = decoder.header_table
        assert sum(len(k) + len(v) + 32 for k, v in table.dynamic_entries) == encoder.size


async def test_deadline_covers_the_answer_and_a_busy_connection_says_so() -> None:
    peer = Peer()
    await peer.exchange()
    peer.client.slots.set_limit(1)
    first = asyncio.create_task(send(peer.client, deadline=_deadline(0.1)))
    await peer.exchange()
    with pytest.raises(StreamError):    # no free stream: the pool would wait for one
        await send(peer.client)
    with pytest.raises(TimeoutError):   # never answered
        await first
    await peer.exchange()
    assert [e.stream_id for e in peer.events if isinstance(e, h2.events.StreamReset)] == [1]
    assert peer.client.slots.in_use == 0 and not peer.client.streams
    task = await _start(peer)
    peer.respond(max(peer.requests), 200)
    assert (await task).status == 200


async def test_start_answers_through_its_callback_and_resets_what_timed_out() -> None:
    """``start`` hands the answer or the exception to its callback, resets a timed-out
    stream, and sends nothing (False) when no stream is free."""
    peer = Peer()
    await peer.exchange()
    peer.client.slots.set_limit(2)
    answers: list[Response | Exception] = []
    two = asyncio.Event()

    def answered(answer: Response | Exception) -> None:
        answers.append(answer)
        if len(answers) == 2:
            two.set()

    def start(body: bytes, deadline: float) -> bool:
        return peer.client.start(b"POST", PATH, FIELDS, (), body, deadline, answered)

    assert start(b'{"a":1}', _deadline())
    assert start(b'{"b":2}', _deadline(0.05))
    assert not start(b"{}", _deadline())
    await peer.exchange()
    first, second = sorted(peer.requests)
    assert peer.requests[first]["body"] == b'{"a":1}'
    assert dict(peer.requests[first]["headers"])[b"authorization"] == FIELDS[1][1]
    peer.respond(first, 200, b'{"ok":true}')
    await asyncio.sleep(0)
    [answer] = answers
    assert isinstance(answer, Response)
    assert (answer.status, answer.body) == (200, b'{"ok":true}')
    await two.wait()                         # the second one times out
    assert isinstance(answers[1], TimeoutError)
    await peer.exchange()
    assert [e.stream_id for e in peer.events if isinstance(e, h2.events.StreamReset)] == [second]
    assert peer.client.slots.in_use == 0 and not peer.client.streams
    assert len(answers) == 2
    assert start(b"{}", _deadline())
    await peer.exchange()
    peer.client.connection_lost(None)        # a lost connection fails what is in flight
    assert isinstance(answers[2], StreamError)
    assert not start(b"{}", _deadline())


async def test_indexed_response_blocks_are_decoded_once_while_the_table_stands() -> None:
    """With a response table, a peer's repeated answer is a block of one-byte indexes;
    the client remembers what such a block means until the table changes: then the
    same bytes may mean something else."""
    peer = Peer(response_table_size=4096)
    await peer.exchange()
    seen = []
    for value in (b"1", b"1", b"1", b"2", b"2"):
        task = await _start(peer)
        peer.respond(max(peer.requests), 200, extra=[(b"x-a", value)])
        seen.append((await task).headers[b"x-a"])
    assert seen == [b"1", b"1", b"1", b"2", b"2"]
    blocks = list(peer.client._decoded)
    assert blocks == [b"\x88\xbe"]   # :status 200, then the newest entry: x-a: 2


_NAMES = st.sampled_from([b"content-type", b"vary", b"date", b"x-a", b"retry-after"])
_VALUES = st.sampled_from([b"1", b"2", b"application/json", b"Origin", b"x" * 40])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(_NAMES, _VALUES), max_size=4), min_size=1, max_size=12),
       st.integers(min_value=0, max_value=4096))
def test_remembered_header_blocks_mean_what_a_fresh_decoder_says(
    answers: list[list[tuple[bytes, bytes]]], table_size: int
) -> None:
    """Whatever a peer's encoder indexes or evicts (a small table evicts often), every
    answer the client hands on has the headers the peer sent."""
    async def run() -> None:
        peer = Peer(response_table_size=table_size)
        await peer.exchange()
        await peer.exchange()
        for extra in answers:
            task = await _start(peer)
            peer.respond(max(peer.requests), 200, extra=extra)
            response = await task
            assert response.status == 200
            expected = dict([(b":status", b"200"), *extra])
            assert response.headers == expected

    asyncio.run(run())


async def test_a_malformed_header_name_is_refused_before_anything_is_sent() -> None:
    peer = Peer()
    await peer.exchange()
    for name in (b":authority", b"Upper", b""):
        with pytest.raises(ValueError, match="not a request header name"):
            peer.client.start(b"POST", PATH, ((name, b"x"),), (), b"{}", _deadline(),
                              lambda _: None)
    assert peer.client.slots.in_use == 0 and not peer.client.streams


# ---- a 200's headers left undecoded (http2.Response) ----------------------------------

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _hstring(value: bytes, huffman: bool) -> bytes:
    if huffman:
        coded = _HUFFMAN.encode(value)
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(value), 7, 0) + value


_TOKEN = st.binary(min_size=1, max_size=12).map(lambda b: b.hex().encode())
# One representation (RFC 7541 §6) and whether it leaves the table alone: indexed
# (static 1-61, or dynamic 62+), literals without / never / with incremental indexing
# (static or new name, plain or Huffman strings), a table size update.
_LITERALS = [(0x00, True), (0x10, True), (0x40, False)]   # without, never, incremental


def _literal(kind: tuple[int, bool], name: int | bytes, value: bytes,
             huffman: bool) -> tuple[bytes, bool]:
    pattern, alone = kind
    prefix = 6 if pattern == 0x40 else 4
    head = (_integer(name, prefix, pattern) if isinstance(name, int)
            else _integer(0, prefix, pattern) + _hstring(name, huffman))
    return head + _hstring(value, huffman), alone


_REPRESENTATION = st.one_of(
    st.integers(1, 61).map(lambda i: (_integer(i, 7, 0x80), True)),
    st.integers(62, 64).map(lambda i: (_integer(i, 7, 0x80), False)),
    st.builds(_literal, st.sampled_from(_LITERALS), st.one_of(st.integers(1, 61), _TOKEN),
              _TOKEN, st.booleans()),
    st.integers(0, 4096).map(lambda n: (_integer(n, 5, 0x20), False)),
)


def _primed_decoder() -> Decoder:
    """A decoder whose dynamic table holds three entries (indexes 62-64)."""
    decoder = Decoder()
    decoder.decode(Encoder().encode([(b"x-a", b"1"), (b"x-b", b"2"), (b"x-c", b"3")]))
    assert len(decoder.header_table.dynamic_entries) == 3
    return decoder


def _table_off_decoder() -> Decoder:
    """A decoder whose peer has set the table's size to 0 (as ours asks)."""
    decoder = Decoder()
    decoder.decode(b"\x20")
    assert decoder.header_table.maxsize == 0
    return decoder


@settings(max_examples=300, deadline=None)
@given(st.lists(_REPRESENTATION, max_size=6))
def test_a_block_is_self_contained_exactly_when_it_leaves_the_table_alone(
        representations: list[tuple[bytes, bool]]) -> None:
    """Self-contained: decoded by a fresh decoder as by the connection's, which it leaves
    unchanged; anything that reads or writes the table (a dynamic index, incremental
    indexing, a size update) makes it not."""
    block = b"".join(r for r, _ in representations)
    alone = all(a for _, a in representations)
    assert _self_contained(block, 0, table_off=False) == alone
    if alone:
        decoder = _primed_decoder()
        table = list(decoder.header_table.dynamic_entries)
        assert Decoder().decode(block, raw=True) == decoder.decode(block, raw=True)
        assert list(decoder.header_table.dynamic_entries) == table


@settings(max_examples=300, deadline=None)
@given(st.lists(_REPRESENTATION, max_size=6))
def test_with_the_table_off_incremental_indexing_is_self_contained_too(
        representations: list[tuple[bytes, bool]]) -> None:
    """With the peer's table at size 0 an indexed literal indexes nothing: such a block
    decodes the same later, and leaves the table empty."""
    block = b"".join(r for r, _ in representations)
    alone = all(a or r[0] & 0xC0 == 0x40 for r, a in representations)
    assert _self_contained(block, 0, table_off=True) == alone
    if alone:
        decoder = _table_off_decoder()
        assert Decoder().decode(block, raw=True) == decoder.decode(block, raw=True)
        assert not decoder.header_table.dynamic_entries


@given(st.binary(max_size=40))
def test_any_bytes_are_judged_without_an_error(block: bytes) -> None:
    for table_off in (False, True):   # a truncated or absurd block: "no", never an error
        _self_contained(block, 0, table_off)


@pytest.mark.parametrize("table_size", [0, 4096])
async def test_a_200_with_unindexed_headers_is_decoded_only_when_asked(
        table_size: int) -> None:
    """APNs' answer to a push: :status 200 and a never-indexed apns-id. The response
    carries the block undecoded; the connection's table stays in step with the peer's
    for the responses around it (with a table: one that indexes a header, then one that
    refers to the entry)."""
    peer = Peer(response_table_size=table_size)
    await peer.exchange()
    lazy = []
    for n, extra in enumerate([
            [(b"x-kept", b"v1")],
            [NeverIndexedHeaderTuple(b"apns-id", b"id-1")],
            [NeverIndexedHeaderTuple(b"apns-id", b"id-2")],
            [(b"x-kept", b"v1")]]):
        task = await _start(peer)
        [stream_id] = [s for s in peer.requests if "done" not in peer.requests[s]]
        peer.requests[stream_id]["done"] = True
        peer.respond(stream_id, 200 if n in (1, 2) else 201, extra=extra)
        response = await task
        lazy.append(response._headers is None)
        name, value = extra[0]
        assert response.headers[name] == value
        assert response.status == (200 if n in (1, 2) else 201)
    # The first 200 may open with the table size update the peer owes our SETTINGS;
    # the second is a bare :status 200 and a literal.
    assert lazy[2] and not lazy[0] and not lazy[3]


async def test_a_200_from_a_peer_that_indexes_into_an_empty_table_is_not_decoded() -> None:
    """h2's encoder (the fakes', and a common one) indexes every new header; with our
    table size 0 that indexes nothing, and the answer is left undecoded all the same."""
    peer = Peer(response_table_size=0)
    await peer.exchange()
    lazy = []
    for n in range(3):
        task = await _start(peer)
        [stream_id] = [s for s in peer.requests if "done" not in peer.requests[s]]
        peer.requests[stream_id]["done"] = True
        peer.respond(stream_id, 200, extra=[(b"apns-id", f"id-{n}".encode())])
        response = await task
        lazy.append(response._headers is None)
        assert response.headers[b"apns-id"] == f"id-{n}".encode()
    assert lazy[1:] == [True, True]
