"""PostgreSQL down, and where personal data goes (and doesn't)."""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from server.dev.devenv import free_port
from server.settings import Settings
from server.web.app import create_app
from tests.e2e.conftest import Stack, wait_for
from tests.helpers import POINT, circle, create_agency, create_device, fcm_token, incident
from tests.helpers import post_incident as post


async def test_postgres_down_answers_503_with_retry_after(settings: Settings) -> None:
    dead = replace(settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    async with TestClient(TestServer(create_app(dead))) as client:
        body = json.dumps(incident()).encode()
        r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                              headers={"Content-Type": "application/json"})
        assert r.status == 503 and r.headers["Retry-After"]
        assert r.content_type == "application/problem+json"
        r = await client.get("/readyz")
        assert r.status == 503 and (await r.json())["checks"]["postgres"] == "unavailable"
        assert (await client.get("/healthz")).status == 200


PERSONAL = {
    "caller name": "Zebulon Quartermaine",
    "caller phone": "+1 206 555 0183",
    "caller phone digits": "2065550183",
    "e-mail": "zebulon.q@example.org",
    "patient": "Wilhelmina Fairweather",
    "medical detail": "insulin-dependent diabetic",
    "exact address": "5314 24th Ave NE",
    "unit": "Apt 7C",
}


def _personal_incident(external_id: str, lat: float = POINT[0]) -> dict[str, Any]:
    doc = incident(external_id, lat=lat, narrative=(
        f"RP {PERSONAL['caller name']} callback {PERSONAL['caller phone']} "
        f"email {PERSONAL['e-mail']}"))
    doc["location"]["address"] = f"{PERSONAL['exact address']} {PERSONAL['unit']}"
    doc["caller"] = {"name": PERSONAL["caller name"], "phone": PERSONAL["caller phone"],
                     "email": PERSONAL["e-mail"]}
    doc["patient"] = {"name": PERSONAL["patient"], "conditions": [PERSONAL["medical detail"]]}
    doc["persons"] = [{"role": "witness", "name": PERSONAL["caller name"]}]
    return doc


async def _every_table(pool: asyncpg.Pool) -> str:
    tables = [r["tablename"] for r in await pool.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    dumps = []
    for table in tables:
        dumps.append(await pool.fetchval(
            f'SELECT coalesce(json_agg(t)::text, \'\') FROM "{table}" t'))  # noqa: S608
    return "\n".join(dumps)


async def _every_key(redis: aioredis.Redis) -> str:
    out = []
    async for key in redis.scan_iter(count=1000):
        kind = await redis.type(key)
        out.append(str(key))
        if kind == "string":
            out.append(str(await redis.get(key)))
        elif kind == "stream":
            out.append(str(await redis.xrange(key)))
        elif kind == "zset":
            out.append(str(await redis.zrange(key, 0, -1, withscores=True)))
        elif kind == "hash":
            out.append(str(await redis.hgetall(key)))
        elif kind in ("set", "list"):
            out.append(str(await (redis.smembers(key) if kind == "set"
                                  else redis.lrange(key, 0, -1))))
    return "\n".join(out)


async def test_personal_data_reaches_no_phone_table_key_or_log(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    public_secret = await create_agency(stack.client)
    review_secret = await create_agency(stack.client, "reviewed", review=True)
    await create_device(stack.client, "apns", secrets.token_hex(32), circle(*POINT, 1000))
    await create_device(stack.client, "fcm", fcm_token(), circle(*POINT, 1000))

    await post(stack.client, public_secret, _personal_incident("PII-1"))
    # 550 m away: not the same event as PII-1, so it alerts the phones again.
    _, held = await post(stack.client, review_secret,
                         _personal_incident("PII-2", lat=POINT[0] + 0.005), agency_id="reviewed")
    await wait_for(lambda: len(stack.apns.deliveries) == 1 and len(stack.fcm.deliveries) == 1,
                   what="the alerts")
    # While under review the editor sees the narrative, redacted.
    r = await stack.client.get("/v1/admin/review",
                               headers={"Authorization": f"Bearer {stack.settings.admin_token}"})
    narrative = (await r.json())["items"][0]["narrative"]
    assert PERSONAL["caller phone"] not in narrative and PERSONAL["e-mail"] not in narrative
    await stack.client.post(f"/v1/admin/review/{held['incident_id']}/approve",
                            headers={"Authorization": f"Bearer {stack.settings.admin_token}"})
    await wait_for(lambda: len(stack.apns.deliveries) == 2, what="the approved alert")
    await stack.drained()

    pushed = json.dumps([d.payload for d in stack.apns.deliveries]
                        + [d.message for d in stack.fcm.deliveries])
    tables = await _every_table(stack.pool)
    keys = await _every_key(stack.redis)
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "5300 block of 24th Ave NE" in pushed  # the public location did go out
    for what, value in PERSONAL.items():
        for where, text in (("a push", pushed), ("a table", tables), ("a Redis key", keys),
                            ("the logs", logs)):
            assert value not in text, f"{what} found in {where}"
    # The editor's copy of the narrative left with the decision.
    assert "RP " not in tables
