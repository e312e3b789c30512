"""Per-device secrets: made once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets


def new_device_secret() -> str:
    return "dsec_" + secrets.token_urlsafe(32)


def hash_device_secret(secret: str) -> bytes:
    # The secret is 256 random bits: a plain SHA-256 is not brute-forceable and keeps
    # the per-request check cheap (no password-hashing work factor needed).
    return hashlib.sha256(secret.encode()).digest()
