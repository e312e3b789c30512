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

from workers.http2 import Http2Connection, StreamError, never_indexed, path_literal

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
        self._host = host
        self._port = port
        self._ssl = ssl_context or ssl.create_default_context()
        self._ssl.set_alpn_protocols(["h2"])
        self._max_connections = max(1, max_connections)
        self._timeout = request_timeout
        self._topic = topic.encode()
        self._authority = host.encode() if port == 443 else f"{host}:{port}".encode()
        self._lock = asyncio.Lock()
        self.connections: list[Http2Connection] = []

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
            connection = self._free_connection()
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    connection = await self._acquire()
            response = await connection.request(head, tuple(fields), tail, body, deadline)
        except TimeoutError:
            raise ApnsTransportError(f"no APNs response within {self._timeout} s") from None
        except (StreamError, OSError) as exc:   # ssl.SSLError is an OSError
            raise ApnsTransportError(f"APNs connection failed: {exc}") from exc
        reason, timestamp = _error_body(response.body)
        return ApnsResponse(
            status=response.status, reason=reason, timestamp_ms=timestamp,
            apns_id=response.headers.get(b"apns-id", b"").decode() or apns_id or "",
        )

    def _free_connection(self) -> Http2Connection | None:
        """A connection with a free stream, without waiting: the least loaded once the
        pool is full, else one below ``SPREAD_STREAMS`` (so that load spreads over
        several connections, and so over the gateway's front ends)."""
        live = [c for c in self.connections if not c.closing]
        if len(live) >= self._max_connections:
            best = min(live, key=_in_use)
            return None if best.is_busy else best
        for connection in live:
            if not connection.is_busy and connection.slots.in_use < SPREAD_STREAMS:
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
                logger.info("APNs connection opened (total: %d)", len(self.connections))
                return connection
        # every connection is at its stream limit: queue on the least loaded one
        return min(live, key=lambda c: c.slots.load)

    async def _connect(self) -> Http2Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(
            Http2Connection, host=self._host, port=self._port, ssl=self._ssl,
        )
        connection.closed.add_done_callback(lambda _: self._discard(connection))
        return connection

    def _discard(self, connection: Http2Connection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    async def close(self) -> None:
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


def _in_use(connection: Http2Connection) -> int:
    return connection.slots.in_use


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
