"""The fake FCM gateway speaks Google's protocol: OAuth JWT-bearer grant + FCM HTTP v1."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import io
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as google_exceptions
from google.oauth2 import service_account
from h2.errors import ErrorCodes
from h2.settings import SettingCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.fake_fcm import FakeFcm
from loadtest.fcm_rules import FCM_SCOPE, JWT_BEARER_GRANT, MAX_BODY_BYTES
from loadtest.h2server import PREFACE
from tests.fake_fcm_fixtures import PROJECT
from tests.h2_client import H2Client, H2Response

REPO = Path(__file__).resolve().parents[2]


# ---- fixtures ----

@pytest.fixture
def sa_info(fake: FakeFcm, key_dir: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((key_dir / "fcm-service-account.json").read_text())
    assert info["token_uri"] == fake.token_uri
    return info


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _assertion(info: dict[str, Any], **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": info["client_email"],
        "aud": "https://oauth2.googleapis.com/token",
        "scope": FCM_SCOPE,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, info["private_key"], algorithm="RS256",
                      headers={"kid": info["private_key_id"]})


async def _grant(
    http: aiohttp.ClientSession, fake: FakeFcm, assertion: str,
    grant_type: str = JWT_BEARER_GRANT,
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        fake.token_uri, data={"grant_type": grant_type, "assertion": assertion}
    ) as resp:
        return resp.status, await resp.json()


async def _token(http: aiohttp.ClientSession, fake: FakeFcm, info: dict[str, Any]) -> str:
    status, body = await _grant(http, fake, _assertion(info))
    assert status == 200, body
    return str(body["access_token"])


async def _send(
    http: aiohttp.ClientSession, fake: FakeFcm, token: str | None, body: Any,
    project: str = PROJECT,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(
        f"{fake.url}/v1/projects/{project}/messages:send", json=body, headers=headers
    ) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def _message(device: str = "device-token-1", **extra: Any) -> dict[str, Any]:
    return {
        "message": {
            "token": device,
            "notification": {"title": "Structure fire nearby", "body": "3 min. ago"},
            "data": {"incident": "F1"},
            "android": {"priority": "HIGH", "ttl": "3600s", "collapse_key": "F1"},
            **extra,
        }
    }


def _fcm_error_code(body: dict[str, Any]) -> str | None:
    for detail in body["error"].get("details", []):
        if "errorCode" in detail:
            return str(detail["errorCode"])
    return None


# ---- the token endpoint ----

async def test_google_auth_service_account_gets_a_token(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    requests = pytest.importorskip("requests")
    from google.auth.transport.requests import Request

    credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        sa_info, scopes=[FCM_SCOPE]
    )
    with requests.Session() as session:
        # google-auth's refresh() blocks; the fake runs on this loop
        await asyncio.to_thread(credentials.refresh, Request(session))
    assert credentials.token.startswith("ya29.")
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth's expiry is naive UTC
    assert 3500 < (credentials.expiry - now).total_seconds() <= 3600
    status, body, _ = await _send(http, fake, credentials.token, _message())
    assert status == 200, body
    assert fake.stats()["tokens_issued"] == 1


async def test_bad_signature_is_invalid_grant(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    requests = pytest.importorskip("requests")
    from google.auth.transport.requests import Request

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = dict(sa_info, private_key=other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode())
    credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        forged, scopes=[FCM_SCOPE]
    )
    with requests.Session() as session, pytest.raises(
        google_exceptions.RefreshError, match="invalid_grant"
    ):
        await asyncio.to_thread(credentials.refresh, Request(session))
    status, body = await _grant(http, fake, _assertion(forged))
    assert status == 400
    assert body == {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"iss": "nobody@elsewhere.iam.gserviceaccount.com"}, "invalid_grant"),
        ({"aud": "https://example.com/token"}, "invalid_grant"),
        ({"exp": int(time.time()) + 7200}, "invalid_grant"),  # longer than an hour
        ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "invalid_grant"),
        ({"scope": None}, "invalid_scope"),
    ],
)
async def test_bad_assertions_are_refused(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession,
    overrides: dict[str, Any], error: str,
) -> None:
    status, body = await _grant(http, fake, _assertion(sa_info, **overrides))
    assert status == 400
    assert body["error"] == error
    assert body["error_description"]


async def test_token_endpoint_accepts_its_own_url_as_audience(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body = await _grant(http, fake, _assertion(sa_info, aud=fake.token_uri))
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600


async def test_wrong_grant_type_and_garbage(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body = await _grant(http, fake, _assertion(sa_info), grant_type="password")
    assert (status, body["error"]) == (400, "unsupported_grant_type")
    status, body = await _grant(http, fake, "not.a.jwt")
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_token_without_messaging_scope_is_forbidden(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    status, body = await _grant(
        http, fake, _assertion(sa_info, scope="https://www.googleapis.com/auth/userinfo.email")
    )
    assert status == 200
    status, err, _ = await _send(http, fake, body["access_token"], _message())
    assert status == 403
    assert err["error"]["status"] == "PERMISSION_DENIED"


# ---- messages:send ----

async def test_send_success_is_recorded(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    before = time.time()
    status, body, _ = await _send(http, fake, token, _message("tok-A"))
    assert status == 200
    assert re.fullmatch(rf"projects/{PROJECT}/messages/0:\d+%[0-9a-f]+", body["name"])
    [delivery] = fake.deliveries
    assert delivery.token == "tok-A"
    assert delivery.name == body["name"]
    assert delivery.message == _message("tok-A")["message"]
    assert delivery.headers["authorization"] == f"Bearer {token}"
    assert before <= delivery.arrived_at <= time.time()


async def test_stored_deliveries_are_bounded(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    fake.max_deliveries = 10
    for i in range(15):
        await _send(http, fake, token, _message(f"d{i}"))
    assert len(fake.deliveries) <= 10
    assert fake.deliveries[-1].token == "d14"
    assert fake.stats()["delivered"] == 15


async def test_validate_only_is_not_delivered(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    status, body, _ = await _send(http, fake, token, {**_message(), "validate_only": True})
    assert status == 200
    assert body["name"] == f"projects/{PROJECT}/messages/fake_message_id"
    assert fake.deliveries == []


async def test_authentication_errors(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    for bearer in (None, "ya29.made-up"):
        status, body, _ = await _send(http, fake, bearer, _message())
        assert status == 401
        assert body["error"]["status"] == "UNAUTHENTICATED"
        assert body["error"]["code"] == 401
    token = await _token(http, fake, sa_info)
    fake.clock = lambda: time.time() + 3601  # the token has expired
    status, body, _ = await _send(http, fake, token, _message())
    assert status == 401
    assert fake.deliveries == []


async def test_wrong_project_is_permission_denied(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    status, body, _ = await _send(http, fake, token, _message(), project="someone-else")
    assert status == 403
    assert body["error"]["status"] == "PERMISSION_DENIED"
    assert "someone-else" in body["error"]["message"]


async def test_unregistered_token_is_404(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    fake.mark_unregistered(["gone"])
    status, body, _ = await _send(http, fake, token, _message("gone"))
    assert status == 404
    assert body == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }
            ],
        }
    }
    assert fake.deliveries == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_message(colour="red"), "colour"),
        ({"message": {"token": "t", "data": {"count": 3}}}, "message.data"),
        (
            {"message": {"token": "t", "android": {"priority": "URGENT"}}},
            "message.android.priority",
        ),
        ({"message": {"token": "t", "android": {"ttl": "1h"}}}, "message.android.ttl"),
        ({"message": {"token": "t", "android": {"ttl": 3600}}}, "message.android.ttl"),
        ({"message": {"token": "t", "topic": "news"}}, "message"),
        ({"message": {"data": {"a": "b"}}}, "message"),
        ({"message": {"token": "t", "notification": {"title": "x", "sound": "y"}}}, "sound"),
        ({"msg": {"token": "t"}}, "msg"),
        ({"message": {"token": "t", "data": {"blob": "x" * 5000}}}, "message.data"),
        # AndroidNotification as Google defines it.
        ({"message": {"token": "t", "android": {"notification": {"channel_id": 3}}}},
         "message.android.notification.channel_id"),
        ({"message": {"token": "t", "android": {"notification": {"channel": "x"}}}},
         "message.android.notification"),
        ({"message": {"token": "t", "android": {"notification": {
            "notification_priority": "URGENT"}}}},
         "message.android.notification.notification_priority"),
        ({"message": {"token": "t", "android": {"notification": {"visibility": "ALL"}}}},
         "message.android.notification.visibility"),
        ({"message": {"token": "t", "android": {"notification": {"color": "red"}}}},
         "message.android.notification.color"),
        ({"message": {"token": "t", "android": {"notification": []}}},
         "message.android.notification"),
    ],
)
async def test_malformed_messages_are_invalid_argument(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession,
    body: dict[str, Any], field: str,
) -> None:
    token = await _token(http, fake, sa_info)
    status, err, _ = await _send(http, fake, token, body)
    assert status == 400
    assert err["error"]["status"] == "INVALID_ARGUMENT"
    assert field in err["error"]["message"] or any(
        field in v["field"]
        for d in err["error"]["details"] for v in d.get("fieldViolations", [])
    )
    assert fake.deliveries == []


async def test_quota_exceeded_with_retry_after(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    fake.clock = lambda: 6_000_000 * 60 + 45.5  # 14.5 s before the next minute
    fake.set_quota(2)
    for _ in range(2):
        status, _, _ = await _send(http, fake, token, _message())
        assert status == 200
    status, body, headers = await _send(http, fake, token, _message())
    assert status == 429
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert _fcm_error_code(body) == "QUOTA_EXCEEDED"
    assert headers["Retry-After"] == "15"
    fake.clock = lambda: 6_000_001 * 60 + 1.0  # the next window
    status, _, _ = await _send(http, fake, token, _message())
    assert status == 200


@pytest.mark.parametrize(
    ("status", "reason", "grpc"),
    [(503, "UNAVAILABLE", "UNAVAILABLE"), (500, "INTERNAL", "INTERNAL"),
     (403, "SENDER_ID_MISMATCH", "PERMISSION_DENIED")],
)
async def test_faults(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession,
    status: int, reason: str, grpc: str,
) -> None:
    token = await _token(http, fake, sa_info)
    fake.set_faults(rate=1.0, status=status, reason=reason, latency_ms=0)
    got, body, _ = await _send(http, fake, token, _message())
    assert got == status
    assert body["error"]["status"] == grpc
    assert _fcm_error_code(body) == reason
    fake.set_faults(rate=0.0, status=status, reason=reason, latency_ms=0)
    got, _, _ = await _send(http, fake, token, _message())
    assert got == 200


# ---- control API ----

async def test_control_api(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    for device in ("a", "b", "a"):
        await _send(http, fake, token, _message(device))

    async with http.get(f"{fake.url}/_fake/deliveries") as resp:
        assert len(await resp.json()) == 3
    async with http.get(f"{fake.url}/_fake/deliveries", params={"token": "a"}) as resp:
        only_a = await resp.json()
    assert [d["token"] for d in only_a] == ["a", "a"]
    assert set(only_a[0]) == {"token", "message", "headers", "arrived_at", "name"}
    assert only_a[0]["message"]["android"]["priority"] == "HIGH"

    async with http.delete(f"{fake.url}/_fake/deliveries") as resp:
        assert resp.status == 204
    assert fake.deliveries == []

    async with http.post(f"{fake.url}/_fake/unregistered", json={"tokens": ["a"]}) as resp:
        assert resp.status == 200
    status, body, _ = await _send(http, fake, token, _message("a"))
    assert (status, _fcm_error_code(body)) == (404, "UNREGISTERED")

    async with http.post(
        f"{fake.url}/_fake/faults",
        json={"rate": 1, "status": 503, "reason": "UNAVAILABLE", "latency_ms": 150},
    ) as resp:
        assert resp.status == 200
    started = time.monotonic()
    status, body, _ = await _send(http, fake, token, _message("b"))
    assert status == 503
    assert time.monotonic() - started >= 0.15
    async with http.post(f"{fake.url}/_fake/faults", json={"rate": 0}) as resp:
        assert resp.status == 200
    status, _, _ = await _send(http, fake, token, _message("b"))
    assert status == 200

    async with http.post(f"{fake.url}/_fake/quota", json={"per_minute": 0}) as resp:
        assert (await resp.json()) == {"per_minute": 0}
    status, _, headers = await _send(http, fake, token, _message("b"))
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60
    async with http.post(f"{fake.url}/_fake/quota", json={"per_minute": None}) as resp:
        assert resp.status == 200

    async with http.post(f"{fake.url}/_fake/faults", json={"rate": 2}) as resp:
        assert resp.status == 400
    async with http.post(f"{fake.url}/_fake/unregistered", json={"tokens": "a"}) as resp:
        assert resp.status == 400

    async with http.get(f"{fake.url}/_fake/stats") as resp:
        stats = await resp.json()
    assert stats["tokens_issued"] == 1
    assert stats["delivered"] == 4
    assert stats["errors"] == {"UNREGISTERED": 1, "UNAVAILABLE": 1, "QUOTA_EXCEEDED": 1}


async def test_cli_starts_with_a_dev_service_account(tmp_path: Path) -> None:
    from workers.gateways.fcm_client import FcmClient
    from workers.gateways.waiting import result_of

    certs = tmp_path / "certs"
    with (tmp_path / "stderr.log").open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "loadtest.fake_fcm", "--host", "127.0.0.1", "--port", "0",
            "--project", "cli-project", "--certs-dir", str(certs),
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env={**os.environ, "PYTHONWARNINGS": "error"},
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
            match = re.search(r"ready on (http://127\.0\.0\.1:\d+)", line)
            assert match, (line, (tmp_path / "stderr.log").read_text())
            url = match.group(1)
            async with aiohttp.ClientSession() as http, http.get(f"{url}/_fake/stats") as resp:
                assert resp.status == 200
                assert (await resp.json())["delivered"] == 0
            sa_file = certs / "fcm-service-account.json"
            assert json.loads(sa_file.read_text())["token_uri"] == f"{url}/token"
            async with FcmClient(service_account_file=str(sa_file), endpoint=url) as client:
                body = json.dumps({"message": {"token": "cli-device", "data": {"k": "v"}}})
                response = await result_of(functools.partial(client.start_body, body.encode()))
            assert response.status == 200, response
            assert response.name is not None
            assert response.name.startswith("projects/cli-project/messages/")
        finally:
            if proc.returncode is None:
                proc.terminate()
            returncode = await asyncio.wait_for(proc.wait(), 10)
    log = (tmp_path / "stderr.log").read_text()
    assert returncode == 0, log
    assert "delivered projects/cli-project/messages/" in log
    assert "cli-device" in log


# ---- HTTP/2 (h2c with prior knowledge) on the same port ----

SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"
NAME = re.compile(rf"projects/{PROJECT}/messages/0:\d+%[0-9a-f]+")
JSON_TYPE = "application/json; charset=UTF-8"


@pytest.fixture
async def h2c(fake: FakeFcm) -> AsyncIterator[H2Client]:
    client = await H2Client.connect(fake.host, fake.port)
    try:
        yield client
    finally:
        await client.close()


def _json_headers(token: str | None) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return headers


async def _h2_send(
    h2c: H2Client, token: str | None, body: Any, project: str = PROJECT
) -> H2Response:
    return await h2c.request(
        "POST", f"/v1/projects/{project}/messages:send", _json_headers(token),
        json.dumps(body).encode(),
    )


async def test_h2_settings_and_success_is_recorded(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    assert h2c.server_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 100
    token = await _token(http, fake, sa_info)
    resp = await _h2_send(h2c, token, _message("tok-A"))
    assert resp.status == 200, resp
    assert NAME.fullmatch(resp.json()["name"])
    assert resp.headers["content-type"] == JSON_TYPE
    assert int(resp.headers["content-length"]) == len(resp.body)
    [delivery] = fake.deliveries
    assert (delivery.token, delivery.name) == ("tok-A", resp.json()["name"])
    assert delivery.message == _message("tok-A")["message"]
    assert delivery.headers["authorization"] == f"Bearer {token}"   # as over HTTP/1.1
    assert not any(name.startswith(":") for name in delivery.headers)
    stats = fake.stats()
    assert (stats["sends"], stats["delivered"]) == (1, 1)


async def test_h2_token_endpoint_then_send(
    fake: FakeFcm, sa_info: dict[str, Any], h2c: H2Client
) -> None:
    form = f"grant_type={JWT_BEARER_GRANT}&assertion={_assertion(sa_info)}"
    resp = await h2c.request(
        "POST", "/token", {"content-type": "application/x-www-form-urlencoded"},
        form.encode(),
    )
    assert resp.status == 200, resp
    grant = resp.json()
    assert (grant["token_type"], grant["expires_in"]) == ("Bearer", 3600)
    resp = await _h2_send(h2c, grant["access_token"], _message())
    assert resp.status == 200
    resp = await h2c.request("POST", "/token", body=b"grant_type=password")
    assert (resp.status, resp.json()["error"]) == (400, "unsupported_grant_type")


async def test_h2_unregistered_is_404(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    fake.mark_unregistered(["gone"])
    resp = await _h2_send(h2c, token, _message("gone"))
    assert resp.status == 404
    assert resp.json() == {"error": {
        "code": 404, "message": "Requested entity was not found.", "status": "NOT_FOUND",
        "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                     "errorCode": "UNREGISTERED"}],
    }}
    assert fake.deliveries == []


async def test_h2_invalid_argument_names_the_field(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    resp = await _h2_send(
        h2c, token, {"message": {"token": "t", "android": {"priority": "URGENT"}}}
    )
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    [violation] = [v for d in error["details"] for v in d.get("fieldViolations", [])]
    assert violation["field"] == "message.android.priority"
    resp = await h2c.request("POST", SEND_PATH, _json_headers(token), b"{not json")
    assert (resp.status, resp.json()["error"]["message"]) == (
        400, "Invalid JSON payload received.")


async def test_h2_authentication_errors(h2c: H2Client, fake: FakeFcm) -> None:
    for bearer in (None, "ya29.made-up"):
        resp = await _h2_send(h2c, bearer, _message())
        assert resp.status == 401
        assert resp.json()["error"]["status"] == "UNAUTHENTICATED"
    assert fake.stats()["errors"] == {"UNAUTHENTICATED": 2}


async def test_h2_quota_exceeded_with_retry_after(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    fake.clock = lambda: 6_000_000 * 60 + 45.5
    fake.set_quota(1)
    assert (await _h2_send(h2c, token, _message())).status == 200
    resp = await _h2_send(h2c, token, _message())
    assert resp.status == 429
    assert _fcm_error_code(resp.json()) == "QUOTA_EXCEEDED"
    assert resp.headers["retry-after"] == "15"


async def test_h2_injected_fault_and_latency(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    fake.set_faults(rate=1.0, status=503, latency_ms=200)
    started = time.monotonic()
    # the latency is a timer: two sends on one connection wait side by side
    first, second = await asyncio.gather(
        _h2_send(h2c, token, _message()), _h2_send(h2c, token, _message())
    )
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.39
    for resp in (first, second):
        assert resp.status == 503
        assert resp.json()["error"]["status"] == "UNAVAILABLE"
        assert _fcm_error_code(resp.json()) == "UNAVAILABLE"
    fake.set_faults(rate=0.0)
    assert (await _h2_send(h2c, token, _message())).status == 200


async def test_h2_unknown_path_and_wrong_method(h2c: H2Client) -> None:
    resp = await h2c.request("GET", SEND_PATH)
    assert (resp.status, resp.json()["error"]["code"]) == (405, 405)
    resp = await h2c.request("GET", "/token")
    assert resp.status == 405
    resp = await h2c.request("POST", "/v1/elsewhere")
    assert (resp.status, resp.json()["error"]["status"]) == (404, "NOT_FOUND")
    assert resp.headers["content-type"] == JSON_TYPE


async def test_h2_body_over_the_limit_is_413(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    resp = await h2c.request("POST", SEND_PATH, _json_headers(token),
                             b" " * (MAX_BODY_BYTES + 1))
    assert resp.status == 413
    assert resp.json()["error"]["code"] == 413
    assert (await _h2_send(h2c, token, _message())).status == 200  # the connection lives on
    assert fake.stats()["sends"] == 2


async def test_h2_many_concurrent_streams_on_one_connection(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)
    fake.set_faults(rate=0.0, latency_ms=30)  # every stream stays open a while
    responses = await asyncio.gather(
        *(_h2_send(h2c, token, _message(f"d{i}")) for i in range(300))
    )
    assert [r.status for r in responses] == [200] * 300
    assert h2c.peak_streams == 100  # as many as the server allows, and no more
    assert len({r.json()["name"] for r in responses}) == 300
    assert {d.token for d in fake.deliveries} == {f"d{i}" for i in range(300)}
    assert fake.stats()["sends"] == 300
    assert h2c.terminated is None


async def test_h2_stream_limit_is_a_constructor_parameter(key_dir: Path) -> None:
    server = FakeFcm(project_id=PROJECT, max_concurrent_streams=7)
    await server.start(port=0)
    try:
        client = await H2Client.connect(server.host, server.port)
        assert client.server_settings[SettingCodes.MAX_CONCURRENT_STREAMS] == 7
        await client.close()
    finally:
        await server.stop()


async def test_h2_body_waits_for_window_update(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    token = await _token(http, fake, sa_info)
    fake.mark_unregistered(["gone"])
    client = await H2Client.connect(fake.host, fake.port, initial_window_size=16,
                                    auto_credit=False)
    try:
        stream_id = await client.open(
            "POST", SEND_PATH, _json_headers(token), json.dumps(_message("gone")).encode()
        )
        stream = client.streams[stream_id]
        await asyncio.wait_for(stream.headers_arrived.wait(), 5)
        length = int(stream.headers["content-length"])
        assert stream.status == 404 and length > 16
        await asyncio.wait_for(stream.data_arrived.wait(), 5)
        await client.ping()   # what the fake sent before answering it has arrived
        assert len(stream.body) == 16  # the window's worth, then nothing until credit
        assert not stream.done.done()
        client.credit(stream_id, length - 16)
        resp = await client.response(stream_id)
        assert len(resp.body) == length
        assert _fcm_error_code(resp.json()) == "UNREGISTERED"
    finally:
        await client.close()


async def test_http1_and_http2_share_the_port(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client
) -> None:
    token = await _token(http, fake, sa_info)  # HTTP/1.1 /token, while h2c is open
    h1, h2 = await asyncio.gather(
        _send(http, fake, token, _message("over-h1")), _h2_send(h2c, token, _message("over-h2"))
    )
    assert (h1[0], h2.status) == (200, 200)
    assert [d.token for d in fake.deliveries] in (["over-h1", "over-h2"],
                                                  ["over-h2", "over-h1"])
    async with http.get(f"{fake.url}/_fake/stats") as resp:
        assert (await resp.json())["delivered"] == 2


def _shape(body: Any) -> Any:
    """The body with the one part that differs between two sends (the message id)."""
    if isinstance(body, dict) and isinstance(body.get("name"), str):
        return {**body, "name": NAME.sub("projects/…/messages/<id>", body["name"])}
    return body


_ALIKE: dict[str, tuple[dict[str, Any], Any]] = {
    # case: (how to send it, body)
    "success": ({}, _message()),
    "validate-only": ({}, {**_message(), "validate_only": True}),
    "unregistered": ({}, _message("gone")),
    "unknown-field": ({}, _message(colour="red")),
    "bad-data": ({}, {"message": {"token": "t", "data": {"count": 3}}}),
    "two-targets": ({}, {"message": {"token": "t", "topic": "news"}}),
    "not-json": ({"raw": b"{nope"}, None),
    "too-large": ({"raw": b" " * (MAX_BODY_BYTES + 1)}, None),
    "no-token": ({"token": None}, _message()),
    "bad-token": ({"token": "ya29.made-up"}, _message()),
    "wrong-project": ({"project": "someone-else"}, _message()),
    "quota": ({"quota": 0}, _message()),
    "fault-503": ({"fault": 503}, _message()),
    "fault-429": ({"fault": 429}, _message()),
}


@pytest.mark.parametrize("case", list(_ALIKE))
async def test_http1_and_http2_answer_alike(
    fake: FakeFcm, sa_info: dict[str, Any], http: aiohttp.ClientSession, h2c: H2Client,
    case: str,
) -> None:
    how, message = _ALIKE[case]
    token = how.get("token", "") if "token" in how else await _token(http, fake, sa_info)
    fake.clock = lambda: 6_000_000 * 60 + 30.0
    fake.mark_unregistered(["gone"])
    if "quota" in how:
        fake.set_quota(how["quota"])
    if "fault" in how:
        fake.set_faults(rate=1.0, status=how["fault"])
    body = how.get("raw") or json.dumps(message).encode()
    path = f"/v1/projects/{how.get('project', PROJECT)}/messages:send"
    headers = _json_headers(token)
    answers = []
    async with http.post(f"{fake.url}{path}", data=io.BytesIO(body), headers=headers) as resp:
        answers.append((resp.status, _shape(await resp.json()),
                        resp.headers["Content-Type"], resp.headers.get("Retry-After")))
    h2 = await h2c.request("POST", path, headers, body)
    answers.append((h2.status, _shape(h2.json()), h2.headers["content-type"],
                    h2.headers.get("retry-after")))
    assert answers[0] == answers[1]
    assert answers[0][2] == JSON_TYPE
    assert fake.stats()["sends"] == 2


async def test_stop_sends_goaway(fake: FakeFcm, h2c: H2Client) -> None:
    await fake.stop()
    await asyncio.wait_for(asyncio.shield(h2c.closed), 5)
    assert h2c.terminated is not None
    assert h2c.terminated.error_code == ErrorCodes.NO_ERROR


async def _first_bytes(fake: FakeFcm, data: bytes, *, eof: bool = True) -> bytes:
    """What the server answers to ``data`` (and an end of stream, if ``eof``) until it
    closes the connection."""
    reader, writer = await asyncio.open_connection(fake.host, fake.port)
    try:
        writer.write(data)
        if eof:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=40).map(lambda b: PREFACE + b),
    st.integers(0, len(PREFACE)).flatmap(
        lambda n: st.binary(max_size=8).map(lambda b: PREFACE[:n] + b)),
    st.sampled_from([b"GET /_fake/stats HTTP/1.1\r\n", b"POST /token HTTP/1.1\r\nContent"]),
))
async def test_any_first_bytes_leave_the_server_serving(fake: FakeFcm, data: bytes) -> None:
    answer = await _first_bytes(fake, data)
    # nothing, an HTTP/1.1 answer, or the server's HTTP/2 SETTINGS (then GOAWAY)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ") or answer[3:4] == b"\x04", answer
    answer = await _first_bytes(
        fake, b"GET /_fake/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", eof=False
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
