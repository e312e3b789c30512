"""Every per-address limit counts the client behind a trusted proxy, never the proxy
(a load balancer would otherwise lump a whole city into one budget), and never an
address a client wrote itself into X-Forwarded-For."""

from __future__ import annotations

import ipaddress
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from server.settings import Settings
from server.web.app import create_app
from tests.conftest import with_settings
from tests.helpers import PASSWORD, create_agency, create_user

BBOX = {"bbox": "-122.35,47.6,-122.3,47.65"}


def _behind_proxy(settings: Settings, **changes: Any) -> Settings:
    return with_settings(settings, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
                         **changes)


def _from(address: str) -> dict[str, str]:
    return {"X-Forwarded-For": address}


async def test_sign_in_attempts_are_counted_per_client_behind_the_proxy(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    async with TestClient(TestServer(create_app(_behind_proxy(settings)))) as client:
        await create_agency(client)
        await create_user(client, "seattle-fire", "lee")
        guesser = _from("198.51.100.7")
        for i in range(30):
            r = await client.post("/v1/session", headers=guesser,
                                  json={"username": f"guess{i}", "password": "w" * 12})
            assert r.status == 401
        lee = {"username": "lee", "password": PASSWORD}
        assert (await client.post("/v1/session", headers=guesser, json=lee)).status == 429
        # A client writing its own hop left of the real one is still the guesser.
        spoofed = _from("192.0.2.1, 198.51.100.7")
        assert (await client.post("/v1/session", headers=spoofed, json=lee)).status == 429
        # Another client behind the same proxy signs in.
        assert (await client.post("/v1/session", headers=_from("198.51.100.8"),
                                  json=lee)).status == 200
    # Redis keeps a digest of the address, never the address.
    assert not [k async for k in redis.scan_iter(match="geopush:login:*") if "198.51.100" in k]


async def test_the_public_map_is_rate_limited_per_client_behind_the_proxy(
    settings: Settings, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    limited = _behind_proxy(settings, public_requests_per_minute=3)
    async with TestClient(TestServer(create_app(limited))) as client:
        statuses = [(await client.get("/v1/incidents", params=BBOX,
                                      headers=_from("198.51.100.7"))).status
                    for _ in range(8)]
        assert statuses[0] == 200 and statuses[-1] == 429
        r = await client.get("/v1/incidents", params=BBOX, headers=_from("198.51.100.8"))
        assert r.status == 200
    assert not [k async for k in redis.scan_iter(match="geopush:rate:public:*")
                if "198.51.100" in k]
