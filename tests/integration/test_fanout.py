"""The streaming, shared matcher against real PostGIS and Redis: a fan-out larger than
a page and than a work item reaches every device once, across push shards, replayed
work items and replayed incidents; the hourly limit holds in it; and a new incident
is matched before a large fan-out's remainder."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from server import keys
from tests.e2e.conftest import wait_for
from tests.helpers import FAR_POINT, POINT, create_agency, incident, post_incident, push_entries
from workers.fanout import FanoutLimits, decode_item
from workers.matcher import Matcher
from workers.push import Push
from workers.streams import StreamConsumer

Client = TestClient[Any, Any]
SHARDS = keys.DEFAULT_PUSH_STREAM_SHARDS
SMALL = FanoutLimits(first_page=5, page=10, split_after=20, backlog=10_000)


async def _devices(pool: asyncpg.Pool, count: int, at: tuple[float, float], *,
                   prefix: str, platform: str | None = None, second_zone: int = 0
                   ) -> set[str]:
    """``count`` devices with a 300 m zone around ``at`` (APNs and FCM alternating unless
    ``platform``); the first ``second_zone`` of them with a second zone there too (a
    device the match finds twice)."""
    rows = await pool.fetch(
        """INSERT INTO devices (platform, token, secret_hash)
           SELECT coalesce($3, CASE WHEN g % 2 = 0 THEN 'apns' ELSE 'fcm' END),
                  encode(sha256(convert_to($2 || g, 'UTF8')), 'hex'), '\\x00'
             FROM generate_series(1, $1::int) g
           RETURNING id::text""", count, prefix, platform)
    ids = [r["id"] for r in rows]
    zone = """INSERT INTO zones (device_id, name, geom)
              SELECT d, $4, ST_Multi(ST_Buffer(ST_SetSRID(ST_MakePoint($2, $3), 4326)
                                               ::geography, 300)::geometry)
                FROM unnest($1::uuid[]) d"""
    await pool.execute(zone, ids, at[1], at[0], "home")
    if second_zone:
        await pool.execute(zone, ids[:second_zone], at[1], at[0], "work")
    await pool.execute("ANALYZE zones")
    return set(ids)


async def _pushes(redis: aioredis.Redis) -> list[Push]:
    entries = await push_entries(redis, "apns") + await push_entries(redis, "fcm")
    return [Push.from_fields(fields) for _, fields in entries]


@contextlib.asynccontextmanager
async def _work(redis: aioredis.Redis, name: str = "m2", **options: Any
                ) -> AsyncIterator[StreamConsumer]:
    consumer = StreamConsumer(redis, keys.FANOUT_WORK_STREAM, keys.MATCHER_GROUP, name,
                              **{"batch": 1, "block_ms": 10, **options})
    await consumer.setup()
    yield consumer


async def _work_off(matcher: Matcher, consumer: StreamConsumer) -> int:
    """Every work item handled (and acknowledged); how many there were."""
    handled = 0
    while entries := await consumer.read(block=False):
        await matcher.handle_items(consumer, entries)
        handled += len(entries)
    return handled


async def test_a_fan_out_larger_than_a_page_and_an_item_reaches_every_device_once(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    devices = await _devices(pool, 57, POINT, prefix="big-", second_zone=12)
    matcher = Matcher(pool, redis, device_pushes_per_hour=0, limits=SMALL)
    async with _work(redis) as work:
        _, fire = await post_incident(client, secret, incident())
        result = await matcher.match_incident(fire["incident_id"],
                                              dt.datetime.now(dt.UTC))
        # The first 20 by the reader itself, the rest as items of a page each.
        assert (result.candidates, result.enqueued) == (57, 20)
        assert result.items >= 3
        assert len(await _pushes(redis)) == 20
        assert await _work_off(matcher, work) == result.items
    pushes = await _pushes(redis)
    assert sorted(p.device_id for p in pushes) == sorted(devices)   # each once
    assert {p.incident_id for p in pushes} == {fire["incident_id"]}
    # Each push on the stream of its device's shard, for its platform.
    for platform in keys.PLATFORMS:
        for shard in range(SHARDS):
            for _, fields in await redis.xrange(keys.push_stream(platform, shard)):
                push = Push.from_fields(fields)
                assert push.platform == platform
                assert keys.device_shard(push.device_id, SHARDS) == shard
    # The dedup set of each shard holds exactly that shard's devices.
    members: set[str] = set()
    for shard in range(SHARDS):
        got = await redis.smembers(keys.pushed(fire["incident_id"], shard))
        assert all(keys.device_shard(d, SHARDS) == shard for d in got)
        members |= got
    assert members == devices


async def test_a_replayed_work_item_or_incident_pushes_nobody_twice(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """A matcher dies after enqueueing a work item, before acknowledging it: another
    reclaims it and handles it again; the incident itself is replayed too (its reader
    died before acknowledging it). Every device still has exactly one push."""
    secret = await create_agency(client)
    devices = await _devices(pool, 45, POINT, prefix="replay-")
    matcher = Matcher(pool, redis, device_pushes_per_hour=0, limits=SMALL)
    _, fire = await post_incident(client, secret, incident())
    now = dt.datetime.now(dt.UTC)
    async with _work(redis, "dies", claim_idle_ms=0, claim_every_s=3600) as dying, \
            _work(redis, "survives", claim_idle_ms=0, claim_every_s=0) as survivor:
        assert dying.claim_due()           # its first claim pass done: it reads new items
        await matcher.match_incident(fire["incident_id"], now)
        [(entry_id, fields)] = await dying.read(block=False)
        item = decode_item(fields)
        assert (await matcher.enqueuer.enqueue(item.fanout, item.devices))[0] == len(
            item.devices)
        # ...and the process is gone: the item stays pending on "dies".
        [(claimed_id, _)] = await survivor.read(block=False)  # reclaimed, idle "long enough"
        assert claimed_id == entry_id
        before = len(await _pushes(redis))
        await matcher.handle_items(survivor, [(claimed_id, fields)])
        assert len(await _pushes(redis)) == before           # nothing new from the replay
        await _work_off(matcher, survivor)
        replay = await matcher.match_incident(fire["incident_id"], now)
        assert replay.enqueued == 0 and replay.items > 0
        await _work_off(matcher, survivor)
        [group] = await redis.xinfo_groups(keys.FANOUT_WORK_STREAM)
        assert group["pending"] == 0
    assert sorted(p.device_id for p in await _pushes(redis)) == sorted(devices)


async def test_the_hourly_limit_holds_across_a_shared_fan_out(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    secret = await create_agency(client)
    devices = sorted(await _devices(pool, 40, POINT, prefix="limit-"))
    tired = set(devices[::4])          # had their push this hour, in every page and item
    for device in tired:
        await redis.set(keys.device_rate(device, keys.device_shard(device, SHARDS)), 1)
    matcher = Matcher(pool, redis, device_pushes_per_hour=1, limits=SMALL)
    _, fire = await post_incident(client, secret, incident())
    async with _work(redis) as work:
        await matcher.match_incident(fire["incident_id"], dt.datetime.now(dt.UTC))
        await _work_off(matcher, work)
        pushed = {p.device_id for p in await _pushes(redis)}
        assert pushed == set(devices) - tired
        # Counted once each: 1 for the pushed, the limit plus one refusal for the tired.
        for device in devices:
            count = await redis.get(keys.device_rate(device, keys.device_shard(device, SHARDS)))
            assert int(count) == (2 if device in tired else 1)

        # Off: a second fire 1 km away reaches everyone, the counters untouched.
        unlimited = Matcher(pool, redis, device_pushes_per_hour=0, limits=SMALL)
        _, other = await post_incident(client, secret, incident("F2", lat=POINT[0] + 0.001))
        await unlimited.match_incident(other["incident_id"], dt.datetime.now(dt.UTC))
        await _work_off(unlimited, work)
    second = [p.device_id for p in await _pushes(redis) if p.incident_id == other["incident_id"]]
    assert sorted(second) == devices
    counts = [await redis.get(keys.device_rate(d, keys.device_shard(d, SHARDS)))
              for d in devices]
    assert sorted(int(c) for c in counts) == sorted(2 if d in tired else 1 for d in devices)


async def test_a_new_incident_is_matched_before_a_large_fan_outs_remainder(
    client: Client, pool: asyncpg.Pool, redis: aioredis.Redis
) -> None:
    """One shard, so the push stream's order is the order of enqueueing. A large
    fan-out, then a small incident elsewhere: the small one's pushes come right after
    the large one's first pages, and the rest of the large one waits on the work
    stream while the push stream holds the backlog limit; as a sender drains it, the
    rest follows."""
    secret = await create_agency(client)
    big = await _devices(pool, 60, POINT, prefix="big-", platform="apns")
    small = await _devices(pool, 5, FAR_POINT, prefix="small-", platform="apns")
    limits = FanoutLimits(first_page=5, page=10, split_after=10, backlog=15)
    matcher = Matcher(pool, redis, device_pushes_per_hour=0, shards=1, limits=limits)
    stream = keys.push_stream("apns", 0)
    _, large = await post_incident(client, secret, incident("BIG"))
    _, little = await post_incident(client, secret, incident("SMALL", lat=FAR_POINT[0],
                                                             lon=FAR_POINT[1]))
    incidents = StreamConsumer(redis, keys.INCIDENTS_STREAM, keys.MATCHER_GROUP, "m",
                               block_ms=20)
    work = StreamConsumer(redis, keys.FANOUT_WORK_STREAM, keys.MATCHER_GROUP, "m", batch=1)
    sender = StreamConsumer(redis, stream, keys.SENDER_GROUP, "s", batch=1000, block_ms=10)
    await sender.setup()
    stop = asyncio.Event()
    running = asyncio.create_task(matcher.run(incidents, work, stop))
    order: list[Push] = []
    try:
        async def backlog_full() -> bool:
            return await redis.xlen(stream) >= limits.backlog

        await wait_for(backlog_full, what="the push stream at its backlog limit")
        # Held there: the large fan-out's items wait, none is taken while it is full.
        [group] = await redis.xinfo_groups(keys.FANOUT_WORK_STREAM)
        assert group["lag"] > 0 and group["pending"] == 0
        while len(order) < len(big) + len(small):
            entries = await sender.read()
            order += [Push.from_fields(fields) for _, fields in entries]
            await sender.ack([eid for eid, _ in entries])   # sent: room for more
            assert running.done() is False
    finally:
        stop.set()
        await asyncio.wait_for(running, 5)
    incidents_in_order = [p.incident_id for p in order]
    assert incidents_in_order == ([large["incident_id"]] * limits.split_after
                                  + [little["incident_id"]] * len(small)
                                  + [large["incident_id"]] * (len(big) - limits.split_after))
    assert sorted(p.device_id for p in order) == sorted(big | small)
