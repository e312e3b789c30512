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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from h2.settings import SettingCodes

from loadtest.apns_rules import ProviderTokens, Rejection, check_aps, check_request, device_token
from loadtest.fake_control import DEFAULT_FAULT_STATUS, FakeControl, bad_request, json_body
from loadtest.h2server import H2Request, H2ServerConnection, arrived_after, close_connections
from server.dev.devkeys import (
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


# APNs' reason for a status, when a fault names none.
_DEFAULT_REASONS = {500: "InternalServerError", 503: "ServiceUnavailable",
                    429: "TooManyRequests"}


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


class _ApnsConnection(H2ServerConnection):
    """One client connection, with Apple's stream limit: one until authorized."""

    def __init__(self, fake: FakeApns) -> None:
        super().__init__(fake._connections, max_concurrent_streams=1)
        self.fake = fake
        self.authorized = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.fake.stats["connections"] += 1
        # Apple: one stream until a push with a valid provider token succeeds.
        super().connection_made(transport)

    def request_received(self, stream_id: int, request: H2Request) -> None:
        self.fake._handle(self, stream_id, request)

    def stream_reset(self, stream_id: int) -> None:
        self.fake.stats["client_resets"] += 1

    def reply(self, stream_id: int, status: int, apns_id: str, body: bytes = b"") -> None:
        headers = [(b":status", str(status).encode()), (b"apns-id", apns_id.encode())]
        if body:
            headers.append((b"content-type", b"application/json"))
            headers.append((b"content-length", str(len(body)).encode()))
        self.respond(stream_id, headers, body)

    def raise_stream_limit(self) -> None:
        if not self.authorized:
            self.authorized = True
            self.h2.update_settings(
                {SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_concurrent_streams}
            )


class FakeApns(FakeControl):
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
            await close_connections(self._connections)
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
        self, *, rate: float, status: int = DEFAULT_FAULT_STATUS, reason: str | None = None,
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
        if reason is None:
            reason = _DEFAULT_REASONS.get(status, "InternalServerError")
        self._faults = _Faults(
            rate, status, reason, latency_ms, None if tokens is None else frozenset(tokens),
            reset,
        )

    def goaway(self, reason: str = "Shutdown") -> None:
        for connection in list(self._connections):
            connection.goaway(json.dumps({"reason": reason}).encode())

    # request handling
    def _handle(self, connection: _ApnsConnection, stream_id: int, request: H2Request) -> None:
        faults = self._faults
        if faults is not None and faults.applies(device_token(request.headers.get(":path", ""))):
            if faults.latency_ms > 0:
                connection.later(
                    stream_id, faults.latency_ms / 1000,
                    lambda: self._answer(connection, stream_id, request, faults),
                )
                return
            self._answer(connection, stream_id, request, faults)
            return
        self._answer(connection, stream_id, request, None)

    def _answer(
        self, connection: _ApnsConnection, stream_id: int, request: H2Request,
        faults: _Faults | None,
    ) -> None:
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
            else:
                rejection = check_aps(payload)
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
        connection.reply(stream_id, 200, apns_id)
        connection.raise_stream_limit()
        connection.flush()

    def _reject(
        self, connection: _ApnsConnection, stream_id: int, apns_id: str, status: int,
        body: dict[str, Any],
    ) -> None:
        self.stats[str(status)] += 1
        connection.reply(stream_id, status, apns_id, json.dumps(body).encode())
        connection.flush()

    # control API (loadtest.fake_control), plus GOAWAY
    def _control_app(self) -> web.Application:
        app = web.Application()
        self.add_control_routes(app)
        app.router.add_post("/_fake/goaway", self._post_goaway)
        return app

    def delivered(self, token: str | None, since: float | None = None
                  ) -> Iterable[dict[str, Any]]:
        return [asdict(d) for d in arrived_after(self.deliveries, since)
                if token is None or d.token == token]

    def unregister(self, tokens: list[str], body: dict[str, Any]) -> int:
        stamp = body.get("timestamp_ms")
        if stamp is not None and not isinstance(stamp, int):
            raise bad_request("timestamp_ms must be an integer")
        self.mark_unregistered(tokens, stamp)
        return len(self._unregistered)

    def faults_from(self, body: dict[str, Any]) -> dict[str, Any] | None:
        tokens = body.get("tokens")
        self.set_faults(
            rate=float(body.get("rate", 0)),
            status=int(body.get("status", DEFAULT_FAULT_STATUS)),
            reason=None if body.get("reason") is None else str(body["reason"]),
            latency_ms=int(body.get("latency_ms", 0)),
            tokens=None if tokens is None else [str(t) for t in tokens],
            reset=bool(body.get("reset", False)),
        )
        faults = self._faults
        if faults is None:
            return None
        return {"rate": faults.rate, "status": faults.status, "reason": faults.reason,
                "latency_ms": faults.latency_ms, "reset": faults.reset,
                "tokens": None if faults.tokens is None else sorted(faults.tokens)}

    def control_stats(self) -> dict[str, Any]:
        responses = {k: v for k, v in self.stats.items() if k.isdigit()}
        return {
            "responses": responses, "connections": self.stats["connections"],
            "client_resets": self.stats["client_resets"],
            "open_connections": len(self._connections), "deliveries": len(self.deliveries),
        }

    async def _post_goaway(self, request: web.Request) -> web.Response:
        body = await json_body(request) if request.can_read_body else {}
        reason = str(body.get("reason", "Shutdown"))
        count = len(self._connections)
        self.goaway(reason)
        return web.json_response({"closed": count})


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
