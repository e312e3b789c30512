"""The FCM client's HTTP/1.1 response parser (workers.gateways.http1.ResponseParser): any
well-formed response, cut into any pieces, parses back to what was sent; anything
else is a ProtocolError, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.gateways.http1 import MAX_HEADER_BYTES, ProtocolError, Response, ResponseParser

FAST = settings(max_examples=300, deadline=None)

header_names = st.sampled_from(
    ["content-type", "retry-after", "x-goog-id", "vary", "server", "cache-control"])
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)
bodies = st.binary(max_size=3000)


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, int, dict[str, str], bytes, str]:
    status = draw(st.sampled_from([200, 400, 401, 404, 429, 500, 503]))
    headers = draw(st.dictionaries(header_names, header_values, max_size=5))
    body = draw(bodies)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    head = [f"HTTP/1.1 {status} Whatever Reason"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    if framing == "length":
        head.append(f"Content-Length: {len(body)}")
        payload = body
    elif framing == "chunked":
        head.append("Transfer-Encoding: chunked")
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        payload = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in pieces if p)
        trailers = draw(st.sampled_from([b"", b"x-trailer: 1\r\n"]))
        payload += b"0\r\n" + trailers + b"\r\n"
    else:
        head.append("Connection: close")
        payload = body
    interim = draw(st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]))
    wire = interim + ("\r\n".join(head) + "\r\n\r\n").encode() + payload
    return wire, status, headers, body, framing


def _feed_in_pieces(parser: ResponseParser, wire: bytes, cuts: list[int]) -> Response | None:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    result = None
    for a, b in zip([0, *points], [*points, len(wire)], strict=True):
        got = parser.feed(wire[a:b])
        if got is not None:
            assert result is None, "two responses from one"
            result = got
    return result


@FAST
@given(responses(), st.lists(st.integers(0, 10_000), max_size=8))
def test_any_response_in_any_pieces(
    response: tuple[bytes, int, dict[str, str], bytes, str], cuts: list[int]
) -> None:
    wire, status, headers, body, framing = response
    parser = ResponseParser()
    parsed = _feed_in_pieces(parser, wire, cuts)
    if framing == "close":
        assert parsed is None
        parsed = parser.feed_eof()
        assert not parser.keep_alive
    else:
        assert parser.keep_alive
    assert parsed is not None
    assert parsed.status == status
    assert parsed.body == body
    for name, value in headers.items():
        assert parsed.headers[name] == value
    assert parser.buffer == b""


@FAST
@given(st.lists(st.tuples(st.sampled_from([200, 404, 503]), bodies), min_size=2, max_size=4))
def test_responses_one_after_another_on_a_kept_alive_connection(
    answers: list[tuple[int, bytes]]
) -> None:
    parser = ResponseParser()
    for status, body in answers:
        wire = f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
        parsed = parser.feed(wire)
        assert parsed is not None and (parsed.status, parsed.body) == (status, body)
        assert parser.keep_alive


@FAST
@given(st.binary(max_size=400))
def test_garbage_is_a_protocol_error_or_incomplete(data: bytes) -> None:
    parser = ResponseParser()
    try:
        parser.feed(data)
        parser.feed_eof()
    except ProtocolError:
        pass


@FAST
@given(responses(), st.integers(0, 10_000), st.binary(min_size=1, max_size=3))
def test_a_corrupted_response_never_raises_anything_else(
    response: tuple[bytes, int, dict[str, str], bytes, str], at: int, junk: bytes
) -> None:
    wire = response[0]
    at %= len(wire)
    parser = ResponseParser()
    try:
        parser.feed(wire[:at] + junk + wire[at + len(junk):])
        parser.feed_eof()
    except ProtocolError:
        pass


@pytest.mark.parametrize("wire", [
    b"HTTP/2 200 OK\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nName(x): y\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nN\xe4me: y\r\n\r\n",
    b"HTTP/1.1 20x OK\r\n\r\n",
    b"HTTP/1.2 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd",
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n",
])
def test_malformed_responses_are_protocol_errors(wire: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(wire)


def test_connection_close_and_http_1_0_are_not_kept_alive() -> None:
    parser = ResponseParser()
    parsed = parser.feed(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert parsed is not None and parsed.body == b"ok" and not parser.keep_alive
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n") is not None
    assert not parser.keep_alive
    parser = ResponseParser()
    assert parser.feed(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n") is not None
    assert parser.keep_alive


def test_any_token_is_a_header_name_and_whitespace_around_values_goes() -> None:
    parsed = ResponseParser().feed(
        b"HTTP/1.1 200\r\nX_Odd.Name~!: \t spaced value \t\r\nContent-Length:0\r\n\r\n")
    assert parsed is not None and parsed.status == 200
    assert parsed.headers == {"x_odd.name~!": "spaced value", "content-length": "0"}


def test_repeated_headers_are_joined() -> None:
    parsed = ResponseParser().feed(
        b"HTTP/1.1 503 X\r\nVary: a\r\nvary: b\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n")
    assert parsed is not None
    assert parsed.headers == {"vary": "a, b", "retry-after": "7", "content-length": "0"}
