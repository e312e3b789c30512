"""The benchmark fakes' hpack remembers Huffman-coded strings: the same answers, errors
included; and turning it off restores the library as it was (the memo is opt-in, for
the benchmark's fake processes only)."""

from __future__ import annotations

from collections.abc import Iterator

import hpack
import hpack.hpack
import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest import h2server


@pytest.fixture(autouse=True)
def remembering() -> Iterator[None]:
    undo = h2server.remember_huffman_strings()
    try:
        yield
    finally:
        undo()


def _never_indexed_block(value: bytes) -> bytes:
    # as nghttp2 sends authorization: a Huffman-coded literal, never indexed
    return Encoder().encode([NeverIndexedHeaderTuple(b"authorization", value)], huffman=True)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_repeated_huffman_literals_decode_as_before(value: bytes) -> None:
    decoder = Decoder()
    block = _never_indexed_block(value)
    for _ in range(3):
        assert decoder.decode(block, raw=True) == [(b"authorization", value)]


def test_invalid_huffman_strings_are_still_refused_every_time() -> None:
    # a literal without indexing, new name "x", value flagged Huffman: 0xff 0xff 0xff
    # is an EOS prefix longer than 7 bits, which RFC 7541 §5.2 makes an error
    block = b"\x00\x01x\x83\xff\xff\xff"
    for _ in range(2):
        with pytest.raises(hpack.HPACKDecodingError):
            Decoder().decode(block)


def test_the_memo_is_opt_in_and_undone() -> None:
    assert getattr(hpack.hpack.decode_huffman, "remembers", False)   # (the fixture's)
    original = hpack.hpack.decode_huffman
    h2server.remember_huffman_strings()()     # already on: a no-op, undone as a no-op
    assert hpack.hpack.decode_huffman is original
