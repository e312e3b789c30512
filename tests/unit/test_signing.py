from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from server.domain.signing import sign, verify

NOW = 1_800_000_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"F1"}'
    expected = hmac.new(b"s3cret", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert sign("s3cret", body, NOW) == f"t={NOW},v1={expected}"


def test_verifies_within_window_and_not_outside() -> None:
    body = b"{}"
    assert verify(sign("k", body, NOW - 300), body, ["k"], now=NOW, tolerance_s=300)
    assert verify(sign("k", body, NOW + 300), body, ["k"], now=NOW, tolerance_s=300)
    assert not verify(sign("k", body, NOW - 301), body, ["k"], now=NOW, tolerance_s=300)
    assert not verify(sign("k", body, NOW + 301), body, ["k"], now=NOW, tolerance_s=300)


def test_either_secret_verifies_during_rotation() -> None:
    body = b"{}"
    assert verify(sign("old", body, NOW), body, ["new", "old"], now=NOW, tolerance_s=300)
    assert not verify(sign("older", body, NOW), body, ["new", "old"], now=NOW, tolerance_s=300)


def test_any_of_several_v1_entries_may_match() -> None:
    body = b"{}"
    good = sign("k", body, NOW).split("v1=")[1]
    header = f"t={NOW},v1={'0' * 64},v1={good}"
    assert verify(header, body, ["k"], now=NOW, tolerance_s=300)


def test_tampered_body_fails() -> None:
    assert not verify(sign("k", b"{}", NOW), b"{ }", ["k"], now=NOW, tolerance_s=300)


@given(st.text(max_size=200))
def test_garbage_headers_never_verify_or_raise(header: str) -> None:
    assert verify(header, b"{}", ["k"], now=NOW, tolerance_s=300) is False


def test_no_secrets_means_no_verification() -> None:
    assert not verify(sign("k", b"{}", NOW), b"{}", [], now=NOW, tolerance_s=300)


MALFORMED_PARTS = st.one_of(
    st.integers(-10**30, 10**30).map(lambda t: f"t={t}"),
    st.just("t=" + "9" * 5000), st.just("t="), st.just("t=1e9"), st.just("t=١٢٣"),
    st.text(max_size=70).map(lambda v: f"v1={v}"),
    st.just("v1=" + "é" * 64), st.just("v1=" + "a" * 63), st.just("v1=" + "a" * 65),
    st.just("v1=" + "g" * 64), st.just("v1="), st.just("v1"), st.just("=="), st.just(""),
    st.text(max_size=20),
)


@given(st.lists(MALFORMED_PARTS, max_size=6), st.booleans())
def test_malformed_headers_never_raise_and_only_verify_when_well_formed(
    parts: list[str], with_secret: bool
) -> None:
    """Huge or non-numeric t, non-ASCII or odd-length v1, missing parts: a bad
    signature, for a known agency (a secret) exactly as for an unknown one (none)."""
    header = ",".join(parts)
    secrets_ = ["k"] if with_secret else []
    assert verify(header, b"{}", secrets_, now=NOW, tolerance_s=300) is False
    good = sign("k", b"{}", NOW)
    assert verify(f"{good},{header}", b"{}", secrets_, now=NOW, tolerance_s=300) in (
        False, with_secret)
