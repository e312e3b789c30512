"""The webhook signature: ``Geopush-Signature: t=<unix>,v1=<hex>``.

``v1 = HMAC-SHA256(secret, "<t>." + raw body)``. Several ``v1`` entries may be sent
(a vendor rotating secrets signs with both); any one verifying is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

HEADER = "Geopush-Signature"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


# What a well-formed header holds. Anything else is a bad signature: never an error,
# never a different answer for a known agency than for an unknown one.
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_SIGNATURE = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_HEADER = 1024
MAX_SIGNATURES = 4


def parse_header(header: str | None) -> tuple[int, list[str]] | None:
    """``(t, [v1, ...])`` from a well-formed header, None from anything else."""
    if not header or len(header) > MAX_HEADER:
        return None
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        value = value.strip()
        if not sep:
            return None
        if key == "t":
            if timestamp is not None or not _TIMESTAMP.match(value):
                return None
            timestamp = int(value)
        elif key == "v1":
            if not _SIGNATURE.match(value) or len(candidates) == MAX_SIGNATURES:
                return None
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        return None
    return timestamp, candidates


# Verifying against no secret (an unknown agency) still computes one MAC, so the two
# cases cost the same.
_NO_SECRET = [secrets.token_hex(32)]


def verify(
    header: str | None, body: bytes, secrets_: list[str], *, now: float, tolerance_s: int
) -> bool:
    """True when the header is well formed and fresh and one of its signatures matches
    one secret. Never raises, whatever the header holds."""
    parsed = parse_header(header)
    if parsed is None:
        return False
    timestamp, candidates = parsed
    fresh = abs(now - timestamp) <= tolerance_s
    prefix = f"{timestamp}.".encode()
    ok = False
    for secret in secrets_ or _NO_SECRET:
        expected = hmac.new(secret.encode(), prefix + body, hashlib.sha256).hexdigest()
        for candidate in candidates:
            # no early exit: every comparison is made, in constant time
            ok |= hmac.compare_digest(expected, candidate)
    return ok and fresh and bool(secrets_)
