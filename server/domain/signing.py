"""The webhook signature: ``Geopush-Signature: t=<unix>,v1=<hex>``.

``v1 = HMAC-SHA256(secret, "<t>." + raw body)``. Several ``v1`` entries may be sent
(a vendor rotating secrets signs with both); any one verifying is enough.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

HEADER = "Geopush-Signature"


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    header: str | None, body: bytes, secrets_: list[str], *, now: float, tolerance_s: int
) -> bool:
    """True when the header is fresh and one of its signatures matches one secret."""
    if not header or not secrets_:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value.strip().lower())
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance_s:
        return False
    prefix = f"{timestamp}.".encode()
    ok = False
    for secret in secrets_:
        expected = hmac.new(secret.encode(), prefix + body, hashlib.sha256).hexdigest()
        for candidate in candidates:
            # no early exit: every comparison is made, in constant time
            ok |= hmac.compare_digest(expected, candidate)
    return ok
