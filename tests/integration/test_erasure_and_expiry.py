"""Forgetting at the right cost and on time: erasure without scanning the Redis keyspace,
responders' positions gone 15 minutes after their last report with no cardiac arrest
to look for them, and exact locations purged for areas and for late revisions too."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from server import keys
from server.store import positions
from server.store.housekeeping import purge_exact_locations
from tests.helpers import (
    POINT,
    apns_token,
    circle,
    create_agency,
    create_device,
    incident,
    post_incident,
    signed,
)
from workers.maintenance import Retention, maintain_once
from workers.matcher import Matcher

Client = TestClient[Any, Any]
NOW = dt.datetime.now(dt.UTC)


async def _scans(redis: aioredis.Redis) -> int:
    stats: dict[str, Any] = await redis.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


async def test_erasure_finds_the_device_without_scanning_the_keyspace(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    device, key = await create_device(client, "apns", apns_token(), circle(*POINT, 1000))
    other, _ = await create_device(client, "apns", apns_token(), circle(*POINT, 1000))
    matcher = Matcher(pool, redis)
    for n in range(3):
        _, accepted = await post_incident(client, secret, incident(f"E{n}"))
        await matcher.match_incident(accepted["incident_id"], NOW)
    pushed = [k async for k in redis.scan_iter(match="geopush:{p*}:pushed:*")]
    shards = {keys.device_shard(d, keys.DEFAULT_PUSH_STREAM_SHARDS) for d in (device, other)}
    assert len(pushed) == 3 * len(shards)     # each event's dedup set, split by shard
    before = await _scans(redis)
    r = await client.delete(f"/v1/devices/{device}", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 204
    assert await _scans(redis) == before
    members: set[str] = set()
    for dedup in pushed:
        members |= await redis.smembers(dedup)
    assert members == {other}
    shard = keys.device_shard(device, keys.DEFAULT_PUSH_STREAM_SHARDS)
    assert not await redis.exists(keys.device_events(device, shard),
                                  keys.device_rate(device, shard))


async def test_positions_are_forgotten_15_minutes_after_the_last_report(
    pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    now = time.time()
    await positions.RESPONDERS.report(redis, "stale", POINT[0], POINT[1], now - 15 * 60 - 1)
    await positions.RESPONDERS.report(redis, "fresh", POINT[0], POINT[1], now - 60)
    # No cardiac arrest asks where responders are: the relay's housekeeping forgets them.
    await maintain_once(pool, Retention(), redis)
    assert await redis.zrange(keys.RESPONDERS_SEEN, 0, -1) == ["fresh"]
    assert [m for m in await redis.zrange(keys.RESPONDERS_GEO, 0, -1)] == ["fresh"]


CAP_AREA = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{id}</identifier><sender>cad@example.org</sender>
  <sent>{sent}</sent><status>Actual</status><msgType>Alert</msgType><scope>Public</scope>
  <info><category>Fire</category><event>Fire in Building</event><urgency>Immediate</urgency>
    <severity>Severe</severity><certainty>Observed</certainty>
    <area><areaDesc>Ravenna</areaDesc><circle>47.66707,-122.301946 0.2</circle></area>
  </info>
</alert>"""


async def test_the_purge_covers_areas_and_revisions_after_a_purge(
    client: Client, pool: asyncpg.Pool
) -> None:
    secret = await create_agency(client)
    sent = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2)).replace(microsecond=0).isoformat()
    body = CAP_AREA.format(id="AREA1", sent=sent).encode()
    r = await client.post("/v1/agencies/seattle-fire/incidents", data=body,
                          headers={**signed(secret, body), "Content-Type": "application/cap+xml"})
    assert r.status == 202, await r.text()
    await post_incident(client, secret, incident("POINT1"))
    await pool.execute("UPDATE incidents SET received_at = now() - interval '25 hours'")
    assert await purge_exact_locations(pool, dt.timedelta(hours=24), NOW) == 2
    rows = {r["external_id"]: r for r in await pool.fetch(
        """SELECT external_id, ST_Equals(geom, public_geom) AS public,
                  GeometryType(geom) AS kind FROM incidents""")}
    assert rows["AREA1"]["public"] and rows["AREA1"]["kind"] == "POLYGON"
    assert rows["POINT1"]["public"] and rows["POINT1"]["kind"] == "POINT"

    # A revision arriving after the purge brings an exact point back; it is purged in
    # its turn, once the retention has passed since it arrived.
    now = dt.datetime.now(dt.UTC)
    late = incident("POINT1", updated_at=now.isoformat())
    status, _ = await post_incident(client, secret, late)
    assert status == 202
    exact = await pool.fetchrow(
        """SELECT ST_AsText(geom) AS geom, exact_purged_at FROM incidents
            WHERE external_id = 'POINT1'""")
    assert exact["geom"] == "POINT(-122.301946 47.66707)" and exact["exact_purged_at"] is None
    assert await purge_exact_locations(pool, dt.timedelta(hours=24), now) == 0
    later = now + dt.timedelta(hours=25)
    assert await purge_exact_locations(pool, dt.timedelta(hours=24), later) == 1
    assert await pool.fetchval(
        "SELECT ST_AsText(geom) FROM incidents WHERE external_id = 'POINT1'"
    ) == "POINT(-122.302 47.667)"
    assert await pool.fetchval("SELECT count(*) FROM incidents") == 2
