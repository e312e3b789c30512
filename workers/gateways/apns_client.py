"""geopush's APNs client: provider tokens, APNs headers and answers, over a small pool
of connections of geopush's HTTP/2 client (``workers.gateways.http2``; why not aioapns:
docs/adr/0001-own-http2-client.md).

- one provider token (ES256 JWT) for all connections, from a ``TokenSource`` shared
  across processes (``workers.apns_token``) or minted here and kept 40 minutes (Apple:
  refresh at most every 20, at least every 60);
- ``apns-expiration`` is an absolute unix time; ``apns-id`` is the caller's, or one
  made here (``new_apns_id``): APNs answers with the request's, so a success's
  headers need no decoding (``http2.Response``);
- a connection starts with one stream (Apple's rule until the first success) and then
  follows the server's SETTINGS; connections open lazily, up to ``max_connections``,
  a new one once every open one carries ``SPREAD_STREAMS`` sends, and sends go to the
  least loaded connection once all are open;
- each send makes one attempt within ``request_timeout`` (retrying is the caller's
  business) and every transport failure surfaces as ``ApnsTransportError``;
- ``start`` answers through a callback; with the provider token at hand
  (``TokenSource.current``) it costs no task or future; the headers a fan-out repeats
  are built once for all its devices.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt

from workers.gateways.http2 import Fields, Http2Connection, Http2Pool, Response, StreamError
from workers.gateways.waiting import Done

logger = logging.getLogger(__name__)

__all__ = ["ApnsClient", "ApnsResponse", "ApnsTransportError", "TokenSource"]

TOKEN_TTL_S = 40 * 60
# Streams in flight on a connection before the pool opens another (up to its maximum).
SPREAD_STREAMS = 100



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

    def current(self) -> str | None:
        """The header ``header()`` would return now without any I/O, or None."""
        ...


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

    def current(self) -> str | None:
        if not self._header or time.time() - self._issued_at >= TOKEN_TTL_S:
            return None
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
        self._fields_cache: dict[tuple[Any, ...], Fields] = {}
        self._topic = topic.encode()

    def start(
        self, token: str, payload: bytes, done: Done[ApnsResponse], *,
        collapse_id: str | None, expiration: int | None, priority: int = 10,
        push_type: str = "alert", apns_id: str | None = None,
    ) -> None:
        """Send one push (``payload``: the encoded JSON); ``done`` is called once with
        APNs' response or an ``ApnsTransportError``. With the provider token at hand
        (the usual case) and a free stream, it costs no task or future."""
        authorization = self._tokens.current()
        if authorization is None:
            self._pool.in_task(self._start_with_token(
                token, payload, done, collapse_id, expiration, priority, push_type,
                apns_id), functools.partial(self._response_done, apns_id, done))
            return
        self._send(authorization, token, payload, done, collapse_id, expiration, priority,
                   push_type, apns_id)

    async def _start_with_token(
        self, token: str, payload: bytes, done: Done[ApnsResponse],
        collapse_id: str | None, expiration: int | None, priority: int, push_type: str,
        apns_id: str | None,
    ) -> None:
        authorization = await self._tokens.header()
        self._send(authorization, token, payload, done, collapse_id, expiration, priority,
                   push_type, apns_id)

    def _send(
        self, authorization: str, token: str, payload: bytes, done: Done[ApnsResponse],
        collapse_id: str | None, expiration: int | None, priority: int, push_type: str,
        apns_id: str | None,
    ) -> None:
        fields = self._fields(authorization, push_type, priority, expiration, collapse_id)
        if apns_id is None:
            apns_id = new_apns_id()
        self._pool.start(b"POST", b"/3/device/" + token.encode(), fields,
                         ((b"apns-id", apns_id.encode()),), payload,
                         self._pool.deadline(self._timeout),
                         functools.partial(self._response_done, apns_id, done))

    def _response_done(self, apns_id: str | None, done: Done[ApnsResponse],
                  answer: Response | Exception) -> None:
        result: ApnsResponse | Exception
        if isinstance(answer, Response):
            try:
                result = _response(answer, apns_id)
            except Exception as exc:   # e.g. a broken apns-id header: not a push's fault
                result = ApnsTransportError(f"unreadable APNs response: {exc!r}")
        elif isinstance(answer, TimeoutError | StreamError | OSError):
            result = self._transport_error(answer)
        else:
            result = answer
        done(result)

    def _fields(self, authorization: str, push_type: str, priority: int,
                expiration: int | None, collapse_id: str | None) -> Fields:
        """The headers that go through the HPACK table: the same for every device of a
        fan-out, so built once for all of them."""
        key = (authorization, push_type, priority, expiration, collapse_id)
        fields = self._fields_cache.get(key)
        if fields is None:
            built = [
                (b"apns-topic", self._topic),
                (b"apns-push-type", push_type.encode()),
                (b"apns-priority", str(priority).encode()),
            ]
            if expiration is not None:
                built.append((b"apns-expiration", str(int(expiration)).encode()))
            if collapse_id is not None:
                built.append((b"apns-collapse-id", collapse_id.encode()))
            built.append((b"authorization", authorization.encode()))
            fields = tuple(built)
            if len(self._fields_cache) >= 256:
                self._fields_cache.clear()
            self._fields_cache[key] = fields
        return fields

    def _transport_error(self, exc: BaseException) -> ApnsTransportError:
        if isinstance(exc, TimeoutError):
            return ApnsTransportError(f"no APNs response within {self._timeout} s")
        return ApnsTransportError(f"APNs connection failed: {exc}")   # SSLError: OSError

    @property
    def connections(self) -> list[Http2Connection]:
        return self._pool.connections

    async def close(self) -> None:
        await self._pool.close()


def new_apns_id() -> str:
    """A random (version 4) UUID in APNs' canonical form, lowercase 8-4-4-4-12; from
    a seeded PRNG, without the system call ``uuid.uuid4`` makes: it identifies a
    request to Apple, it guards nothing."""
    h = f"{_RANDOM.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


_RANDOM = random.Random()
# The variant's two high bits 10: the first hex digit of the fourth group is 8, 9, a, b.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def _response(response: Response, apns_id: str | None) -> ApnsResponse:
    if response.status == 200 and apns_id:
        # APNs answers a request's own apns-id; the headers are left undecoded.
        return ApnsResponse(status=200, reason=None, timestamp_ms=None, apns_id=apns_id)
    reason, timestamp = _error_body(response.body)
    return ApnsResponse(
        status=response.status, reason=reason, timestamp_ms=timestamp,
        apns_id=response.headers.get(b"apns-id", b"").decode() or apns_id or "",
    )


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
