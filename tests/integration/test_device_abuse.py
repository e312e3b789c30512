"""Device farming is not free: tokens are unique and platform-shaped, gone tokens stay
gone, registrations are limited per client address (real Redis), an app builder's
hook can refuse them, and request bodies refuse what they don't know."""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from server.settings import ConfigError, Settings
from server.web.app import create_app
from server.web.client import client_address, limit_bucket
from server.web.registration import (
    Registration,
    RegistrationCheck,
    RegistrationRefused,
    load_check,
)
from tests.conftest import with_settings
from tests.helpers import apns_token, create_device, fcm_token

Client = TestClient[Any, Any]


@asynccontextmanager
async def _client(settings: Settings, check: RegistrationCheck | None = None
                  ) -> AsyncIterator[Client]:
    async with TestClient(TestServer(create_app(settings, check))) as c:
        yield c


async def _register(client: Client, token: str, platform: str = "apns",
                    headers: dict[str, str] | None = None) -> Any:
    return await client.post("/v1/devices", json={"platform": platform, "token": token},
                             headers=headers or {})


async def _states(pool: asyncpg.Pool, token: str) -> dict[str, tuple[bool, str | None]]:
    rows = await pool.fetch(
        """SELECT id, token_disabled_at IS NULL AS live, token_disabled_reason
             FROM devices WHERE token = $1""", token)
    return {str(r["id"]): (r["live"], r["token_disabled_reason"]) for r in rows}


async def test_registering_a_held_token_moves_it(client: Client, pool: asyncpg.Pool) -> None:
    token = apns_token()
    first, _ = await create_device(client, "apns", token)
    second, _ = await create_device(client, "apns", token)
    assert await _states(pool, token) == {first: (False, "replaced"), second: (True, None)}
    # The same value on the other platform is another token.
    assert (await _register(client, fcm_token(), "fcm")).status == 201


async def test_rotating_to_a_held_token_moves_it_too(client: Client, pool: asyncpg.Pool) -> None:
    token = fcm_token()
    holder, _ = await create_device(client, "fcm", token)
    other, secret = await create_device(client, "fcm", fcm_token())
    r = await client.put(f"/v1/devices/{other}/token", json={"token": token},
                         headers={"Authorization": f"Bearer {secret}"})
    assert r.status == 204, await r.text()
    assert await _states(pool, token) == {holder: (False, "replaced"), other: (True, None)}


async def test_a_gone_token_cant_come_back(client: Client, pool: asyncpg.Pool) -> None:
    token = apns_token()
    device, secret = await create_device(client, "apns", token)
    # What the sender does when APNs answers 410 Unregistered.
    from server.store.devices import disable_token

    await disable_token(pool, device, token, "Unregistered")
    auth = {"Authorization": f"Bearer {secret}"}
    r = await client.put(f"/v1/devices/{device}/token", json={"token": token}, headers=auth)
    assert r.status == 422
    problem = await r.json()
    assert problem["errors"][0]["field"] == "token" and "gone" in problem["errors"][0]["message"]
    r = await _register(client, token)
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "token"
    assert await _states(pool, token) == {device: (False, "Unregistered")}
    # A fresh token from the OS brings the device back.
    fresh = apns_token()
    r = await client.put(f"/v1/devices/{device}/token", json={"token": fresh}, headers=auth)
    assert r.status == 204
    assert await _states(pool, fresh) == {device: (True, None)}


@pytest.mark.parametrize(("platform", "token"), [
    ("apns", "ab" * 31), ("apns", "ab" * 33), ("apns", "zz" * 32), ("apns", "fuzz-token"),
    ("fcm", "fuzz-token"), ("fcm", "a" * 160), ("fcm", "abcdefgh:" + "a" * 99),
    ("fcm", "abcdefgh:" + "a" * 120 + " "), ("fcm", "abc def:" + "a" * 120),
    ("fcm", secrets.token_hex(32)),
])
async def test_only_platform_shaped_tokens_are_accepted(client: Client, platform: str,
                                                        token: str) -> None:
    r = await _register(client, token, platform)
    assert r.status == 422
    assert (await r.json())["errors"][0]["field"] == "token"


async def test_registrations_are_limited_per_address(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    limited = with_settings(settings, device_registrations_per_hour_per_ip=3)
    async with _client(limited) as client:
        for _ in range(3):
            assert (await _register(client, apns_token())).status == 201
        r = await _register(client, apns_token())
        assert r.status == 429
        assert r.content_type == "application/problem+json"
        assert 1 <= int(r.headers["Retry-After"]) <= 1200
        # Malformed attempts count too, and are refused the same way.
        assert (await client.post("/v1/devices", data=b"{")).status == 429
        # X-Forwarded-For from an untrusted peer is the client's word: ignored.
        r = await _register(client, apns_token(), headers={"X-Forwarded-For": "203.0.113.9"})
        assert r.status == 429
    assert await pool.fetchval("SELECT count(*) FROM devices") == 3
    # The budget lives in Redis (SCAN: every master of a cluster).
    assert [k async for k in redis.scan_iter(match="geopush:rate:register:*")]


async def test_forwarded_for_names_the_client_behind_a_trusted_proxy(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    behind_proxy = with_settings(settings, device_registrations_per_hour_per_ip=1,
                                 trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),))
    async with _client(behind_proxy) as client:
        one = {"X-Forwarded-For": "198.51.100.7"}
        # A client writing its own X-Forwarded-For only adds a hop left of the real one.
        spoofed = {"X-Forwarded-For": "192.0.2.1, 198.51.100.7"}
        other = {"X-Forwarded-For": "198.51.100.8"}
        assert (await _register(client, apns_token(), headers=one)).status == 201
        assert (await _register(client, apns_token(), headers=spoofed)).status == 429
        assert (await _register(client, apns_token(), headers=other)).status == 201


def test_client_address_rules() -> None:
    proxies = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address("10.1.1.1", "203.0.113.5, 10.2.2.2", proxies) == "203.0.113.5"
    assert client_address("198.51.100.1", "203.0.113.5", proxies) == "198.51.100.1"
    assert client_address("10.1.1.1", "junk, 10.3.3.3", proxies) == "10.3.3.3"
    assert client_address("10.1.1.1", None, proxies) == "10.1.1.1"
    # One IPv6 subscriber (a /64) is one budget; an address is never stored as such.
    a, b = limit_bucket("2001:db8:1:2::1"), limit_bucket("2001:db8:1:2:ffff::9")
    assert a == b != limit_bucket("2001:db8:1:3::1")
    assert "2001" not in a


async def _app_attest(registration: Registration) -> None:
    """An app builder's check: here, a header their genuine app would carry."""
    if registration.headers.get("X-Attestation") != "genuine":
        raise RegistrationRefused("App attestation failed")


async def test_a_registration_hook_can_refuse(settings: Settings, pool: asyncpg.Pool,
                                              redis: aioredis.Redis) -> None:
    seen: list[Registration] = []

    async def check(registration: Registration) -> None:
        seen.append(registration)
        await _app_attest(registration)

    async with _client(settings, check) as client:
        r = await _register(client, apns_token())
        assert r.status == 403 and (await r.json())["detail"] == "App attestation failed"
        r = await _register(client, apns_token(), headers={"X-Attestation": "genuine"})
        assert r.status == 201
    assert [s.client_address for s in seen] == ["127.0.0.1", "127.0.0.1"]
    assert await pool.fetchval("SELECT count(*) FROM devices") == 1


async def test_the_hook_is_named_in_the_environment(settings: Settings, pool: asyncpg.Pool,
                                                    redis: aioredis.Redis) -> None:
    named = with_settings(settings, registration_check=f"{__name__}:_app_attest")
    async with _client(named) as client:
        assert (await _register(client, apns_token())).status == 403
    for bad in ("nocolon", "no.such.module:f", f"{__name__}:missing"):
        with pytest.raises(ConfigError):
            load_check(bad)
    assert Settings.from_env({"GEOPUSH_DATABASE_URL": "x", "GEOPUSH_REDIS_URL": "y",
                              "GEOPUSH_REGISTRATION_CHECK": "m:f",
                              "GEOPUSH_TRUSTED_PROXIES": "10.0.0.0/8, ::1"}
                             ).trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),
                                                   ipaddress.ip_network("::1"))
    with pytest.raises(ConfigError, match="GEOPUSH_TRUSTED_PROXIES"):
        Settings.from_env({"GEOPUSH_DATABASE_URL": "x", "GEOPUSH_REDIS_URL": "y",
                           "GEOPUSH_TRUSTED_PROXIES": "proxy.example"})


Body = Callable[[], dict[str, Any]]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("preferences", {"categories": None, "categoreis": ["shooting"]}, "categoreis"),
    ("preferences", {"quiet_hours": {"start": "22:00", "end": "07:00", "tz": "x"}},
     "quiet_hours.tz"),
    ("zones", {"zones": [{"name": "Home", "center": {"lat": 47.6, "lon": -122.3, "alt": 3},
                          "radius_m": 500}]}, "zones[0].center.alt"),
    ("zones", {"zones": [], "replace": True}, "replace"),
    ("token", {"token": secrets.token_hex(32), "platform": "apns"}, "platform"),
    ("location", {"lat": 47.6, "lon": -122.3, "accuracy": 5}, "accuracy"),
])
async def test_unknown_fields_are_a_422_naming_the_field(
    client: Client, path: str, body: dict[str, Any], field: str
) -> None:
    device, secret = await create_device(client, "apns", apns_token())
    r = await client.put(f"/v1/devices/{device}/{path}", json=body,
                         headers={"Authorization": f"Bearer {secret}"})
    assert r.status == 422, await r.text()
    assert (await r.json())["errors"][0]["field"] == field
    r = await client.post("/v1/devices", json={"platform": "apns", "token": apns_token(),
                                               "tokn": "x"})
    assert r.status == 422 and (await r.json())["errors"][0]["field"] == "tokn"


@pytest.mark.parametrize("bad", ["a\x00b", "a\rb", "a\nb", "ab\n"])
async def test_nul_cr_and_lf_in_device_text_are_a_422(client: Client, bad: str) -> None:
    device, secret = await create_device(client, "apns", apns_token())
    auth = {"Authorization": f"Bearer {secret}"}
    for path, body, field in (
        ("zones", {"zones": [{"name": bad, "center": {"lat": 47.6, "lon": -122.3},
                              "radius_m": 500}]}, "zones[0].name"),
        ("preferences", {"timezone": bad}, "timezone"),
        ("preferences", {"quiet_hours": {"start": bad, "end": "07:00"}}, "quiet_hours.start"),
    ):
        r = await client.put(f"/v1/devices/{device}/{path}", json=body, headers=auth)
        assert r.status == 422, (path, await r.text())
        assert (await r.json())["errors"][0]["field"] == field
    r = await client.post("/v1/devices", json={"platform": "apns", "token": apns_token(),
                                               "timezone": bad})
    assert r.status == 422


async def test_concurrent_registrations_of_one_token_leave_one_live_device(
    client: Client, pool: asyncpg.Pool
) -> None:
    import asyncio

    token = apns_token()
    answers = await asyncio.gather(*(_register(client, token) for _ in range(12)))
    assert [a.status for a in answers] == [201] * 12
    states = await _states(pool, token)
    assert len(states) == 12
    assert sorted(states.values(), key=str) == sorted(
        [(True, None)] + [(False, "replaced")] * 11, key=str)
