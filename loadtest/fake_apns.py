"""A fake APNs gateway: TLS + HTTP/2 (with or without ALPN), ES256 provider tokens,
Apple's request rules, real HTTP/2 flow control and Apple's stream limit.

In-process::

    fake = FakeApns(tls=ensure_tls(d), provider_keys={kid: public_pem}, team_id=..., topic=...)
    await fake.start(port=0, control_port=None)
    ...; fake.deliveries; await fake.stop()

As a process: ``python -m loadtest.fake_apns --help``. The control API (plain HTTP on
the control port) is ``GET/DELETE /_fake/deliveries``, ``POST /_fake/unregistered``,
``POST /_fake/faults``, ``GET /_fake/stats`` and ``POST /_fake/goaway``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import signal
import ssl
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from aiohttp import web
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes

from loadtest.apns_rules import ProviderTokens, Rejection, check_request, device_token
from loadtest.devkeys import (
    DEV_APNS_KEY_ID,
    DEV_APNS_TEAM_ID,
    DEV_APNS_TOPIC,
    TlsFiles,
    ensure_apns_key,
    ensure_tls,
    public_key_pem,
)

logger = logging.getLogger(__name__)

__all__ = ["Delivery", "FakeApns", "main"]


@dataclass(frozen=True)
class Delivery:
    token: str
    headers: dict[str, str]
    payload: dict[str, Any]
    arrived_at: float
    apns_id: str


@dataclass(frozen=True)
class _Faults:
    rate: float
    status: int
    reason: str
    latency_ms: int
    tokens: frozenset[str] | None
    reset: bool = False   # drop the connection instead of answering

    def applies(self, token: str) -> bool:
        if self.tokens is not None and token not in self.tokens:
            return False
        return self.rate >= 1 or random.random() < self.rate


@dataclass
class _Request:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class _ApnsConnection(asyncio.Protocol):
    """One client connection: h2 framing, flow control, the stream limit."""

    def __init__(self, fake: FakeApns) -> None:
        self.fake = fake
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, _Request] = {}
        self.outbound: dict[int, bytes] = {}  # error bodies waiting for window
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.authorized = False
        self.closed = asyncio.get_running_loop().create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.fake._connections.add(self)
        self.fake.stats["connections"] += 1
        self.h2.initiate_connection()
        # Apple: one stream until a push with a valid provider token succeeds.
        self.h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1})
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fake._connections.discard(self)
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            logger.warning("HTTP/2 protocol error from client: %s", exc)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = {k.decode(): v.decode() for k, v in event.headers}
                self.requests[event.stream_id] = _Request(headers)
            elif isinstance(event, DataReceived):
                sid = event.stream_id
                assert sid is not None and event.data is not None
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                request = self.requests.get(sid)
                if request is not None:
                    request.body += event.data
            elif isinstance(event, StreamEnded):
                request = self.requests.pop(event.stream_id, None)
                if request is not None:
                    self.fake._handle(self, event.stream_id, request)
            elif isinstance(event, StreamReset):
                self.fake.stats["client_resets"] += 1
                self._forget(event.stream_id)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                self._drain()
            elif isinstance(event, ConnectionTerminated) and self.transport is not None:
                self.transport.close()
        self.flush()

    # responses
    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def respond(self, stream_id: int, status: int, apns_id: str, body: bytes = b"") -> None:
        if self.transport is None:
            return
        headers = [(b":status", str(status).encode()), (b"apns-id", apns_id.encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
        except (StreamClosedError, ProtocolError):
            return  # the client reset the stream meanwhile
        if body:
            self.outbound[stream_id] = body
            self._drain()

    def raise_stream_limit(self) -> None:
        if not self.authorized:
            self.authorized = True
            self.h2.update_settings(
                {SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_concurrent_streams}
            )

    def abort(self) -> None:
        """Drop the connection without a GOAWAY, like a reset TCP connection."""
        if self.transport is not None:
            self.transport.abort()

    def goaway(self, reason: str) -> None:
        if self.transport is None:
            return
        self.h2.close_connection(ErrorCodes.NO_ERROR, json.dumps({"reason": reason}).encode())
        self.flush()
        self.transport.close()

    def _drain(self) -> None:
        """Send waiting bodies as far as the peer's flow-control windows allow.

        A body goes out whole once the window has room for it (a body bigger than the
        peer's stream window goes out piecewise, the only way it can progress)."""
        whole_limit = self.h2.remote_settings.initial_window_size
        for stream_id in list(self.outbound):
            body = self.outbound[stream_id]
            try:
                window = self.h2.local_flow_control_window(stream_id)
            except (StreamClosedError, ProtocolError):
                del self.outbound[stream_id]
                continue
            if window < len(body) <= whole_limit:
                continue
            while body and window > 0:
                size = min(window, len(body), self.h2.max_outbound_frame_size)
                chunk, body = body[:size], body[size:]
                self.h2.send_data(stream_id, chunk, end_stream=not body)
                window -= size
            if body:
                self.outbound[stream_id] = body
            else:
                del self.outbound[stream_id]

    def _forget(self, stream_id: int) -> None:
        self.requests.pop(stream_id, None)
        self.outbound.pop(stream_id, None)
        timer = self.timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()


class FakeApns:
    def __init__(
        self, *, tls: TlsFiles, provider_keys: dict[str, bytes], team_id: str, topic: str,
        max_concurrent_streams: int = 1000, clock: Callable[[], float] = time.time,
    ) -> None:
        self.tls = tls
        self.topic = topic
        self.max_concurrent_streams = max_concurrent_streams
        self.deliveries: list[Delivery] = []
        self.stats: Counter[str] = Counter()
        self.port = 0
        self.control_port: int | None = None
        self._tokens = ProviderTokens(provider_keys, team_id, clock)
        self._clock = clock
        self._unregistered: dict[str, int] = {}
        self._faults: _Faults | None = None
        self._connections: set[_ApnsConnection] = set()
        self._server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None

    # lifecycle
    async def start(
        self, host: str = "127.0.0.1", port: int = 8443, control_port: int | None = 8444
    ) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
        context.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ApnsConnection(self), host, port, ssl=context, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if control_port is not None:
            self._runner = web.AppRunner(self._control_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, host, control_port)
            await site.start()
            self.control_port = int(self._runner.addresses[0][1])
        logger.info(
            "fake APNs on https://%s:%d (control: %s)", host, self.port, self.control_port
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            self._server.close()
            connections = list(self._connections)
            for connection in connections:
                if connection.transport is not None:
                    connection.transport.close()
            if connections:
                _, pending = await asyncio.wait([c.closed for c in connections], timeout=2)
                for connection in connections:
                    if connection.transport is not None and not connection.closed.done():
                        connection.transport.abort()
                if pending:
                    await asyncio.wait(pending, timeout=1)
            await self._server.wait_closed()
            self._server = None

    # test and control API
    def mark_unregistered(self, tokens: Iterable[str], timestamp_ms: int | None = None) -> None:
        stamp = timestamp_ms if timestamp_ms is not None else int(self._clock() * 1000)
        for token in tokens:
            self._unregistered[token.lower()] = stamp

    def clear(self) -> None:
        self.deliveries.clear()

    def set_faults(
        self, *, rate: float, status: int = 500, reason: str = "InternalServerError",
        latency_ms: int = 0, tokens: Iterable[str] | None = None, reset: bool = False,
    ) -> None:
        """Answer a share ``rate`` of requests (optionally only for ``tokens``) after
        ``latency_ms`` with ``status``/``reason``; status 200 means "only the latency",
        the request is then judged normally. ``reset=True`` aborts the whole connection
        instead of answering (every stream on it is lost, as when a TCP connection is
        reset). ``rate=0`` clears the faults."""
        if not 0 <= rate <= 1:
            raise ValueError("rate must be within 0..1")
        if rate == 0:
            self._faults = None
            return
        self._faults = _Faults(
            rate, status, reason, latency_ms, None if tokens is None else frozenset(tokens),
            reset,
        )

    def goaway(self, reason: str = "Shutdown") -> None:
        for connection in list(self._connections):
            connection.goaway(reason)

    # request handling
    def _handle(self, connection: _ApnsConnection, stream_id: int, request: _Request) -> None:
        faults = self._faults
        if faults is not None and faults.applies(device_token(request.headers.get(":path", ""))):
            if faults.latency_ms > 0:
                connection.timers[stream_id] = asyncio.get_running_loop().call_later(
                    faults.latency_ms / 1000, self._answer, connection, stream_id, request, faults
                )
                return
            self._answer(connection, stream_id, request, faults)
            return
        self._answer(connection, stream_id, request, None)

    def _answer(
        self, connection: _ApnsConnection, stream_id: int, request: _Request,
        faults: _Faults | None,
    ) -> None:
        connection.timers.pop(stream_id, None)
        if faults is not None and faults.reset:
            self.stats["resets"] += 1
            connection.abort()
            return
        headers = request.headers
        apns_id = headers.get("apns-id") or str(uuid.uuid4())
        token = device_token(headers.get(":path", ""))
        body = bytes(request.body)
        if faults is not None and faults.status != 200:
            rejection: Rejection | None = Rejection(faults.status, faults.reason)
        else:
            rejection = self._tokens.check(headers.get("authorization")) or check_request(
                headers.get(":method", ""), headers.get(":path", ""), headers, body, self.topic
            )
        payload: Any = None
        if rejection is None:
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                rejection = Rejection(400, "BadPayload")
        if rejection is None and token.lower() in self._unregistered:
            self._reject(connection, stream_id, apns_id, 410, {
                "reason": "Unregistered", "timestamp": self._unregistered[token.lower()],
            })
            return
        if rejection is not None:
            self._reject(connection, stream_id, apns_id, rejection.status,
                         {"reason": rejection.reason})
            return
        arrived_at = self._clock()
        regular = {k: v for k, v in headers.items() if not k.startswith(":")}
        self.deliveries.append(Delivery(token, regular, payload, arrived_at, apns_id))
        self.stats["200"] += 1
        logger.info("delivered to %s… at %.3f (apns-id %s)", token[:8], arrived_at, apns_id)
        connection.respond(stream_id, 200, apns_id)
        connection.raise_stream_limit()
        connection.flush()

    def _reject(
        self, connection: _ApnsConnection, stream_id: int, apns_id: str, status: int,
        body: dict[str, Any],
    ) -> None:
        self.stats[str(status)] += 1
        connection.respond(stream_id, status, apns_id, json.dumps(body).encode())
        connection.flush()

    # control API
    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/_fake/deliveries", self._get_deliveries)
        app.router.add_delete("/_fake/deliveries", self._delete_deliveries)
        app.router.add_post("/_fake/unregistered", self._post_unregistered)
        app.router.add_post("/_fake/faults", self._post_faults)
        app.router.add_get("/_fake/stats", self._get_stats)
        app.router.add_post("/_fake/goaway", self._post_goaway)
        return app

    async def _get_deliveries(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        items = [asdict(d) for d in self.deliveries if token is None or d.token == token]
        return web.json_response(items)

    async def _delete_deliveries(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _post_unregistered(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        tokens = body.get("tokens")
        stamp = body.get("timestamp_ms")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise _bad_request("tokens must be a list of strings")
        if stamp is not None and not isinstance(stamp, int):
            raise _bad_request("timestamp_ms must be an integer")
        self.mark_unregistered(tokens, stamp)
        return web.json_response({"unregistered": len(tokens)})

    async def _post_faults(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            tokens = body.get("tokens")
            self.set_faults(
                rate=float(body.get("rate", 0)),
                status=int(body.get("status", 500)),
                reason=str(body.get("reason", "InternalServerError")),
                latency_ms=int(body.get("latency_ms", 0)),
                tokens=None if tokens is None else [str(t) for t in tokens],
                reset=bool(body.get("reset", False)),
            )
        except (TypeError, ValueError) as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response({"faults": None if self._faults is None else body})

    async def _get_stats(self, request: web.Request) -> web.Response:
        responses = {k: v for k, v in self.stats.items() if k.isdigit()}
        return web.json_response({
            "responses": responses, "connections": self.stats["connections"],
            "client_resets": self.stats["client_resets"],
            "open_connections": len(self._connections), "deliveries": len(self.deliveries),
        })

    async def _post_goaway(self, request: web.Request) -> web.Response:
        body = await _json_body(request) if request.can_read_body else {}
        reason = str(body.get("reason", "Shutdown"))
        count = len(self._connections)
        self.goaway(reason)
        return web.json_response({"closed": count})


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise _bad_request("body must be JSON") from None
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": message}), content_type="application/json"
    )


# command line
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.fake_apns", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443, help="0 picks a free port")
    parser.add_argument("--control-port", type=int, default=8444, help="0 picks a free port")
    parser.add_argument("--certs-dir", type=Path, default=Path(".geopush/certs"))
    parser.add_argument("--auth-key", type=Path, default=None,
                        help="provider key (.p8, private PEM) or its public PEM; "
                             "default: the dev key in --certs-dir")
    parser.add_argument("--key-id", default=DEV_APNS_KEY_ID)
    parser.add_argument("--team-id", default=DEV_APNS_TEAM_ID)
    parser.add_argument("--topic", default=DEV_APNS_TOPIC)
    parser.add_argument("--max-streams", type=int, default=1000)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def _public_pem(path: Path) -> bytes:
    pem = path.read_bytes()
    return pem if b"PUBLIC KEY" in pem else public_key_pem(pem)


async def _serve(args: argparse.Namespace) -> None:
    tls = ensure_tls(args.certs_dir)
    key_file = args.auth_key or ensure_apns_key(args.certs_dir).key_file
    fake = FakeApns(
        tls=tls, provider_keys={args.key_id: _public_pem(key_file)}, team_id=args.team_id,
        topic=args.topic, max_concurrent_streams=args.max_streams,
    )
    await fake.start(args.host, args.port, args.control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"READY apns=https://{args.host}:{fake.port} "
        f"control=http://{args.host}:{fake.control_port} ca={tls.ca_cert}",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await fake.stop()
        logger.info("fake APNs stopped")


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
