"""geopush's APNs client: a small pool of lean HTTP/2 connections (``workers.http2``).

It replaces aioapns 4.0, whose two bugs the suite still demonstrates against the fake
gateway (``tests/integration/test_apns_client.py``): it never returns flow-control
credit, so a connection stalls after ~2,300 error responses, and a cancelled send
kills the connection for every other send on it. We fixed both in a subclass first;
the profile then showed h2's generic machinery underneath (validation, per-stream
state, HPACK with Huffman, an event per frame) as half of the sender's CPU per push,
so the connection is now ours, and the aioapns dependency is gone from the server.

What the client does:

- one provider token (ES256 JWT) for all connections, from a ``TokenSource`` shared
  across processes (``workers.apns_token``) or minted here and kept 40 minutes (Apple:
  refresh at most every 20, at least every 60);
- ``apns-expiration`` is an absolute unix time; ``apns-id`` is sent only when the
  caller has one (APNs answers with the one it assigned otherwise);
- a connection starts with one stream (Apple's rule until the first success) and then
  follows the server's SETTINGS; connections open lazily, up to ``max_connections``,
  a new one once every open one carries ``SPREAD_STREAMS`` sends, and sends go to the
  least loaded connection once all are open;
- each send makes one attempt within ``request_timeout`` (retrying is the caller's
  business) and every transport failure surfaces as ``ApnsTransportError``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import msgspec

from workers.http2 import (
    Http2Connection,
    Http2Pool,
    StreamError,
    never_indexed,
    path_literal,
)

logger = logging.getLogger(__name__)

__all__ = ["ApnsClient", "ApnsResponse", "ApnsTransportError", "TokenSource"]

TOKEN_TTL_S = 40 * 60
# Streams in flight on a connection before the pool opens another (up to its maximum).
SPREAD_STREAMS = 100

_METHOD_SCHEME = b"\x83\x87"     # :method POST, :scheme https (static table 3 and 7)
_encode_json = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class ApnsResponse:
    status: int
    reason: str | None
    timestamp_ms: int | None
    apns_id: str


class ApnsTransportError(Exception):
    """The push may not have reached APNs (refused, lost, timed out): retryable."""


class TokenSource(Protocol):
    """Where the provider token comes from when several processes must share one."""

    async def header(self) -> str: ...


class LocalProviderToken:
    """A provider token minted in this process and kept ``TOKEN_TTL_S``."""

    def __init__(self, key_pem: str, key_id: str, team_id: str) -> None:
        self._key_pem = key_pem
        self._key_id = key_id
        self._team_id = team_id
        self._header = ""
        self._issued_at = 0.0

    async def header(self) -> str:
        now = time.time()
        if not self._header or now - self._issued_at >= TOKEN_TTL_S:
            token = jwt.encode({"iss": self._team_id, "iat": int(now)}, self._key_pem,
                               algorithm="ES256", headers={"kid": self._key_id})
            self._header, self._issued_at = f"bearer {token}", now
        return self._header


class ApnsClient:
    """Sends pushes over a small pool of HTTP/2 connections; connects lazily."""

    def __init__(
        self, *, key_pem: str, key_id: str, team_id: str, topic: str,
        host: str = "api.push.apple.com", port: int = 443,
        ssl_context: ssl.SSLContext | None = None, max_connections: int = 4,
        request_timeout: float = 10.0, token_source: TokenSource | None = None,
    ) -> None:
        self._tokens = token_source or LocalProviderToken(key_pem, key_id, team_id)
        context = ssl_context or ssl.create_default_context()
        context.set_alpn_protocols(["h2"])
        # One stream per connection until a push succeeds (Apple's rule), then the
        # server's SETTINGS; a new connection once each carries SPREAD_STREAMS.
        self._pool = Http2Pool(host, port, ssl_context=context, max_connections=max_connections,
                               initial_stream_limit=1, spread_streams=SPREAD_STREAMS,
                               name="APNs")
        self._timeout = request_timeout
        self._topic = topic.encode()
        self._authority = host.encode() if port == 443 else f"{host}:{port}".encode()

    async def send(
        self, token: str, payload: dict[str, Any] | bytes, *, collapse_id: str | None,
        expiration: int | None, priority: int = 10, push_type: str = "alert",
        apns_id: str | None = None,
    ) -> ApnsResponse:
        """``payload``: the aps dictionary, or its JSON already encoded."""
        body = payload if isinstance(payload, bytes) else _encode_json(payload)
        authorization = await self._tokens.header()
        fields: list[tuple[bytes, bytes]] = [
            (b":authority", self._authority),
            (b"apns-topic", self._topic),
            (b"apns-push-type", push_type.encode()),
            (b"apns-priority", str(priority).encode()),
        ]
        if expiration is not None:
            fields.append((b"apns-expiration", str(int(expiration)).encode()))
        if collapse_id is not None:
            fields.append((b"apns-collapse-id", collapse_id.encode()))
        fields.append((b"authorization", authorization.encode()))
        head = _METHOD_SCHEME + path_literal(b"/3/device/" + token.encode())
        tail = b"" if apns_id is None else never_indexed(b"apns-id", apns_id.encode())
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            response = await self._pool.request(head, tuple(fields), tail, body, deadline)
        except TimeoutError:
            raise ApnsTransportError(f"no APNs response within {self._timeout} s") from None
        except (StreamError, OSError) as exc:   # ssl.SSLError is an OSError
            raise ApnsTransportError(f"APNs connection failed: {exc}") from exc
        reason, timestamp = _error_body(response.body)
        return ApnsResponse(
            status=response.status, reason=reason, timestamp_ms=timestamp,
            apns_id=response.headers.get(b"apns-id", b"").decode() or apns_id or "",
        )

    @property
    def connections(self) -> list[Http2Connection]:
        return self._pool.connections

    async def close(self) -> None:
        await self._pool.close()


def _error_body(body: bytes) -> tuple[str | None, int | None]:
    """APNs explains a refusal in a JSON body: ``reason`` and, for 410, ``timestamp``."""
    if not body:
        return None, None
    try:
        parsed = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    reason = parsed.get("reason")
    timestamp = parsed.get("timestamp")
    return (reason if isinstance(reason, str) else None,
            timestamp if isinstance(timestamp, int) else None)
