"""A fake FCM HTTP v1 gateway: Google's OAuth token endpoint plus ``messages:send``.

It speaks the same protocol as Google so that geopush's real FCM client (google-auth
service-account credentials, HTTP/2) runs against it unchanged. One port serves both
HTTP/1.1 (the token endpoint, the control API) and HTTP/2: over TLS (``tls``, ALPN
``h2`` as Google serves it, the client's default ``https://`` path) or cleartext with
prior knowledge (h2c, RFC 9113 §3.3; what ``h2load http://…`` sends). A connection
that opens with the HTTP/2 preface is HTTP/2, with ``max_concurrent_streams`` streams
(FCM's ~100), anything else goes to the aiohttp application. Google's rules (the
assertion checks, the message validation, the error shapes) are ``loadtest.fcm_rules``.

- ``POST /token`` takes the OAuth 2.0 JWT-bearer grant google-auth posts (an RS256
  assertion signed with the service account's key) and issues opaque bearer tokens.
- ``POST /v1/projects/{project}/messages:send`` checks the bearer token, validates the
  message like FCM v1 does and answers with FCM's success and error shapes
  (UNREGISTERED, INVALID_ARGUMENT, QUOTA_EXCEEDED with ``Retry-After``, ...).
- ``/_fake/...`` is the control API for tests and load tests (deliveries, unregistered
  tokens, injected faults, quota, stats), over HTTP/1.1 only.

Both endpoints answer the same over either protocol: the HTTP/1.1 handlers and the
HTTP/2 connection (``loadtest.h2server``) call the same transport-neutral code, which
returns a ``Reply``.

Per-request work is kept small for load tests: bearer tokens are looked up in a dict,
RSA verification happens only on ``/token``, nothing is written to disk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import secrets
import signal
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from aiohttp import web

from loadtest.fake_control import DEFAULT_FAULT_STATUS, FakeControl, bad_request, json_body
from loadtest.fcm_rules import (
    CLOUD_PLATFORM_SCOPE,
    ERROR_CODE_TO_HTTP,
    ERROR_MESSAGES,
    FCM_SCOPE,
    HTTP_TO_ERROR_CODE,
    HTTP_TO_STATUS,
    JWT_BEARER_GRANT,
    MAX_BODY_BYTES,
    SEND_PATH,
    GrantError,
    InvalidMessage,
    Reply,
    abbrev,
    check_fields,
    google_error,
    json_reply,
    load_public_key,
    oauth_error,
    validate_message,
    verify_assertion,
)
from loadtest.h2server import (
    H2Request,
    H2ServerConnection,
    arrived_after,
    close_connections,
    sniffing_factory,
)
from server.dev.devkeys import (
    DEV_FCM_PROJECT,
    TlsFiles,
    ensure_fcm_service_account,
    ensure_tls,
    public_key_pem,
)

logger = logging.getLogger(__name__)

def _web_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


@dataclass(frozen=True)
class Delivery:
    token: str | None  # None for topic/condition messages (see message)
    message: dict[str, Any]
    headers: dict[str, str]
    arrived_at: float
    name: str

    def as_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "message": self.message,
            "headers": self.headers,
            "arrived_at": self.arrived_at,
            "name": self.name,
        }


@dataclass
class _Grant:
    expires_at: float
    client_email: str
    messaging_scope: bool


@dataclass
class _Faults:
    rate: float = 0.0
    status: int = 503
    reason: str = "UNAVAILABLE"
    latency_ms: int = 0


@dataclass
class _Stats:
    tokens_issued: int = 0
    token_errors: int = 0
    sends: int = 0
    delivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class FakeFcm(FakeControl):
    """The fake gateway; start it in-process or run ``python -m loadtest.fake_fcm``."""

    def __init__(
        self,
        *,
        project_id: str,
        service_account_public_keys: dict[str, bytes] | None = None,
        quota_per_minute: int | None = None,
        token_lifetime_s: int = 3600,
        clock: Callable[[], float] = time.time,
        max_deliveries: int | None = 200_000,
        max_concurrent_streams: int = 100,
        tls: TlsFiles | None = None,
    ) -> None:
        self.project_id = project_id
        # TLS with ALPN h2 (and http/1.1 for the token endpoint), as Google serves it;
        # None: cleartext, HTTP/1.1 and h2c with prior knowledge.
        self.tls = tls
        # SETTINGS_MAX_CONCURRENT_STREAMS of an HTTP/2 connection (FCM reports 100)
        self.max_concurrent_streams = max_concurrent_streams
        self.quota_per_minute = quota_per_minute
        # Seconds an issued access token lives; FCM's is an hour. Tests shorten it.
        self.token_lifetime_s = token_lifetime_s
        self.clock = clock  # unix seconds; tests may substitute a fixed clock
        self.deliveries: list[Delivery] = []
        # Long load tests would otherwise grow without bound: past this many stored
        # deliveries the oldest tenth is dropped (the stats keep counting).
        self.max_deliveries = max_deliveries
        self.host = "127.0.0.1"
        self.port = 0
        self._accept_any = service_account_public_keys is None
        self._keys: dict[str, Any] = {
            email: load_public_key(pem)
            for email, pem in (service_account_public_keys or {}).items()
        }
        self._grants: dict[str, _Grant] = {}
        self._unregistered: set[str] = set()
        self._faults = _Faults()
        self._quota_window = -1
        self._quota_used = 0
        self._stats = _Stats()
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_FcmConnection] = set()  # open HTTP/2 connections
        self._undecided: set[Any] = set()  # connections not yet told apart
        self.app = self._make_app()

    # ---- in-process control ----

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def trust(self, client_email: str, public_key: bytes) -> None:
        """Accepts assertions signed by this service account from now on."""
        self._keys[client_email] = load_public_key(public_key)
        self._accept_any = False

    def mark_unregistered(self, tokens: Iterable[str]) -> None:
        self._unregistered.update(tokens)

    def clear(self) -> None:
        """Forgets deliveries (not tokens, faults or the unregistered list)."""
        self.deliveries.clear()

    def set_faults(
        self, *, rate: float, status: int = DEFAULT_FAULT_STATUS, reason: str | None = None,
        latency_ms: int = 0,
    ) -> None:
        """Fails a ``rate`` share of sends with ``status``/``reason`` (an FCM errorCode);
        delays every send by ``latency_ms``. ``rate=0, latency_ms=0`` clears both."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be within 0..1")
        if status < 400 or status > 599:
            raise ValueError("status must be an HTTP error status")
        if latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")
        self._faults = _Faults(
            rate, status, reason or HTTP_TO_ERROR_CODE.get(status, "UNSPECIFIED_ERROR"),
            latency_ms,
        )

    def set_quota(self, per_minute: int | None) -> None:
        if per_minute is not None and per_minute < 0:
            raise ValueError("per_minute must be >= 0")
        self.quota_per_minute = per_minute
        self._quota_window = -1
        self._quota_used = 0

    def revoke_tokens(self) -> None:
        """Invalidates every issued access token (the next send gets a 401)."""
        self._grants.clear()

    def stats(self) -> dict[str, Any]:
        s = self._stats
        return {
            "tokens_issued": s.tokens_issued,
            "token_errors": s.token_errors,
            "active_tokens": len(self._grants),
            "sends": s.sends,
            "delivered": s.delivered,
            "stored_deliveries": len(self.deliveries),
            "errors": dict(s.errors),
            "unregistered_tokens": len(self._unregistered),
            "quota_per_minute": self.quota_per_minute,
            "quota_used_this_minute": self._quota_used,
            "faults": {
                "rate": self._faults.rate,
                "status": self._faults.status,
                "reason": self._faults.reason,
                "latency_ms": self._faults.latency_ms,
            },
        }

    # ---- lifecycle ----

    def protocol_factory(
        self, http1_factory: Callable[[], asyncio.BaseProtocol]
    ) -> Callable[[], asyncio.Protocol]:
        """Protocols for accepted connections: HTTP/2 with prior knowledge is served
        here, anything else by ``http1_factory`` (the ``server`` of an ``AppRunner`` of
        ``self.app``)."""
        return sniffing_factory(http1_factory, lambda: _FcmConnection(self), self._undecided)

    async def start(self, host: str = "127.0.0.1", port: int = 8445) -> None:
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        assert runner.server is not None
        loop = asyncio.get_running_loop()
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls.server_cert, self.tls.server_key)
            context.set_alpn_protocols(["h2", "http/1.1"])
        try:
            # Over TLS too, the connection's first bytes tell HTTP/2 from HTTP/1.1.
            server = await loop.create_server(
                self.protocol_factory(runner.server), host, port, backlog=1024,
                reuse_address=True, ssl=context,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._server = runner, server
        self.host = host
        self.port = int(server.sockets[0].getsockname()[1])
        logger.info("fake FCM listening on %s (project %s)", self.url, self.project_id)

    async def stop(self) -> None:
        """Stops listening, sends GOAWAY on every HTTP/2 connection and closes them,
        then lets aiohttp close the HTTP/1.1 ones."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for sniffer in list(self._undecided):
                sniffer.close()
            await close_connections(self._connections, goaway=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if server is not None:
            await server.wait_closed()

    # ---- HTTP ----

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/token", self._token)
        app.router.add_post("/v1/projects/{project}/messages:send", self._send)
        self.add_control_routes(app)
        app.router.add_post("/_fake/quota", self._post_quota)
        app.router.add_post("/_fake/revoke", self._post_revoke)
        return app

    async def _token(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return _web_response(_too_large())
        return _web_response(self._answer_token(form, str(request.url)))

    def _answer_token(self, form: Mapping[str, Any], own_url: str) -> Reply:
        grant_type = form.get("grant_type")
        assertion = form.get("assertion")
        if grant_type != JWT_BEARER_GRANT:
            self._stats.token_errors += 1
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type!r}")
        if not isinstance(assertion, str) or not assertion:
            self._stats.token_errors += 1
            return oauth_error("invalid_request", "Missing required parameter: assertion")
        try:
            claims = verify_assertion(assertion, keys=self._keys, accept_any=self._accept_any,
                                      own_url=own_url, now=self.clock())
        except GrantError as e:
            self._stats.token_errors += 1
            return oauth_error(e.error, e.description)
        scopes = set(str(claims.get("scope", "")).split())
        access_token = f"ya29.fake-{secrets.token_urlsafe(32)}"
        now = self.clock()
        self._drop_expired(now)
        self._grants[access_token] = _Grant(
            now + self.token_lifetime_s, str(claims["iss"]),
            bool(scopes & {FCM_SCOPE, CLOUD_PLATFORM_SCOPE}),
        )
        self._stats.tokens_issued += 1
        return json_reply(
            {
                "access_token": access_token,
                "expires_in": self.token_lifetime_s,
                "token_type": "Bearer",
            }
        )

    def _drop_expired(self, now: float) -> None:
        if len(self._grants) > 64:
            for token in [t for t, g in self._grants.items() if g.expires_at <= now]:
                del self._grants[token]

    def _authenticate(self, auth: str) -> _Grant | Reply:
        if not auth.startswith("Bearer "):
            return google_error(
                401,
                "Request is missing required authentication credential. Expected OAuth 2 "
                "access token, login cookie or other valid authentication credential.",
                reason="CREDENTIALS_MISSING",
            )
        grant = self._grants.get(auth[7:])
        if grant is None or grant.expires_at <= self.clock():
            return google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
                reason="ACCESS_TOKEN_EXPIRED" if grant is not None else None,
            )
        if not grant.messaging_scope:
            return google_error(
                403, "Request had insufficient authentication scopes.",
                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            )
        return grant

    def _error(self, code: str, *, http_status: int | None = None,
               headers: Mapping[str, str] | None = None) -> Reply:
        self._stats.errors[code] += 1
        return google_error(
            http_status or ERROR_CODE_TO_HTTP.get(code, 500),
            ERROR_MESSAGES.get(code, code), error_code=code, headers=headers,
        )

    def _quota_retry_after(self, now: float) -> int | None:
        """Counts one send against the per-minute quota; seconds to wait if over it."""
        if self.quota_per_minute is None:
            return None
        window = int(now // 60)
        if window != self._quota_window:
            self._quota_window, self._quota_used = window, 0
        if self._quota_used >= self.quota_per_minute:
            return max(1, math.ceil((window + 1) * 60 - now))
        self._quota_used += 1
        return None

    async def _send(self, request: web.Request) -> web.Response:
        latency_ms = self._faults.latency_ms
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        return _web_response(self._answer_send(
            request.match_info["project"], request.headers.get("Authorization", ""), body,
            {k.lower(): v for k, v in request.headers.items()},
        ))

    def _answer_send(
        self, project: str, authorization: str, body: bytes | None, headers: dict[str, str]
    ) -> Reply:
        """``messages:send`` after the injected latency, whatever the protocol: ``body``
        is None when it was larger than ``MAX_BODY_BYTES``; ``headers`` (names in lower
        case, as HTTP/2 has them) are recorded with the delivery."""
        self._stats.sends += 1
        grant = self._authenticate(authorization)
        if isinstance(grant, Reply):
            self._stats.errors[HTTP_TO_STATUS[grant.status]] += 1
            return grant
        if project != self.project_id:
            self._stats.errors["PERMISSION_DENIED"] += 1
            return google_error(
                403,
                f"Permission 'cloudmessaging.messages.create' denied on resource "
                f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                "(or it may not exist).",
                reason="IAM_PERMISSION_DENIED",
            )
        if body is None:
            self._stats.errors["INVALID_ARGUMENT"] += 1
            return _too_large()
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self._stats.errors["INVALID_ARGUMENT"] += 1
            return google_error(400, "Invalid JSON payload received.",
                                field_violation=("", "Invalid JSON payload received."))
        try:
            request = check_fields(request, {"message", "validate_only", "validateOnly"}, "")
            if "message" not in request:
                raise InvalidMessage("message", "Message must be set.", fcm_error=False)
            token = validate_message(request["message"])
        except InvalidMessage as e:
            self._stats.errors["INVALID_ARGUMENT"] += 1
            return google_error(
                400, e.description,
                error_code="INVALID_ARGUMENT" if e.fcm_error else None,
                field_violation=(e.field_path, e.description),
            )
        if request.get("validate_only") or request.get("validateOnly"):
            return json_reply({"name": f"projects/{project}/messages/fake_message_id"})
        now = self.clock()
        faults = self._faults
        if faults.rate and random.random() < faults.rate:
            retry = {"Retry-After": "1"} if faults.status == 429 else None
            return self._error(faults.reason, http_status=faults.status, headers=retry)
        retry_after = self._quota_retry_after(now)
        if retry_after is not None:
            return self._error("QUOTA_EXCEEDED", headers={"Retry-After": str(retry_after)})
        if token is not None and token in self._unregistered:
            return self._error("UNREGISTERED")
        name = f"projects/{project}/messages/0:{int(now * 1000)}%{next(self._ids):016x}"
        self.deliveries.append(Delivery(token, request["message"], headers, now, name))
        if self.max_deliveries is not None and len(self.deliveries) > self.max_deliveries:
            del self.deliveries[: max(1, self.max_deliveries // 10)]
        self._stats.delivered += 1
        logger.info("delivered %s to %s", name, abbrev(token))
        return json_reply({"name": name})

    # ---- HTTP/2 ----

    def _h2_request(self, connection: _FcmConnection, stream_id: int, request: H2Request) -> None:
        headers = request.headers
        method = headers.get(":method")
        path = headers.get(":path", "").partition("?")[0]
        match = SEND_PATH.fullmatch(path)
        if match is not None and method == "POST":
            latency_ms = self._faults.latency_ms
            if latency_ms:
                connection.later(
                    stream_id, latency_ms / 1000,
                    lambda: self._h2_send(connection, stream_id, request, match[1]),
                )
            else:
                self._h2_send(connection, stream_id, request, match[1])
            return
        if path == "/token" and method == "POST":
            if request.too_large:
                reply = _too_large()
            else:
                form = {k: v[0] for k, v in parse_qs(request.body.decode("latin-1")).items()}
                url = f"{headers.get(':scheme', 'http')}://{headers.get(':authority', '')}"
                reply = self._answer_token(form, url + headers.get(":path", ""))
        elif match is not None or path == "/token":
            reply = google_error(405, f"Method {method} is not allowed for {path}.")
        else:
            reply = google_error(404, f"The requested URL {path} was not found on this server.")
        connection.send_reply(stream_id, reply)

    def _h2_send(
        self, connection: _FcmConnection, stream_id: int, request: H2Request, project: str
    ) -> None:
        headers = request.headers
        regular = {k: v for k, v in headers.items() if k[0] != ":"}
        connection.send_reply(stream_id, self._answer_send(
            unquote(project), headers.get("authorization", ""),
            None if request.too_large else bytes(request.body), regular,
        ))

    # ---- control API (loadtest.fake_control), plus quota and revocation ----

    def delivered(self, token: str | None, since: float | None = None
                  ) -> Iterable[dict[str, Any]]:
        return [d.as_json() for d in arrived_after(self.deliveries, since)
                if token is None or d.token == token]

    def unregister(self, tokens: list[str], body: dict[str, Any]) -> int:
        self.mark_unregistered(tokens)
        return len(self._unregistered)

    def faults_from(self, body: dict[str, Any]) -> dict[str, Any] | None:
        self.set_faults(
            rate=float(body.get("rate", 0)),
            status=int(body.get("status", DEFAULT_FAULT_STATUS)),
            reason=body.get("reason"),
            latency_ms=int(body.get("latency_ms", 0)),
        )
        faults: dict[str, Any] = self.stats()["faults"]
        return faults if faults["rate"] or faults["latency_ms"] else None

    def control_stats(self) -> dict[str, Any]:
        return self.stats()

    async def _post_quota(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        per_minute = body.get("per_minute")
        if per_minute is not None and (isinstance(per_minute, bool)
                                       or not isinstance(per_minute, int)):
            raise bad_request("per_minute must be an integer or null")
        try:
            self.set_quota(per_minute)
        except ValueError as e:
            raise bad_request(str(e)) from e
        return web.json_response({"per_minute": self.quota_per_minute})

    async def _post_revoke(self, request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.Response(status=204)


def _too_large() -> Reply:
    return google_error(413, f"Request payload size exceeds the limit: {MAX_BODY_BYTES} bytes.")


class _FcmConnection(H2ServerConnection):
    """One HTTP/2 client connection of the fake FCM."""

    def __init__(self, fake: FakeFcm) -> None:
        super().__init__(
            fake._connections, max_concurrent_streams=fake.max_concurrent_streams,
            max_body_size=MAX_BODY_BYTES,
        )
        self.fake = fake

    def request_received(self, stream_id: int, request: H2Request) -> None:
        self.fake._h2_request(self, stream_id, request)

    def send_reply(self, stream_id: int, reply: Reply) -> None:
        headers = [(b":status", str(reply.status).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        headers.append((b"content-length", str(len(reply.body)).encode()))
        self.respond(stream_id, headers, reply.body)


def _service_account_key(path: Path) -> tuple[str, bytes]:
    info = json.loads(path.read_text())
    return str(info["client_email"]), public_key_pem(str(info["private_key"]).encode())


async def _serve(args: argparse.Namespace) -> None:
    keys = dict(_service_account_key(Path(p)) for p in args.service_account)
    fake = FakeFcm(
        project_id=args.project,
        service_account_public_keys=keys,
        quota_per_minute=args.quota_per_minute,
        max_deliveries=args.max_deliveries,
        max_concurrent_streams=args.max_concurrent_streams,
        tls=ensure_tls(Path(args.certs_dir)) if args.tls else None,
    )
    await fake.start(args.host, args.port)
    try:
        if not args.service_account:
            path = await asyncio.to_thread(
                ensure_fcm_service_account, Path(args.certs_dir), fake.token_uri, args.project
            )
            fake.trust(*_service_account_key(path))
            logger.info("trusting development service account %s", path)
        print(f"fake FCM ready on {fake.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await fake.stop()
        logger.info("fake FCM stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake FCM HTTP v1 gateway for geopush")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8445, help="0 picks a free port")
    parser.add_argument("--project", default=DEV_FCM_PROJECT)
    parser.add_argument(
        "--service-account", action="append", default=[], metavar="PATH",
        help="trust this service-account key file (repeatable); default: the dev key",
    )
    parser.add_argument("--quota-per-minute", type=int, default=None)
    parser.add_argument("--certs-dir", default=".geopush/certs")
    parser.add_argument(
        "--max-deliveries", type=int, default=200_000,
        help="deliveries kept for /_fake/deliveries (oldest dropped first)",
    )
    parser.add_argument(
        "--max-concurrent-streams", type=int, default=100,
        help="SETTINGS_MAX_CONCURRENT_STREAMS of an HTTP/2 connection (FCM's is ~100)",
    )
    parser.add_argument(
        "--tls", action="store_true",
        help="serve TLS with ALPN h2 (certificate and CA in --certs-dir), as Google does",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
