"""The benchmark's data: one alerting incident, its devices, and their pushes on the
Redis stream; and what became of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import asyncpg
import redis

from loadtest.delivery import AGENCY, PUBLIC_LOCATION
from server import keys
from server.store.migrate import migrate
from workers.push import Push


async def seed_fanout(database_url: str, platform: str, count: int
                      ) -> tuple[str, list[tuple[str, str]]]:
    """One active alerting incident and ``count`` devices of ``platform``; returns the
    incident id and (device id, token) pairs."""

    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            """INSERT INTO agencies (id, name, timezone, signing_secret)
               VALUES ($1, 'Delivery benchmark', 'UTC', 'not-used')
               ON CONFLICT (id) DO NOTHING""", AGENCY)
        incident_id: str = str(await conn.fetchval(
            """INSERT INTO incidents (agency_id, external_id, revision, status, call_type,
                                      category, occurred_at, geom, public_point,
                                      public_location, decision)
               VALUES ($1, $2, now(), 'active', 'Fire in Building', 'structure_fire',
                       now() - interval '2 minutes',
                       ST_SetSRID(ST_MakePoint(-122.301946, 47.66707), 4326),
                       ST_SetSRID(ST_MakePoint(-122.302, 47.667), 4326), $3, 'alert')
               RETURNING id""", AGENCY, f"bench-{platform}-{uuid.uuid4()}", PUBLIC_LOCATION))
        prefix = f"bench-{platform}-{uuid.uuid4().hex[:8]}-"
        token_sql = ("encode(sha256(convert_to($2 || g, 'UTF8')), 'hex')" if platform == "apns"
                     else "$2 || md5(g::text) || ':APA91b' || md5('x' || g)")
        rows = await conn.fetch(
            f"""INSERT INTO devices (platform, token, secret_hash)
                SELECT $1, {token_sql}, '\\x00'::bytea FROM generate_series(1, $3::int) g
                RETURNING id::text, token""",  # noqa: S608 (no user input)
            platform, prefix, count)
    finally:
        await conn.close()
    return incident_id, [(r["id"], r["token"]) for r in rows]


async def outcomes_of(database_url: str, incident_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            """SELECT outcome, count(*) AS n FROM deliveries WHERE incident_id = $1::uuid
                GROUP BY outcome""", incident_id)
    finally:
        await conn.close()
    return {r["outcome"]: int(r["n"]) for r in rows}


def make_pushes(platform: str, incident_id: str, devices: Sequence[tuple[str, str]]
                ) -> Iterator[dict[str, str]]:
    now = time.time()
    for device_id, token in devices:
        yield Push(
            incident_id=incident_id, device_id=device_id, platform=platform, token=token,
            locale="en", category="structure_fire", public_location=PUBLIC_LOCATION,
            lat=47.667, lon=-122.302, occurred_at=now - 120, received_at=now,
            expires_at=now + 3600,
        ).to_fields()


def enqueue(redis_url: str, platform: str, fields: Iterator[dict[str, str]],
            shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> int:
    """XADD the pushes onto the platform's push streams, each onto its device's shard
    (as the matcher would)."""

    client = redis.Redis.from_url(redis_url)
    for shard in range(shards):
        client.delete(keys.push_stream(platform, shard), keys.retry_schedule(platform, shard))
    count = 0
    try:
        pipe = client.pipeline(transaction=False)
        for entry in fields:
            flat: dict[Any, Any] = entry
            pipe.xadd(keys.push_stream(platform, keys.device_shard(entry["device_id"], shards)),
                      flat)
            count += 1
            if count % 2000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()
    return count


def stream_state(redis_url: str, platform: str,
                 shards: int = keys.DEFAULT_PUSH_STREAM_SHARDS) -> dict[str, Any]:
    """Pending and unread entries and scheduled retries, over all shards."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    pending = lag = retries = 0
    try:
        for shard in range(shards):
            stream = keys.push_stream(platform, shard)
            groups: Any = client.xinfo_groups(stream) if client.exists(stream) else []
            for group in groups[:1]:
                pending += int(group.get("pending") or 0)
                lag += int(group.get("lag") or 0)
            retries += int(client.zcard(keys.retry_schedule(platform, shard)))
    finally:
        client.close()
    return {"pending": pending, "lag": lag, "retries": retries}
