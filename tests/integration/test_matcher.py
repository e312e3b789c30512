"""The matcher against real PostGIS and Redis: who gets a push, and who doesn't."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from tests.helpers import (
    POINT,
    circle,
    create_agency,
    create_device,
    incident,
    post_incident,
    push_entries,
)
from workers.matcher import Matcher
from workers.push import Push

Client = TestClient[Any, Any]
NOW = dt.datetime.now(dt.UTC)


async def _queued_tokens(redis: aioredis.Redis) -> list[str]:
    entries = await push_entries(redis, "apns") + await push_entries(redis, "fcm")
    return [Push.from_fields(fields).token for _, fields in entries]


async def _device(client: Client, **preferences: Any) -> str:
    token = secrets.token_hex(32)
    device, key = await create_device(client, "apns", token, circle(*POINT, 3000))
    if preferences:
        r = await client.put(f"/v1/devices/{device}/preferences", json=preferences,
                             headers={"Authorization": f"Bearer {key}"})
        assert r.status == 200, await r.text()
    return token


async def test_preferences_quiet_hours_and_disabled_tokens(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client, call_types={
        "Fire in Building": "structure_fire", "Shooting": "shooting"})
    everything = await _device(client)
    shootings_only = await _device(client, categories=["shooting"])
    # Quiet all day long except one minute: only the most severe come through.
    local = NOW.astimezone(dt.timezone(dt.timedelta(hours=-8)))
    start = (local + dt.timedelta(minutes=2)).strftime("%H:%M")
    end = (local + dt.timedelta(minutes=1)).strftime("%H:%M")
    sleeping = await _device(client, quiet_hours={"start": start, "end": end},
                             timezone="Etc/GMT+8")
    gone = await _device(client)
    await pool.execute("UPDATE devices SET token_disabled_at = now() WHERE token = $1", gone)

    matcher = Matcher(pool, redis, device_pushes_per_hour=0)
    _, fire = await post_incident(client, secret, incident("M1"))
    await matcher.match_incident(fire["incident_id"], NOW)
    assert sorted(await _queued_tokens(redis)) == sorted([everything])
    _, shooting = await post_incident(
        client, secret, incident("M2", call_type="Shooting", lat=POINT[0] + 0.01))
    await matcher.match_incident(shooting["incident_id"], NOW)
    assert sorted(await _queued_tokens(redis)) == sorted(
        [everything, everything, shootings_only, sleeping])


async def test_replaying_an_incident_pushes_nobody_twice(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    token = await _device(client)
    matcher = Matcher(pool, redis)
    _, fire = await post_incident(client, secret, incident())
    first = await matcher.match_incident(fire["incident_id"], NOW)
    again = await matcher.match_incident(fire["incident_id"], NOW)
    assert (first.enqueued, again.enqueued) == (1, 0)
    assert await _queued_tokens(redis) == [token]


async def test_per_device_hourly_limit_lets_the_most_severe_through(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client, call_types={
        "Fire in Building": "structure_fire", "Shooting": "shooting"})
    token = await _device(client)
    matcher = Matcher(pool, redis, device_pushes_per_hour=2)
    for i in range(4):  # four separate fires, 1 km apart
        _, fire = await post_incident(client, secret,
                                      incident(f"L{i}", lat=POINT[0] + 0.01 * (i - 1)))
        await matcher.match_incident(fire["incident_id"], NOW)
    assert await _queued_tokens(redis) == [token, token]
    _, shooting = await post_incident(client, secret, incident("S1", call_type="Shooting"))
    await matcher.match_incident(shooting["incident_id"], NOW)
    assert await _queued_tokens(redis) == [token, token, token]


async def test_stale_or_inactive_incidents_match_nobody(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    await _device(client)
    matcher = Matcher(pool, redis)
    _, fire = await post_incident(client, secret, incident())
    # An hour after it occurred the alert has expired. (Not NOW + 1 h: NOW is taken when
    # the module is collected, which may be minutes before this test posts its incident.)
    result = await matcher.match_incident(
        fire["incident_id"], dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    assert result.enqueued == 0
    await pool.execute("UPDATE incidents SET status = 'cleared'")
    assert (await matcher.match_incident(fire["incident_id"], NOW)).enqueued == 0
    assert await _queued_tokens(redis) == []
