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
