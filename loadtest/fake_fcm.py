"""A fake FCM HTTP v1 gateway: Google's OAuth token endpoint plus ``messages:send``.

It speaks the same protocol as Google so that geopush's real FCM client (google-auth
service-account credentials, HTTP/2 or HTTP/1.1) runs against it unchanged. One port
serves both HTTP/1.1 and HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3; what
``h2load http://…`` and geopush's client send to a plain-TCP endpoint): a connection
that opens with the HTTP/2 preface is HTTP/2, with ``max_concurrent_streams`` streams
(FCM's ~100), anything else goes to the aiohttp application.

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
import re
import secrets
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from loadtest.h2server import H2Request, H2ServerConnection, close_connections, sniffing_factory
from server.dev.devkeys import DEV_FCM_PROJECT, ensure_fcm_service_account, public_key_pem

logger = logging.getLogger(__name__)

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Audiences Google's token endpoint accepts; google-auth always signs for the first one,
# whatever token_uri the key file names. The fake's own /token URL is accepted too.
GOOGLE_TOKEN_AUDIENCES = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
MAX_ASSERTION_LIFETIME_S = 3600
CLOCK_SKEW_S = 300
MAX_DATA_BYTES = 4096
MAX_TTL_S = 28 * 24 * 3600
MAX_BODY_BYTES = 1024 * 1024  # a request body, over either protocol
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"

# HTTP status -> google.rpc canonical status name.
HTTP_TO_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# FCM errorCode -> the HTTP status FCM answers it with.
ERROR_CODE_TO_HTTP = {
    "UNSPECIFIED_ERROR": 500,
    "INVALID_ARGUMENT": 400,
    "UNREGISTERED": 404,
    "SENDER_ID_MISMATCH": 403,
    "QUOTA_EXCEEDED": 429,
    "UNAVAILABLE": 503,
    "INTERNAL": 500,
    "THIRD_PARTY_AUTH_ERROR": 401,
}
HTTP_TO_ERROR_CODE = {
    400: "INVALID_ARGUMENT",
    401: "THIRD_PARTY_AUTH_ERROR",
    403: "SENDER_ID_MISMATCH",
    404: "UNREGISTERED",
    429: "QUOTA_EXCEEDED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
ERROR_MESSAGES = {
    "UNREGISTERED": "Requested entity was not found.",
    "SENDER_ID_MISMATCH": "SenderId mismatch",
    "QUOTA_EXCEEDED": "Quota exceeded for quota metric 'Messages' and limit "
    "'Messages per minute' of service 'fcm.googleapis.com'.",
    "UNAVAILABLE": "The service is currently unavailable.",
    "INTERNAL": "Internal error encountered.",
    "THIRD_PARTY_AUTH_ERROR": "Auth error from APNS or Web Push Service",
    "INVALID_ARGUMENT": "Request contains an invalid argument.",
}

_DURATION = re.compile(r"^(\d+)(\.\d{1,9})?s$")
_MESSAGE_FIELDS = {
    "name", "data", "notification", "android", "webpush", "apns", "fcm_options",
    "fcmOptions", "token", "topic", "condition",
}
_NOTIFICATION_FIELDS = {"title", "body", "image"}
_ANDROID_FIELDS = {
    "collapse_key", "collapseKey", "priority", "ttl", "restricted_package_name",
    "restrictedPackageName", "data", "notification", "fcm_options", "fcmOptions",
    "direct_boot_ok", "directBootOk", "bandwidth_constrained_ok", "restricted_satellite_ok",
}
_APNS_FIELDS = {"headers", "payload", "fcm_options", "fcmOptions", "live_activity_token"}
_WEBPUSH_FIELDS = {"headers", "data", "notification", "fcm_options", "fcmOptions"}
_ANDROID_PRIORITIES = {"NORMAL", "HIGH"}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


# AndroidNotification (FCM v1); proto3 JSON accepts each name in snake and camel case.
_ANDROID_NOTIFICATION_STRINGS = (
    "title", "body", "icon", "color", "sound", "tag", "click_action", "body_loc_key",
    "title_loc_key", "channel_id", "ticker", "event_time", "image",
)
_ANDROID_NOTIFICATION_FIELDS = {
    f for name in (*_ANDROID_NOTIFICATION_STRINGS, "body_loc_args", "title_loc_args", "sticky",
                   "local_only", "notification_priority", "default_sound",
                   "default_vibrate_timings", "default_light_settings", "vibrate_timings",
                   "visibility", "notification_count", "light_settings",
                   "bypass_proxy_notification", "proxy")
    for f in (name, _camel(name))
}
_NOTIFICATION_PRIORITIES = {"PRIORITY_UNSPECIFIED", "PRIORITY_MIN", "PRIORITY_LOW",
                            "PRIORITY_DEFAULT", "PRIORITY_HIGH", "PRIORITY_MAX"}
_VISIBILITIES = {"VISIBILITY_UNSPECIFIED", "PRIVATE", "PUBLIC", "SECRET"}
_TOPIC = re.compile(r"^(/topics/)?[a-zA-Z0-9\-_.~%]{1,900}$")
_SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
_JSON_HEADERS = {"Content-Type": JSON_CONTENT_TYPE}


class Reply(NamedTuple):
    """An answer, whichever protocol carries it (header names in HTTP/1.1 spelling)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def json_reply(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Reply:
    return Reply(
        status, _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers},
        json.dumps(obj).encode(),
    )


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


class InvalidMessage(Exception):
    """A message FCM would reject with 400 INVALID_ARGUMENT."""

    def __init__(self, field_path: str, description: str, *, fcm_error: bool = True) -> None:
        super().__init__(description)
        self.field_path = field_path
        self.description = description
        # Protobuf-level problems (unknown field, wrong JSON type) carry only a
        # google.rpc.BadRequest detail; FCM-level ones also carry an FcmError.
        self.fcm_error = fcm_error


def _abbrev(token: str | None) -> str:
    if token is None:
        return "-"
    return token if len(token) <= 12 else f"{token[:6]}…{token[-4:]}"


def _oauth_error(error: str, description: str, status: int = 400) -> Reply:
    return json_reply({"error": error, "error_description": description}, status)


def google_error(
    http_status: int,
    message: str,
    *,
    error_code: str | None = None,
    field_violation: tuple[str, str] | None = None,
    reason: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """An error in Google's JSON shape, with FCM's ``details`` when given."""
    details: list[dict[str, Any]] = []
    if error_code is not None:
        details.append({"@type": FCM_ERROR_TYPE, "errorCode": error_code})
    if field_violation is not None:
        details.append(
            {
                "@type": BAD_REQUEST_TYPE,
                "fieldViolations": [
                    {"field": field_violation[0], "description": field_violation[1]}
                ],
            }
        )
    if reason is not None:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "googleapis.com",
            }
        )
    error: dict[str, Any] = {
        "code": http_status,
        "message": message,
        "status": HTTP_TO_STATUS.get(http_status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return json_reply({"error": error}, http_status, headers)


def _check_fields(obj: Any, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidMessage(
            path, f"Invalid value at '{path}' (type.googleapis.com/...), "
            f"{json.dumps(obj)}", fcm_error=False,
        )
    for key in obj:
        if key not in allowed:
            raise InvalidMessage(
                path,
                f"Invalid JSON payload received. Unknown name \"{key}\" at '{path}': "
                "Cannot find field.",
                fcm_error=False,
            )
    return obj


def _check_string_map(obj: Any, path: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidMessage(
            path, f"Invalid value at '{path}' (map<string, string>), {json.dumps(obj)}",
            fcm_error=False,
        )
    for i, (key, value) in enumerate(obj.items()):
        if not isinstance(value, str):
            raise InvalidMessage(
                f"{path}[{i}].value",
                f"Invalid value at '{path}[{i}].value' (TYPE_STRING), {json.dumps(value)} "
                f"(key \"{key}\": data values must be strings)",
                fcm_error=False,
            )
    return obj


def _check_string(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidMessage(
            f"{path}.{key}", f"Invalid value at '{path}.{key}' (TYPE_STRING), "
            f"{json.dumps(value)}", fcm_error=False,
        )
    return value


def _check_ttl(value: Any, path: str) -> None:
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidMessage(
            path,
            f"Invalid value at '{path}' (type.googleapis.com/google.protobuf.Duration), "
            f"{json.dumps(value)}",
            fcm_error=False,
        )
    if int(match.group(1)) > MAX_TTL_S:
        raise InvalidMessage(path, "TTL must not exceed 4 weeks (2419200s).")


def _check_android(android: Any) -> None:
    android = _check_fields(android, _ANDROID_FIELDS, "message.android")
    priority = android.get("priority")
    if priority is not None and priority not in _ANDROID_PRIORITIES:
        raise InvalidMessage(
            "message.android.priority",
            "Invalid value at 'message.android.priority' "
            f"(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority), "
            f"{json.dumps(priority)}",
            fcm_error=False,
        )
    if "ttl" in android:
        _check_ttl(android["ttl"], "message.android.ttl")
    for key in ("collapse_key", "collapseKey", "restricted_package_name"):
        _check_string(android, key, "message.android")
    if "data" in android:
        _check_string_map(android["data"], "message.android.data")
    if "notification" in android:
        _check_android_notification(android["notification"])


def _check_enum(obj: Mapping[str, Any], key: str, allowed: set[str], path: str,
                proto: str) -> None:
    for name in (key, _camel(key)):
        value = obj.get(name)
        if value is not None and value not in allowed:
            raise InvalidMessage(
                f"{path}.{name}", f"Invalid value at '{path}.{name}' ({proto}), "
                f"{json.dumps(value)}", fcm_error=False)


def _check_android_notification(notification: Any) -> None:
    """AndroidNotification as FCM checks it: known fields only, strings where strings
    belong (``channel_id`` among them), enums from their lists."""
    path = "message.android.notification"
    notification = _check_fields(notification, _ANDROID_NOTIFICATION_FIELDS, path)
    for name in _ANDROID_NOTIFICATION_STRINGS:
        _check_string(notification, name, path)
        _check_string(notification, _camel(name), path)
    _check_enum(notification, "notification_priority", _NOTIFICATION_PRIORITIES, path,
                "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Priority")
    _check_enum(notification, "visibility", _VISIBILITIES, path,
                "type.googleapis.com/google.firebase.fcm.v1.AndroidNotification.Visibility")
    color = notification.get("color")
    if color is not None and not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
        raise InvalidMessage(f"{path}.color", "Color must be in the form #RRGGBB.")


def _check_content(message: Mapping[str, Any]) -> None:
    if "data" in message:
        data = _check_string_map(message["data"], "message.data")
        if len(json.dumps(data)) > MAX_DATA_BYTES:
            raise InvalidMessage("message.data", "Android message is too big")
    if "notification" in message:
        notification = _check_fields(
            message["notification"], _NOTIFICATION_FIELDS, "message.notification"
        )
        for key in _NOTIFICATION_FIELDS:
            _check_string(notification, key, "message.notification")
    if "android" in message:
        _check_android(message["android"])
    if "apns" in message:
        apns = _check_fields(message["apns"], _APNS_FIELDS, "message.apns")
        if "headers" in apns:
            _check_string_map(apns["headers"], "message.apns.headers")
        if "payload" in apns and not isinstance(apns["payload"], dict):
            raise InvalidMessage("message.apns.payload", "payload must be an object",
                                 fcm_error=False)
    if "webpush" in message:
        webpush = _check_fields(message["webpush"], _WEBPUSH_FIELDS, "message.webpush")
        for key in ("headers", "data"):
            if key in webpush:
                _check_string_map(webpush[key], f"message.webpush.{key}")


def validate_message(message: Any) -> str | None:
    """Checks a v1 ``Message`` as FCM would; returns the registration token, if any."""
    message = _check_fields(message, _MESSAGE_FIELDS, "message")
    targets = [k for k in ("token", "topic", "condition") if message.get(k) is not None]
    if not targets:
        raise InvalidMessage("message", "Recipient of the message is not set.")
    if len(targets) > 1:
        raise InvalidMessage(
            "message", f"Exactly one of token, topic or condition must be set (got "
            f"{', '.join(targets)})."
        )
    token = _check_string(message, "token", "message")
    if token is not None and (not token or any(c.isspace() for c in token)):
        raise InvalidMessage(
            "message.token", "The registration token is not a valid FCM registration token"
        )
    topic = _check_string(message, "topic", "message")
    if topic is not None and not _TOPIC.match(topic):
        raise InvalidMessage("message.topic", "Invalid topic name")
    _check_string(message, "condition", "message")
    _check_content(message)
    return token


def _load_public_key(pem: bytes) -> Any:
    return serialization.load_pem_public_key(pem)


class FakeFcm:
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
    ) -> None:
        self.project_id = project_id
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
            email: _load_public_key(pem)
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
        return f"http://{self.host}:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def trust(self, client_email: str, public_key: bytes) -> None:
        """Accepts assertions signed by this service account from now on."""
        self._keys[client_email] = _load_public_key(public_key)
        self._accept_any = False

    def mark_unregistered(self, tokens: Iterable[str]) -> None:
        self._unregistered.update(tokens)

    def clear(self) -> None:
        """Forgets deliveries (not tokens, faults or the unregistered list)."""
        self.deliveries.clear()

    def set_faults(
        self, *, rate: float, status: int = 503, reason: str | None = None, latency_ms: int = 0
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
        try:
            server = await loop.create_server(
                self.protocol_factory(runner.server), host, port, backlog=1024,
                reuse_address=True,
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
        app.router.add_get("/_fake/deliveries", self._get_deliveries)
        app.router.add_delete("/_fake/deliveries", self._delete_deliveries)
        app.router.add_post("/_fake/unregistered", self._post_unregistered)
        app.router.add_post("/_fake/faults", self._post_faults)
        app.router.add_post("/_fake/quota", self._post_quota)
        app.router.add_post("/_fake/revoke", self._post_revoke)
        app.router.add_get("/_fake/stats", self._get_stats)
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
            return _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type!r}")
        if not isinstance(assertion, str) or not assertion:
            self._stats.token_errors += 1
            return _oauth_error("invalid_request", "Missing required parameter: assertion")
        try:
            claims = self._verify_assertion(assertion, own_url)
        except _GrantError as e:
            self._stats.token_errors += 1
            return _oauth_error(e.error, e.description)
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

    def _verify_assertion(self, assertion: str, own_url: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as e:
            raise _GrantError("invalid_grant", f"Invalid JWT: {e}") from e
        if header.get("alg") != "RS256":
            raise _GrantError("invalid_grant", "Invalid JWT: algorithm must be RS256.")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _GrantError("invalid_grant", "Invalid JWT: missing iss claim.")
        key = self._keys.get(iss)
        if key is None and not self._accept_any:
            raise _GrantError("invalid_grant", "Invalid grant: account not found")
        if key is not None:
            try:
                jwt.decode(
                    assertion, key, algorithms=["RS256"],
                    options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
                )
            except jwt.PyJWTError as e:
                raise _GrantError("invalid_grant", "Invalid JWT Signature.") from e
        aud = unverified.get("aud")
        if aud not in GOOGLE_TOKEN_AUDIENCES and aud != own_url:
            raise _GrantError("invalid_grant", f"Invalid JWT: audience {aud!r} is not accepted.")
        iat, exp = unverified.get("iat"), unverified.get("exp")
        now = self.clock()
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or exp <= iat
            or exp - iat > MAX_ASSERTION_LIFETIME_S
            or iat > now + CLOCK_SKEW_S
            or exp < now - CLOCK_SKEW_S
        ):
            raise _GrantError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
                "reasonable timeframe. Check your iat and exp values in the JWT claim.",
            )
        if not str(unverified.get("scope", "")).split():
            raise _GrantError("invalid_scope", "Empty or missing scope not allowed.")
        return unverified

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
            request = _check_fields(request, {"message", "validate_only", "validateOnly"}, "")
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
        logger.info("delivered %s to %s", name, _abbrev(token))
        return json_reply({"name": name})

    # ---- HTTP/2 ----

    def _h2_request(self, connection: _FcmConnection, stream_id: int, request: H2Request) -> None:
        headers = request.headers
        method = headers.get(":method")
        path = headers.get(":path", "").partition("?")[0]
        match = _SEND_PATH.fullmatch(path)
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

    # ---- control API ----

    async def _get_deliveries(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        return web.json_response(
            [d.as_json() for d in self.deliveries if token is None or d.token == token]
        )

    async def _delete_deliveries(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as e:
            raise web.HTTPBadRequest(text="body must be JSON") from e
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _post_unregistered(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise web.HTTPBadRequest(text="tokens must be a list of strings")
        self.mark_unregistered(tokens)
        return web.json_response({"unregistered": len(self._unregistered)})

    async def _post_faults(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            self.set_faults(
                rate=float(body.get("rate", 0)),
                status=int(body.get("status", 503)),
                reason=body.get("reason"),
                latency_ms=int(body.get("latency_ms", 0)),
            )
        except (TypeError, ValueError) as e:
            raise web.HTTPBadRequest(text=str(e)) from e
        return web.json_response(self.stats()["faults"])

    async def _post_quota(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        per_minute = body.get("per_minute")
        if per_minute is not None and (isinstance(per_minute, bool)
                                       or not isinstance(per_minute, int)):
            raise web.HTTPBadRequest(text="per_minute must be an integer or null")
        try:
            self.set_quota(per_minute)
        except ValueError as e:
            raise web.HTTPBadRequest(text=str(e)) from e
        return web.json_response({"per_minute": self.quota_per_minute})

    async def _post_revoke(self, request: web.Request) -> web.Response:
        self.revoke_tokens()
        return web.Response(status=204)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())


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


class _GrantError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


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
